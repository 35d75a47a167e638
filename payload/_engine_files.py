"""Engine side of shipping data to hosts, and what a host reports about itself.

Shipped by value like ``payload._engine`` (nodes do not have ``payload``), so
nothing here imports ``payload``. Files arrive whole or not at all: each is
written under a temporary name in its directory and renamed into place, so a
file that exists is complete, and "does this host have the data?" is a
directory listing.
"""

from __future__ import annotations

import getpass
import os
import socket
import tempfile
import uuid


def hostname() -> str:
    """This engine's host name: engines that share it share a filesystem."""
    return socket.gethostname()


def writable_dirs(candidates: list[str]) -> list[str | None]:
    """Each candidate (``{tmp}`` and ``{user}`` filled in here) if it can be
    created and written by this engine, else None."""
    found: list[str | None] = []
    for template in candidates:
        path = template.format(tmp=tempfile.gettempdir(), user=_user())
        try:
            os.makedirs(path, exist_ok=True)
            ok = os.access(path, os.W_OK | os.X_OK)
        except OSError:
            ok = False
        found.append(path if ok else None)
    return found


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return str(os.getuid())


def missing_files(directory: str, names: list[str]) -> list[str]:
    """The names not (yet) in ``directory``."""
    try:
        present = set(os.listdir(directory))
    except FileNotFoundError:
        present = set()
    return [name for name in names if name not in present]


def receive_file(directory: str, name: str, data: bytes | memoryview) -> int:
    """Write ``data`` to ``directory/name`` atomically; returns the bytes written.

    Two clients shipping the same content-hashed file at once is harmless: each
    renames its own complete copy over the other's.
    """
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(data)


def host_memory() -> dict:
    """This host's memory in bytes (total, available) and this engine's resident size."""
    import psutil  # a node package (provision installs it for engine supervision)

    vm = psutil.virtual_memory()
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "total": int(vm.total),
        "available": int(vm.available),
        "engine_rss": int(psutil.Process().memory_info().rss),
    }


def existing_paths(paths: list[str]) -> list[str]:
    """Those of ``paths`` that are files on this host."""
    return [path for path in paths if os.path.isfile(path)]
