"""A mirror of uv's managed Python for nodes without internet: test support.

uv installs a standalone CPython from a downloads list of one's own
(``--python-downloads-json-url``). Offline, the interpreter is this machine's
Debian python3.11 packed as python-build-standalone's ``install_only``
tarballs are laid out (Debian links it statically against libpython, so it is
relocatable), served over HTTP on an address of this machine that the test's
hosts reach (a bridge's gateway). Used on namespace hosts whose python3 is
hidden, and by the simulated region's image without python3.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path


def pack_cpython(dest: Path) -> tuple[str, str]:
    """This machine's python3.11 laid out as a python-build-standalone install_only
    tarball, in `dest`; (tarball name, version)."""
    version = subprocess.run(["/usr/bin/python3.11", "-c", "import platform; "
                              "print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    name = f"cpython-{version}-x86_64-unknown-linux-gnu-install_only.tar.gz"
    skip = shutil.ignore_patterns("test", "__pycache__", "idle_test", "site-packages",
                                  "dist-packages")
    tree = dest / "tree" / "python"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/python3.11", tree / "bin/python3.11")
    os.symlink("python3.11", tree / "bin/python3")
    # Copies, not symlinks: uv refuses absolute links in an archive.
    shutil.copytree("/usr/lib/python3.11", tree / "lib/python3.11", symlinks=False, ignore=skip)
    (tree / "lib/python3.11/site-packages").mkdir()
    with tarfile.open(dest / name, "w:gz", compresslevel=1) as tar:
        tar.add(tree, arcname="python")
    shutil.rmtree(dest / "tree")
    return name, version


@functools.cache
def serve(directory: str, address: str) -> str:
    """An HTTP server for `directory` on `address` (for the test's hosts only); its URL.
    It runs in a daemon thread until the test session ends."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *a, **kw: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{address}:{server.server_address[1]}"


def build_mirror(root: Path, address: str) -> str:
    """Pack the CPython, write uv's downloads list for it, serve `root` on `address`;
    the list's URL."""
    tarball, version = pack_cpython(root)
    url = serve(str(root), address)
    major, minor, patch = version.split(".")
    entry = {
        "name": "cpython", "arch": {"family": "x86_64", "variant": None}, "os": "linux",
        "libc": "gnu", "major": int(major), "minor": int(minor), "patch": int(patch),
        "prerelease": "", "url": f"{url}/{tarball}", "variant": None,
        "sha256": hashlib.sha256((root / tarball).read_bytes()).hexdigest(),
    }
    (root / "downloads.json").write_text(
        json.dumps({f"cpython-{version}-linux-x86_64-gnu": entry})
    )
    return f"{url}/downloads.json"
