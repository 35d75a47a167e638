"""One command at a time per cluster, across processes on this machine.

Two `up` of the same cluster from two terminals would both see the same
shortfall in the tags and both launch it: duplicates that bill. So every
command that changes a cluster's instances (`up`, `down`, `addnode`,
`removenode`, `watch`'s replacements, `restart-engines`) holds an exclusive
`flock` on a lock file under the local state directory while it works; a
second one refuses at once with a line naming the holder (command, pid, start
time), rather than queueing behind a command that may run for minutes.

What it covers: processes of one user on one machine (terminals, notebooks,
scripts), and a holder that crashes or is killed (the kernel drops the lock
with the process, so a dead holder never blocks). What it cannot cover: two
laptops (or two state directories) driving the same cluster; EC2 has no lock
to take, and the tags stay the record both would reconcile against.

The lock file lives in ``<state>/locks/``, not in the cluster's directory,
because `down` deletes that directory while it still holds the lock. It is
unlinked on release, so a finished command leaves no file behind; an acquirer
that locked a file already unlinked by its holder notices (inode check) and
takes the new one.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from provision import state
from provision.errors import ProvisionError

F = TypeVar("F", bound=Callable[..., Any])
HOLDER_WRITE_S = 2.0  # how long a holder may take between its lock and naming itself

# This process's locks, name -> [fd, depth]: re-entrant, so `watch`'s keep_size
# may call addnode under the lock it already holds.
_held: dict[str, list[int]] = {}
_guard = threading.Lock()


class ClusterBusy(ProvisionError):
    """Another process holds the cluster's lock (exit 1: nothing was done)."""


def lock_path(name: str) -> Path:
    return state.root() / "locks" / f"{name}.lock"


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says. The holder writes it right after
    locking: a contender that comes in between waits that moment out."""
    deadline = time.monotonic() + HOLDER_WRITE_S
    while True:
        try:
            pid, command, since = path.read_text().split("\t", 2)
            return f"`provision {command}` (pid {pid}, since {since.strip()})"
        except (OSError, ValueError):  # not written yet, or just released
            if time.monotonic() > deadline:
                return "another provision command"
            time.sleep(0.01)


def _try_lock(path: Path) -> int | None:
    """A locked fd on the file now at `path`, or None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder unlinked it on release: lock the current file


def _acquire(name: str, command: str) -> None:
    path = lock_path(name)
    state.mkdir_private(path.parent)
    fd = _try_lock(path)
    if fd is None:
        raise ClusterBusy(
            f"cluster {name!r} is busy: {_holder(path)} is working on it; wait for it to "
            "finish, then run this again"
        )
    since = time.strftime("%H:%M:%S UTC", time.gmtime())
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\t{command}\t{since}\n".encode())
    _held[name] = [fd, 1]


@contextmanager
def cluster_lock(name: str, command: str) -> Iterator[None]:
    """Hold cluster `name`'s lock for `command`; `ClusterBusy` when another process
    has it. Re-entrant within a process."""
    with _guard:
        if name in _held:
            _held[name][1] += 1
        else:
            _acquire(name, command)
    try:
        yield
    finally:
        with _guard:
            entry = _held[name]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[name]
                lock_path(name).unlink(missing_ok=True)  # still locked: nobody is mid-write
                os.close(entry[0])


def exclusive(command: str) -> Callable[[F], F]:
    """Run the decorated lifecycle function under its cluster's lock. The cluster
    is the first argument: a name, or settings with a `.name` (`up`)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
            with cluster_lock(getattr(first, "name", first), command):
                return fn(first, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
