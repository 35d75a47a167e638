"""Ctrl-C at a chosen moment of a `provision` command, without a race.

The command runs as a user runs it: a plain subprocess of the installed console
script. To hit a moment deterministically the tests hold the process there
instead of guessing when it gets there:

- **in its final prints**: stdout is a pipe of one page that the test filled
  beforehand, so the command's first write to stdout (its result, printed once
  its work is done) blocks; the test sees the write in ``/proc/PID/syscall``,
  freezes the process (SIGSTOP, checked with ``waitpid(WUNTRACED)``), sends
  SIGINT, resumes it (SIGCONT) and only then drains the pipe;
- **in its exit**, after everything is printed: the same with an exit handler
  (``atexit``, as libraries register them) writing to a full pipe;
- **in its start-up imports**: with ``PYTHONPROFILEIMPORTTIME`` Python writes a
  line to stderr per import, and stderr is a one-page pipe the test stops reading
  once the console script's entry module is imported: the imports after it (hundreds
  of lines) cannot finish until the test reads again, after its SIGINT.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from waits import Lines, wait_for

EXE = Path(sys.executable).parent / "provision"  # the console script a wheel install gives
HINT = "interrupted: run the same command again to finish"
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ has the name; Linux only)
PAGE = 4096


def one_page_pipe() -> tuple[int, int]:
    """A pipe that holds one page: (read end, write end)."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, PAGE)
    return r, w


def drain(fd: int, proc: subprocess.Popen, timeout: float = 60) -> bytes:
    """Everything in a pipe until the process has exited and the pipe is empty (a
    grandchild, such as an SSH tunnel, may hold the write end open longer)."""
    os.set_blocking(fd, False)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            if proc.poll() is not None:
                break
            select.select([fd], [], [], 0.1)
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def blocked_writing(pid: int, fd: int) -> bool:
    """Whether the process's main thread sits in write(fd, ...) (``/proc/PID/syscall``
    holds the syscall number and arguments of a blocked thread; write is 1 on x86-64)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return fields[:2] == ["1", hex(fd)]


def interrupt_frozen(proc: subprocess.Popen[bytes]) -> None:
    """SIGSTOP, check it stopped (not exited), SIGINT, SIGCONT: the SIGINT is handled
    exactly where the process was frozen."""
    os.kill(proc.pid, signal.SIGSTOP)
    pid, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert pid == proc.pid and os.WIFSTOPPED(status), f"not stopped: status {status:#x}"
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)


# Installed in the command's Python by the test, as a library's exit handler would
# be: it writes to a pipe the test keeps full, so the process waits in its exit.
SLOW_EXIT = """\
import atexit, os

atexit.register(os.write, int(os.environ["PROVISION_TEST_HOLD_FD"]), b"x")
"""


def interrupt_when_blocked(
    args: list[str],
    *,
    hold: str = "stdout",
    env: dict[str, str] | None = None,
    scratch: Path | None = None,
    timeout: float = 300,
) -> tuple[int, str, str]:
    """Run ``provision ARGS`` and SIGINT it while it is held: (status, stdout, stderr).

    `hold` "stdout": stdout is full, so the command blocks on its first print, the
    result it prints once its work is done. "exit": an `atexit` handler (a
    ``sitecustomize`` in `scratch`) blocks on a full pipe of its own, after the
    command returned and printed everything.
    """
    r, w = one_page_pipe()
    os.write(w, b"\0" * PAGE)  # full: the next write to it blocks
    env = dict(os.environ if env is None else env)
    if hold == "stdout":
        stdout, fd = w, 1
    else:
        assert scratch is not None, "hold='exit' needs a scratch directory"
        (scratch / "sitecustomize.py").write_text(SLOW_EXIT)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch), env.get("PYTHONPATH")]))
        env["PROVISION_TEST_HOLD_FD"] = str(w)
        stdout, fd = subprocess.PIPE, w
    proc = subprocess.Popen([str(EXE), *args], stdout=stdout, stderr=subprocess.PIPE, env=env,
                            pass_fds=(w,), text=True)
    os.close(w)
    err = Lines(proc.stderr)  # type: ignore[arg-type]
    out = Lines(proc.stdout) if proc.stdout else None
    try:
        wait_for(lambda: blocked_writing(proc.pid, fd) or proc.poll() is not None, timeout,
                 f"the command to block writing to fd {fd} ({hold})")
        assert proc.poll() is None, f"exited with {proc.returncode} first:\n{err.text(5)}"
        interrupt_frozen(proc)
        held = drain(r, proc)[PAGE:]
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    printed = held.decode(errors="replace") if out is None else out.text(timeout=10)
    return proc.returncode, printed, err.text(timeout=10)


def interrupt_in_startup_imports(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    """Run ``provision ARGS``, SIGINT it while it imports what the command needs:
    (exit status, stdout, stderr without the import-time lines)."""
    r, w = one_page_pipe()
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    proc = subprocess.Popen([str(EXE), *args], stdout=subprocess.PIPE, stderr=w, env=env)
    os.close(w)
    seen = b""
    try:
        with os.fdopen(os.dup(r), "rb", buffering=0) as reader:
            while b"| provision.cli.entry\n" not in seen:
                chunk = reader.read(256)  # small reads: stop soon after the entry's line
                assert chunk, f"stderr ended before the entry was imported:\n{seen.decode()}"
                seen += chunk
        os.kill(proc.pid, signal.SIGINT)
        err = seen + drain(r, proc, timeout)
        out = proc.stdout.read() if proc.stdout else b""
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode(errors="replace").splitlines()
    rest = [line for line in text if not line.startswith("import time:")]
    return proc.returncode, out.decode(errors="replace"), "\n".join(rest)
