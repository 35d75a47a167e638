"""The `provision` console script: Ctrl-C exits 130 with a one-line hint, whenever
it comes, and nothing after the command's work can turn it into a death by signal.

Why a module of its own, importing only the standard library: the SIGINT handler
is installed when this module is imported, before Click, Rich, boto3 or Fabric
start loading (most of a second), and it stays in charge until the process is
gone. The rules it keeps:

- Until `run` is inside its ``try``, a SIGINT is only recorded (the console
  script's own lines run between this import and `run`); `run` then stops at
  once. From there the first SIGINT raises KeyboardInterrupt, so the command
  stops where it is (a wait, an SSH call, an import); Click turns it into
  `Abort`, which `run` maps to 130. Every later SIGINT is only recorded: nothing
  can interrupt the hint, the flush or the exit.
- Whenever a SIGINT arrived, even after the command's work was done (during its
  final prints), the status is 130 and the hint is printed once.
- The process ends with `os._exit` once output is flushed and `atexit` handlers
  have run: the interpreter's own finalization (joining threads, tearing down
  modules) is where a late SIGINT used to escape and kill the process with
  -SIGINT instead of exiting 130. A command's work therefore ends when the
  command returns; a thread still running then is cut, not waited for. The
  status is decided last, with SIGINT blocked, so a SIGINT during the `atexit`
  handlers still means 130.

A SIGINT that comes before this module is imported (Python's own start-up, a
few tens of milliseconds) ends the process as Python ends any; a process started
with SIGINT ignored keeps it ignored, as a shell's background job expects.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

INTERRUPTED = 130  # the shell's status for a command ended by SIGINT
HINT = (
    "interrupted: run the same command again to finish, "
    "or `provision down NAME --yes` to remove everything"
)


class _Sigint:
    """What the handler saw: whether a SIGINT came, and whether the next one raises."""

    received = False
    armed = False  # `run` arms it inside its try


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt once, the first time; afterwards only remember."""
    _Sigint.received = True
    if _Sigint.armed:
        _Sigint.armed = False  # before raising: no second KeyboardInterrupt, ever
        raise KeyboardInterrupt


def _arm() -> None:
    """Let the next SIGINT raise; raise now if one came before (once, either way)."""
    _Sigint.armed = True
    if _Sigint.received and _Sigint.armed:
        _Sigint.armed = False
        raise KeyboardInterrupt


def _install() -> None:
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)


_install()  # at import: the console script imports this module before anything heavy


def _status(code: object) -> int:
    """The exit status `sys.exit(code)` means (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _invoke(args: list[str]) -> int:
    """Run the command; its exit status. KeyboardInterrupt may escape (imports)."""
    import click  # the heavy imports start here, with the handler in place

    from provision.cli.app import main

    try:
        rv = main.main(args=args, standalone_mode=False)
    except click.exceptions.Abort:
        if _Sigint.received:  # Click's form of the KeyboardInterrupt raised above
            return INTERRUPTED
        click.echo("Aborted!", err=True)  # a declined confirmation
        return 1
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except SystemExit as e:  # `common.Main`: one-line errors with their status
        return _status(e.code)
    except BrokenPipeError:  # `provision list | head`: the reader left
        return 1
    return rv if isinstance(rv, int) else 0  # --help and --version return Exit's code


def _invoke_reporting(args: list[str]) -> int:
    """`_invoke`, with an unexpected exception (not a command's: those are one line
    already) printed as a traceback, status 1."""
    try:
        return _invoke(args)
    except Exception:  # noqa: BLE001 - printed in full: it is a bug
        import traceback

        traceback.print_exc()
        return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()


def _write_stderr(text: str) -> None:
    data = text.encode()
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def run(args: list[str] | None = None) -> NoReturn:
    """The console script: run the command, then exit with its status (130 after a
    SIGINT at any moment), with no interpreter finalization to interrupt."""
    code = 1
    try:
        _arm()
        code = _invoke_reporting(sys.argv[1:] if args is None else args)
        _Sigint.armed = False  # inside the try: an interrupt up to here is caught below
    except KeyboardInterrupt:  # raised once at most: the handler disarmed itself
        pass
    _flush()
    atexit._run_exitfuncs()  # what finalization would run: logging's flush, finalizers
    _flush()
    # The status is decided here: a SIGINT from now on waits in the kernel, and one
    # that came before was recorded by the handler (run at the return of this call).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    if _Sigint.received or signal.SIGINT in signal.sigpending():
        code = INTERRUPTED
        _write_stderr(HINT + "\n")
    os._exit(code)
