"""Progress reporting that the orchestrator calls and the CLI renders.

The orchestrator only says what is happening (`stage`, `note`, `wait`); the
CLI passes a `RichReporter`, a notebook or a test passes nothing and gets the
quiet `Reporter`, which logs instead. Every wait in provision has a timeout; the
reporter only shows it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
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
        try:
            yield lambda completed: self.progress.update(task, completed=completed)
        finally:
            self.progress.update(task, completed=total or 1)
