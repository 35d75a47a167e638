"""Run one function per node at once and keep every node's outcome.

Modelled on Fabric's own contract (``fabric/group.py``): running something on
many hosts never raises half-way. `fan_out` returns a `GroupResult` mapping each
node to its value *or* its exception, so the orchestrator keeps the nodes that
worked and rolls back or retries only the others; `GroupError` carries the
whole map when a caller wants one exception.

Every call runs in its own daemon thread and the caller waits on futures, not
in a poll loop: Ctrl-C reaches the caller at once, and an interrupted command
exits without waiting for SSH sessions that may take minutes to end (a thread
pool would join them at exit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, wait
from contextlib import nullcontext
from typing import Any, TypeVar

from provision.errors import ProvisionError
from provision.nodes.remote import Endpoint

T = TypeVar("T")
R = TypeVar("R")

MAX_PARALLEL_HOSTS = 32  # `on_hosts`: SSH sessions opened at once


class GroupResult(dict[str, Any]):
    """Node name -> return value, or the exception that stopped it (as Fabric's)."""

    @property
    def succeeded(self) -> dict[str, Any]:
        return {k: v for k, v in self.items() if not isinstance(v, BaseException)}

    @property
    def failed(self) -> dict[str, BaseException]:
        return {k: v for k, v in self.items() if isinstance(v, BaseException)}

    def raise_for_failures(self) -> GroupResult:
        """Raise `GroupError` carrying the whole map if any node failed; else return self."""
        if self.failed:
            raise GroupError(self)
        return self


class GroupError(ProvisionError):
    """Some nodes failed; `.result` still holds what the others returned."""

    def __init__(self, result: GroupResult) -> None:
        self.result = result
        failed = result.failed
        lines = "; ".join(f"{k}: {v}" for k, v in failed.items())
        super().__init__(f"{len(failed)} of {len(result)} nodes failed: {lines}")


def in_background(fn: Callable[[], R], name: str) -> Future[R]:
    """Start `fn()` in a daemon thread; its future holds the value or the exception."""
    future: Future[R] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(e)

    threading.Thread(target=run, daemon=True, name=name).start()
    return future


def fan_out(
    fn: Callable[[T], R],
    items: Sequence[T],
    key: Callable[[T], str],
    *,
    limit: int | None = None,
) -> GroupResult:
    """Call ``fn(item)`` for every item at once and wait for all; never raises for one.

    Exceptions become values, keyed like results by ``key(item)``, which must be
    unique. `limit` caps how many calls run at a time (None: all at once, as
    node pipelines that wait on one another need). An exception that is not an
    `Exception` (KeyboardInterrupt, SystemExit) still propagates.
    """
    keys = [key(item) for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"names must be unique: {keys}")
    slots = threading.BoundedSemaphore(limit) if limit else None

    def call(item: T) -> Callable[[], R]:
        def run() -> R:
            with slots or nullcontext():
                return fn(item)

        return run

    futures = [in_background(call(item), name=k) for item, k in zip(items, keys, strict=True)]
    wait(futures)  # interruptible: Ctrl-C lands here while the daemon threads work
    result = GroupResult()
    for k, future in zip(keys, futures, strict=True):
        error = future.exception()
        if error is not None and not isinstance(error, Exception):
            raise error
        result[k] = error if error is not None else future.result()
    return result


def on_hosts(fn: Callable[[Endpoint], T], endpoints: Iterable[Endpoint]) -> GroupResult:
    """Call ``fn(ep)`` for every endpoint, at most `MAX_PARALLEL_HOSTS` at a time,
    keyed by ``ep.name``; never raises for one node (see `fan_out`)."""
    return fan_out(fn, list(endpoints), key=lambda ep: ep.name, limit=MAX_PARALLEL_HOSTS)
