"""Waiting for events in tests: a condition, or a line a process prints; always with
a deadline and a message that says what did not happen.

A test never sleeps to "let something happen": it waits for the thing itself (a
progress line, a file, a state the cloud reports, a count of completed tasks).
The only sleep here is the poll interval of `wait_for`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")
POLL_S = 0.05  # between two looks at a condition: short next to any deadline here


def wait_for(
    condition: Callable[[], T], timeout: float, what: str, *, interval: float = POLL_S
) -> T:
    """The first truthy value of `condition()` within `timeout` seconds, else an
    AssertionError naming `what` (and the last value seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                 f"(last: {value!r})")
        time.sleep(interval)


class Lines:
    """Every line a process writes to `stream`, read by a thread as it comes, so a
    test can wait for one (`wait_for`) while the process goes on."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, fragment: str, timeout: float) -> str:
        """The first line holding `fragment`; AssertionError with the output so far if
        none comes within `timeout` or the stream ends first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if fragment in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "the output ended" if self._closed else f"{timeout:g} s passed"
                    raise AssertionError(f"no line with {fragment!r}: {why}:\n{self.text()}")
                self._changed.wait(left)

    def text(self, timeout: float = 0) -> str:
        """The output so far (after waiting up to `timeout` for the stream to end)."""
        self._thread.join(timeout)
        return "\n".join(self.lines)
