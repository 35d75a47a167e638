"""The client's Python minor on a node, whatever its image ships.

Engines unpickle what the client pickles, so a node needs the client's Python
minor. The image's ``python3`` is used when it is that minor; otherwise the
node installs a standalone CPython of it with uv's managed Python (``uv python
install``, the uv binary that came with the wheelhouse), into
``{remote_root}/python``. Where it comes from (`PythonSource`): by default
uv's own source on the internet (python-build-standalone; the node needs
outbound access), or a mirror of it (``UV_PYTHON_INSTALL_MIRROR``) or a
downloads list of one's own (``--python-downloads-json-url``) for nodes
without internet.

Every node of a cluster boots the same image, so when the first node that
lacks the minor cannot get one, none can: `PythonGate` lets that node try
while the others wait for its verdict, and a failure (`PythonUnavailable`)
stops them all before any installs anything, so `up` can terminate what it
launched instead of configuring nodes that cannot work.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from provision.nodes.remote import NodeError

INSTALL_DIR = "python"  # under remote_root: managed interpreters
PYTHON_INSTALL_TIMEOUT_S = 600  # download (~30 MB) and unpack one CPython


@dataclass(frozen=True)
class PythonSource:
    """Where nodes get a standalone CPython when their image lacks the client's minor.

    Both None: uv's default source (GitHub), which needs outbound internet.
    """

    install_mirror: str | None = None  # uv's --mirror (UV_PYTHON_INSTALL_MIRROR): base URL
    downloads_json_url: str | None = None  # a downloads list of one's own (uv's JSON format)

    def describe(self) -> str:
        if self.downloads_json_url:
            return f"the downloads list {self.downloads_json_url}"
        if self.install_mirror:
            return f"the mirror {self.install_mirror}"
        return "uv's default source on the internet (python-build-standalone on GitHub)"


class PythonUnavailable(NodeError):
    """The node lacks the client's Python minor and cannot get one.

    The same holds for every node of the image, so the orchestrator stops the
    whole `up` on it rather than judging nodes one by one.
    """


def install_script(remote_root: str, minor: str, source: PythonSource) -> str:
    """Install CPython `minor` under ``remote_root/python`` with the pushed uv; print its path.

    Idempotent: uv skips an interpreter that is already installed. ``--no-bin``
    leaves the user's ``~/.local/bin`` alone.
    """
    root = shlex.quote(remote_root)
    env = (f"UV_NO_CONFIG=1 UV_NO_PROGRESS=1 UV_CACHE_DIR={root}/uv-cache "
           f"UV_PYTHON_INSTALL_DIR={root}/{INSTALL_DIR}")
    args = ""
    if source.install_mirror:
        args += f" --mirror {shlex.quote(source.install_mirror)}"
    if source.downloads_json_url:
        args += f" --python-downloads-json-url {shlex.quote(source.downloads_json_url)}"
    uv = f"{root}/wheels/uv"
    return "\n".join([
        "set -e",
        f"export {env}",
        f"{uv} python install --quiet --no-bin{args} {shlex.quote(minor)} >&2",
        f"{uv} python find --managed-python {shlex.quote(minor)}",
    ])


def unavailable(node: str, host: str, have: str, minor: str, source: PythonSource,
                why: str) -> PythonUnavailable:
    """The one-line error for a node that cannot get Python `minor`, saying what to change."""
    image = f"Python {have}" if have else "no python3"
    return PythonUnavailable(
        f"{node} ({host}): the image has {image}, this client runs {minor}, and "
        f"`uv python install {minor}` from {source.describe()} failed: {why}. Set "
        "python_install_mirror or python_downloads_json_url in the cluster file (a mirror "
        f"the nodes reach), or use an image with Python {minor}",
        node=node, host=host,
    )


class PythonGate:
    """One verdict per configure call: can the image's nodes get the client's Python?

    The first node that needs a managed interpreter owns the try; nodes arriving
    meanwhile wait for its verdict. A success lets every node install its own; a
    `PythonUnavailable` fails them all with the owner's reason; any other
    failure of the owner (an SSH drop) hands the try to the next node. A node
    whose image Python matches never comes here.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: str | None = None
        self._ok = False
        self._failure: PythonUnavailable | None = None

    def check(self, node: str) -> None:
        """Raise at once if the verdict is already "unavailable" (before pushing bytes)."""
        with self._cond:
            self._raise_if_failed(node)

    def _raise_if_failed(self, node: str) -> None:
        if self._failure is not None:
            raise PythonUnavailable(
                f"{node}: same image as {self._failure.node}, which cannot get the client's "
                f"Python: {self._failure}", node=node,
            )

    @contextmanager
    def turn(self, node: str, timeout: float = PYTHON_INSTALL_TIMEOUT_S) -> Iterator[None]:
        """Run the body (the install) once the verdict allows it, or as the owner."""
        with self._cond:
            decided = self._cond.wait_for(
                lambda: self._ok or self._failure is not None or self._owner is None, timeout
            )
            if not decided:
                raise NodeError(
                    f"{node}: waited {timeout:g}s for {self._owner} to install Python", node=node
                )
            self._raise_if_failed(node)
            owner = not self._ok
            if owner:
                self._owner = node
        try:
            yield
        except PythonUnavailable as err:
            if owner:
                self._settle(failure=err)
            raise
        except BaseException:
            if owner:
                self._settle()
            raise
        else:
            if owner:
                self._settle(ok=True)

    def _settle(self, *, ok: bool = False, failure: PythonUnavailable | None = None) -> None:
        with self._cond:
            self._owner = None
            self._ok = self._ok or ok
            self._failure = self._failure or failure
            self._cond.notify_all()
