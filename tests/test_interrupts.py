"""Ctrl-C at any moment of any command exits 130 with the one-line hint: during
the start-up imports and in the final prints, after the work is done. Each runs
the installed console script as a plain subprocess, held at its moment (see
`interrupts`); the same during each step of `up` is in test_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from interrupts import HINT, interrupt_in_startup_imports, interrupt_when_blocked

from provision.progress import PlainReporter


def test_ctrl_c_during_the_start_up_imports_exits_130_with_the_hint():
    code, out, err = interrupt_in_startup_imports(["--version"])
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith(HINT), err
    assert "Traceback" not in err
    assert "version" not in out  # the command never ran: the imports were cut short


def test_ctrl_c_in_the_final_prints_after_the_work_is_done_exits_130_with_the_hint(tmp_path):
    target = tmp_path / "cluster.yaml"
    code, out, err = interrupt_when_blocked(["init", "--path", str(target)])
    assert target.exists()  # the work was done before the signal came
    assert code == 130, out + err
    assert err.strip().splitlines()[-1].startswith(HINT), err
    assert "Traceback" not in err


def test_ctrl_c_while_the_process_exits_after_printing_everything_exits_130(tmp_path):
    target = tmp_path / "cluster.yaml"
    code, out, err = interrupt_when_blocked(["init", "--path", str(target)], hold="exit",
                                            scratch=tmp_path)
    assert out.startswith("wrote ") and "provision up" in out  # all of it was printed
    assert code == 130, out + err
    assert err.strip().splitlines()[-1].startswith(HINT), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


class _File:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


class _Console:
    """What PlainReporter uses of a Rich console: its file."""

    def __init__(self) -> None:
        self.file = _File()


@pytest.fixture
def plain() -> tuple[PlainReporter, _File]:
    console = _Console()
    return PlainReporter(console), console.file  # type: ignore[arg-type]


def test_plain_progress_prints_one_line_per_stage_change_without_markup(plain):
    reporter, file = plain
    reporter.stage("master", "waiting for SSH on 10.0.0.4", step=2, total=5)
    reporter.stage("master", "waiting for SSH on 10.0.0.4", step=2, total=5)  # no change
    reporter.stage("node001", "[red]failed[/]: [Errno 111] refused [/tmp/x]", step=5, total=5)
    reporter.stage("master", "[bold]installing packages[/]", step=3, total=5)
    reporter.warn("bid below the current price")
    assert file.text.splitlines() == [
        "master: waiting for SSH on 10.0.0.4 (step 2/5)",
        "node001: [red]failed[/]: [Errno 111] refused [/tmp/x] (step 5/5)",  # not markup: as is
        "master: installing packages (step 3/5)",
        "warning: bid below the current price",
    ]


def test_plain_progress_reports_a_wait_at_each_tenth_and_its_end(plain):
    reporter, file = plain
    with reporter.wait("SVC: 100 fits on 2 engines", total=100) as advance:
        for done in range(1, 101):
            advance(done)
    lines = file.text.splitlines()
    assert lines[0] == "SVC: 100 fits on 2 engines: started"
    assert lines[1:10] == [f"SVC: 100 fits on 2 engines: {10 * k}/100" for k in range(1, 10)]
    assert lines[10].startswith("SVC: 100 fits on 2 engines: done in ") and len(lines) == 11


def test_a_live_display_only_on_a_terminal():
    from rich.console import Console

    from provision.progress import RichReporter, for_console

    assert isinstance(for_console(Console(file=_File(), force_terminal=False)), PlainReporter)
    assert isinstance(for_console(Console(file=_File(), force_terminal=True)), RichReporter)


def test_importing_provision_loads_nothing_heavy():
    """The console script's entry imports `provision` and `provision.cli` before its
    SIGINT handler is in place: they must stay light (names load on first use)."""
    import subprocess
    import sys

    code = ("import sys, provision, provision.cli, provision.cli.entry; "
            "heavy = {'click', 'rich', 'boto3', 'botocore', 'fabric', 'sklearn', 'pydantic', "
            "'provision.lifecycle', 'payload'}; print(sorted(heavy & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parent)
    assert loaded.stdout.strip() == "[]"
    names = subprocess.run([sys.executable, "-c", "import provision; print(provision.up.__module__,"
                            " provision.joblib_backend.__module__, 'up' in dir(provision))"],
                           capture_output=True, text=True, check=True)
    assert names.stdout.split() == ["provision.lifecycle", "payload.joblib_backend", "True"]
