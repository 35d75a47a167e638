"""Replies lost with a dropped tunnel, fetched from the hub's result store.

The controller routes a task's reply to the zmq connection the request came
in on. ipyparallel's client sockets carry no fixed identity, so after the
tunnel reconnects every connection is new, and the reply to any task sent
before the drop goes to a connection that is gone: zmq drops it. The hub keeps
every task's result (its `DictDB`, the store behind ``Client.result_status`` and
``AsyncHubResult``), so the client asks it, polling until each such task is
done, and hands each result to the client's own reply handler on its IO
thread, exactly as if the reply had come in: the task's `AsyncResult` and its
done-callbacks (the search's journal) see nothing different.

Why the hub and not the journal: the journal holds only what reached the
client; a pair that finished during the cut would be computed again. A request
the hub never received (it was in the dead connection) is reported as a failed
task once the hub still does not know it `LOST_AFTER_S` after the reconnect,
so the caller's retries (``view.retries``, the search's) send it again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ipyparallel
from ipyparallel import error, util

log = logging.getLogger("provision.client")

POLL_S = 1.0  # between questions to the hub while recovered tasks still run
T = TypeVar("T")
QUERY_TIMEOUT_S = 20.0  # for one answer from the hub (the link may drop again)
LOST_AFTER_S = 10.0  # unknown to the hub this long after the reconnect: never arrived


class HubRecovery:
    """Recover the replies of the tasks outstanding when the tunnel came back."""

    def __init__(self, client: ipyparallel.Client) -> None:
        self.client = client
        self.recovered = 0  # results fetched from the hub, over the client's life
        self._waiting: set[str] = set()
        self._since = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def recover(self) -> None:
        """Start fetching the replies of every task outstanding now."""
        ids = in_io(self.client, lambda: set(self.client.outstanding))
        with self._lock:
            self._waiting |= ids
            self._since = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hub-results",
                                                 daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ids = sorted(self._waiting)
                if not ids:
                    self._thread = None  # the next recover() starts another
                    return
            # concurrent.futures.TimeoutError is TimeoutError: the link dropped again,
            # and the next round (or reconnect) asks again.
            with contextlib.suppress(TimeoutError, OSError):
                found = self._sweep(ids)
                if found:
                    log.warning("fetched %d result(s) from the hub (their replies were lost "
                                "with the dropped connection); %d task(s) still to fetch",
                                found, len(self._waiting))
            self._stop.wait(POLL_S)

    def _sweep(self, ids: list[str]) -> int:
        """One round: hand over what the hub has finished; the number handed over."""
        _, completed, unknown = self._status(ids)
        lost = time.monotonic() - self._since > LOST_AFTER_S
        done = 0
        for msg_id in completed:
            msg = self._fetch(msg_id)
            if msg is not None:
                self._deliver(msg_id, msg)
                done += 1
        for msg_id in unknown if lost else []:
            self._deliver(msg_id, _lost_reply(self.client, msg_id))
        settled = set(completed) | (set(unknown) if lost else set())
        still = in_io(self.client, lambda: set(self.client.outstanding))
        with self._lock:
            self._waiting = (self._waiting - settled) & still  # others were answered
        self.recovered += done
        return done

    def _status(self, ids: list[str]) -> tuple[list[str], list[str], list[str]]:
        """(pending, completed, unknown to the hub). The hub answers an error for
        the whole question if one id is unknown: then each is asked alone."""
        reply = self._ask({"msg_ids": ids, "status_only": True})
        if reply["content"]["status"] == "ok":
            return reply["content"]["pending"], reply["content"]["completed"], []
        if len(ids) == 1:
            return [], [], ids
        pending: list[str] = []
        completed: list[str] = []
        unknown: list[str] = []
        for msg_id in ids:
            p, c, u = self._status([msg_id])
            pending += p
            completed += c
            unknown += u
        return pending, completed, unknown

    def _fetch(self, msg_id: str) -> dict[str, Any] | None:
        """The reply message of a completed task, rebuilt from the hub's record."""
        reply = self._ask({"msg_ids": [msg_id], "status_only": False})
        content = reply["content"]
        if content["status"] != "ok" or msg_id not in content:
            return None
        rec = content[msg_id]
        result = rec["result_content"]
        if isinstance(result, str | bytes):
            result = self.client.session.unpack(result)
        return {
            "header": util.extract_dates(rec["result_header"]),
            "parent_header": util.extract_dates(rec["header"]),
            "metadata": rec["result_metadata"],
            "content": result,
            "buffers": reply["buffers"],
        }

    def _ask(self, content: dict[str, Any]) -> dict[str, Any]:
        rc = self.client
        future = rc._send(rc._query_stream, "result_request", content=content)
        return future.result(timeout=QUERY_TIMEOUT_S)

    def _deliver(self, msg_id: str, msg: dict[str, Any]) -> None:
        """Hand a reply to the client on its IO thread, unless one came in meanwhile."""
        rc = self.client

        def deliver() -> None:
            if msg_id in rc.outstanding:
                rc._handle_apply_reply(msg)
                out = rc._output_futures.get(msg_id)
                if out is not None and not out.done():
                    out.set_result(None)  # its iopub "idle" went with the old connection

        rc._io_loop.add_callback(deliver)

    def _in_io(self, fn: Callable[[], set[str]]) -> set[str]:
        """`fn()` run on the client's IO thread, which owns its bookkeeping."""
        future: concurrent.futures.Future[set[str]] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                future.set_exception(err)

        self.client._io_loop.add_callback(call)
        return future.result(timeout=QUERY_TIMEOUT_S)


def _lost_reply(client: ipyparallel.Client, msg_id: str) -> dict[str, Any]:
    """A failed-task reply for a request the hub never received (as ipyparallel's
    own `_handle_stranded_msgs` builds one for a dead engine)."""
    try:
        raise error.EngineError(f"task {msg_id!r} was lost with the SSH tunnel")
    except error.EngineError:
        content = error.wrap_exception()
    msg = client.session.msg("apply_reply", content=content)
    msg["parent_header"]["msg_id"] = msg_id
    return msg


def in_io(client: Any, fn: Callable[[], T], timeout: float = QUERY_TIMEOUT_S) -> T:
    """`fn()` run on the client's IO thread, which owns its bookkeeping (ids, engines,
    outstanding messages): its result, or its exception raised here."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            future.set_result(fn())
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            future.set_exception(err)

    client._io_loop.add_callback(call)
    return future.result(timeout=timeout)
