"""Progress reporting that the orchestrator calls and the CLI renders.

The orchestrator only says what is happening (`stage`, `note`, `wait`); the
CLI passes the reporter `for_console` picks: a `RichReporter` (a live display)
on a terminal, a `PlainReporter` (one line per change) when stderr is a pipe or
a CI log, where a live display would print nothing until the end. A notebook or
a test passes nothing and gets the quiet `Reporter`, which logs instead. Every
wait in provision has a timeout; the reporter only shows it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.errors import MarkupError
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

log = logging.getLogger("provision")


class Reporter:
    """Quiet reporter: logs stages, shows nothing."""

    def stage(
        self, node: str, text: str, *, step: int | None = None, total: int | None = None
    ) -> None:
        log.info("%s: %s", node, text)

    def note(self, text: str) -> None:
        log.info("%s", text)

    def warn(self, text: str) -> None:
        log.warning("%s", text)

    @contextmanager
    def wait(
        self, description: str, total: float | None = None, unit: str = ""
    ) -> Iterator[Callable[[float], None]]:
        log.info("%s", description)
        yield lambda completed: None


class _CountColumn(ProgressColumn):
    """done/total, in MB when the task counts bytes."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "bytes":
            return Text(f"{task.completed / 1e6:.1f}/{(task.total or 0) / 1e6:.1f} MB")
        return Text(f"{task.completed:.0f}/{task.total or 0:.0f}")


class RichReporter(Reporter):
    """A live progress display: one line per node and one per wait."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[node]:<12}"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            _CountColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(
        self, node: str, text: str, *, step: int | None = None, total: int | None = None
    ) -> None:
        with self._lock:
            if node not in self._tasks:
                self._tasks[node] = self.progress.add_task(text, node=node, total=total or 1)
            task = self._tasks[node]
        fields: dict[str, object] = {"description": text}
        if step is not None:
            fields["completed"] = step
        if total is not None:
            fields["total"] = total
        self.progress.update(task, **fields)

    def note(self, text: str) -> None:
        self.progress.console.print(text)

    def warn(self, text: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {text}")

    @contextmanager
    def wait(
        self, description: str, total: float | None = None, unit: str = ""
    ) -> Iterator[Callable[[float], None]]:
        task = self.progress.add_task(description, node="", total=total or 1, unit=unit)
        yield lambda completed: self.progress.update(task, completed=completed)
        self.progress.update(task, completed=total or 1)  # a wait that raised stays unfilled


# A plain wait reports its progress at every tenth of its total.
PLAIN_STEPS = 10


def _plain(text: str) -> str:
    """`text` without Rich markup (as is when it is not valid markup: an error
    message may hold brackets of its own)."""
    try:
        return Text.from_markup(text).plain
    except MarkupError:
        return text


class PlainReporter(Reporter):
    """One line per change, flushed at once: for pipes and CI logs, where a live
    display shows nothing until it stops, and for whoever waits for a stage (the
    Ctrl-C tests wait for "installing packages" before they interrupt).

    Lines: ``NODE: TEXT (step S/T)`` when a node's stage changes, notes as they
    are, ``warning: TEXT``, and a wait's description when it starts, at every
    tenth of its total and when it ends.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, text: str) -> None:
        # Straight to the file: no wrapping, no markup, one write per line.
        with self._lock:
            self.console.file.write(text + "\n")
            self.console.file.flush()

    def stage(
        self, node: str, text: str, *, step: int | None = None, total: int | None = None
    ) -> None:
        with self._lock:
            if self._last.get(node) == text:
                return
            self._last[node] = text
        where = f" (step {step}/{total})" if step is not None and total else ""
        self._line(f"{node}: {_plain(text)}{where}")

    def note(self, text: str) -> None:
        self._line(_plain(text))

    def warn(self, text: str) -> None:
        self._line(f"warning: {_plain(text)}")

    @contextmanager
    def wait(
        self, description: str, total: float | None = None, unit: str = ""
    ) -> Iterator[Callable[[float], None]]:
        what = _plain(description)
        started = time.monotonic()
        self._line(f"{what}: started")
        reported = [0]

        def advance(completed: float) -> None:
            if not total:
                return
            tenth = int(PLAIN_STEPS * completed / total)
            if tenth > reported[0] and completed < total:
                reported[0] = tenth
                self._line(f"{what}: {completed:g}/{total:g}")

        try:
            yield advance
        except BaseException:
            self._line(f"{what}: stopped after {time.monotonic() - started:.1f} s")
            raise
        self._line(f"{what}: done in {time.monotonic() - started:.1f} s")


def for_console(console: Console) -> RichReporter | PlainReporter:
    """The reporter a command uses: a live display on a terminal, else plain lines."""
    return RichReporter(console) if console.is_terminal else PlainReporter(console)
