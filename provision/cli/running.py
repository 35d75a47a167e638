"""A payload run from the command line: its progress, and its end when the master
is gone or silent.

Why the payload runs in a thread of its own: it blocks in its own wait (up to
``--timeout``) and cannot import provision, so it cannot be told that EC2 says
the master is gone for good. The command's thread waits for whichever comes
first: the payload's outcome, or the tunnel giving up on the master
(`provision.tunnel`), which ends the command at once with one line saying what
to do. A Ctrl-C still reaches the command's thread; the payload's thread, a
daemon, is cut when the process exits, as any thread still running then is
(`provision.cli.entry`): its journal holds every result that came in.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from payload.registry import PayloadKind
from provision.errors import ProvisionError
from provision.progress import Reporter

T = TypeVar("T")


class MasterGone(ProvisionError):
    """The master the run talks to is gone for good (EC2 says so): `up` replaces it."""


def run_payload(kind: PayloadKind, rc: Any, options: dict[str, Any], reporter: Reporter,
                model: str) -> Any:
    """Run the kind with progress; end early when the master is gone, and say how long
    the master had been silent when the run times out."""
    try:
        return until_gone(rc, lambda: _call(kind, rc, options, reporter, model))
    except TimeoutError as e:
        silent = rc.silent_for() if hasattr(rc, "silent_for") else None
        if silent is None:
            raise
        raise ProvisionError(f"{e} (the master has not answered for {silent:.0f} s)") from e


def until_gone(rc: Any, work: Callable[[], T]) -> T:
    """`work()`, run in a daemon thread; `MasterGone` as soon as the client's tunnel
    gives up on its master. A client without a tunnel runs `work` here."""
    if not hasattr(rc, "when_gone"):
        return work()
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

    def settle(value: Any = None, error: BaseException | None = None) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # the other came first
            if error is None:
                outcome.set_result(value)
            else:
                outcome.set_exception(error)

    def run() -> None:
        try:
            value = work()
        except BaseException as e:  # noqa: BLE001 - raised again in the command's thread
            settle(error=e)
        else:
            settle(value)

    rc.when_gone(lambda reason: settle(error=MasterGone(reason)))
    threading.Thread(target=run, name="payload", daemon=True).start()
    return outcome.result()


def _call(kind: PayloadKind, rc: Any, options: dict[str, Any], reporter: Reporter,
          model: str) -> Any:
    """Run the kind, with a progress bar when it reports progress, else a spinner.
    The bar ends as the run does: done, or stopped by its exception."""
    engines = len(rc.ids)
    if "progress" not in kind.options:
        with reporter.wait(f"{kind.name} ({model}) on {engines} engines"):
            return kind(rc, **options)
    with contextlib.ExitStack() as bars:
        shown: list[Callable[[float], None]] = []

        def progress(done: int, total: int) -> None:
            if not shown:
                shown.append(bars.enter_context(
                    reporter.wait(f"{model}: {total} fits on {engines} engines", total=total)))
            shown[0](done)

        return kind(rc, **options, progress=progress)
