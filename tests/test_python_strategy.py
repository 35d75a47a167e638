"""The client's Python minor on a node whose image lacks it.

Without hosts: `PythonGate` gives one verdict per `up` (the first node that needs
an interpreter tries; a failure stops the others), and the install command
carries the configured source. On a namespace host whose ``python3`` is hidden
(bind mounts in the host's own mount namespace): with no source it can reach,
setup fails at once with `PythonUnavailable` saying what to configure; with a
mirror (a downloads list served from this machine, holding a CPython packed
from Debian's own python3.11, as uv's python-build-standalone tarballs are
laid out) the node installs it with uv and gets a working venv of the client's
versions.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import namespace_hosts

from provision.nodes import python, remote, setup
from provision.nodes import wheelhouse as wheelhouses
from provision.nodes.python import PythonGate, PythonSource, PythonUnavailable
from provision.nodes.remote import Endpoint
from provision.sim.state import GATEWAY

_NET = GATEWAY.rsplit(".", 1)[0]  # this checkout's simulated /24; a /28 of its own here
BRIDGE_IP, HOST_IP, PREFIX = f"{_NET}.225", f"{_NET}.230", 28
ROOT = "/srv/provision"
HIDE_PYTHON = (  # in the host's own mount namespace only
    "for p in /usr/bin/python3 /usr/bin/python3.11; do mount --bind /dev/null $p; done; "
    "[ -d /root/.pyenv ] && mount -t tmpfs tmpfs /root/.pyenv; "
    "! command -v python3 >/dev/null || ! python3 -c '' 2>/dev/null"
)


# --- without hosts -------------------------------------------------------------------


def test_a_failed_verdict_stops_every_other_node_without_trying():
    gate, inside, release = PythonGate(), threading.Event(), threading.Event()
    tried: list[str] = []
    stopped: list[str] = []

    def owner() -> None:
        with pytest.raises(PythonUnavailable), gate.turn("node001"):
            inside.set()
            release.wait(10)
            raise PythonUnavailable("node001 (10.0.0.2): the image has no python3", node="node001")

    def other(name: str) -> None:
        try:
            with gate.turn(name):
                tried.append(name)
        except PythonUnavailable as err:
            stopped.append(str(err))

    first = threading.Thread(target=owner)
    first.start()
    assert inside.wait(10)
    others = [threading.Thread(target=other, args=(n,)) for n in ("master", "node002")]
    for t in others:
        t.start()
    release.set()
    for t in (first, *others):
        t.join(10)

    assert tried == [] and len(stopped) == 2
    assert all("same image as node001" in s for s in stopped)
    with pytest.raises(PythonUnavailable, match="same image as node001"):
        gate.check("node003")  # a node that answers later stops before pushing anything


def test_an_owner_that_drops_for_another_reason_hands_the_try_to_the_next_node():
    gate, order = PythonGate(), []
    with pytest.raises(EOFError), gate.turn("node001"):
        raise EOFError("ssh link dropped")
    with gate.turn("node002"):
        order.append("node002")  # the next node tries
    with gate.turn("node003"):
        order.append("node003")  # after a success, each installs its own
    assert order == ["node002", "node003"]


def test_the_install_command_carries_the_configured_source():
    script = python.install_script(
        "/srv/p", "3.11", PythonSource("https://mirror.example/pbs", "http://10.0.0.1/d.json")
    )
    assert "UV_PYTHON_INSTALL_DIR=/srv/p/python" in script
    assert "--mirror https://mirror.example/pbs" in script
    assert "--python-downloads-json-url http://10.0.0.1/d.json 3.11" in script
    assert "uv python find --managed-python 3.11" in script


# --- on a namespace host without python3 ---------------------------------------------


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
def _serve(directory: str) -> str:
    """An HTTP server for `directory` on the bridge (reached by the host only); its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *a, **kw: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer((BRIDGE_IP, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{BRIDGE_IP}:{server.server_address[1]}"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One namespace host whose python3 is hidden, on a bridge of its own."""
    tmp = tmp_path_factory.mktemp("nopython")
    with namespace_hosts(tmp, "ppy", f"{BRIDGE_IP}/{PREFIX}", {HOST_IP: "nopython"}) as key:
        ep = Endpoint("nopython", HOST_IP, "root", key, tmp / "known_hosts")
        remote.wait_for_ssh(ep, 30)
        remote.run(ep, HIDE_PYTHON)
        yield ep


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, host: Endpoint) -> str:
    """A downloads list in uv's format, served to the host; its URL."""
    root = tmp_path_factory.mktemp("mirror")
    tarball, version = pack_cpython(root)
    url = _serve(str(root))
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


def spec_for(source: PythonSource) -> setup.EnvSpec:
    return setup.client_env_spec(remote_root=ROOT, platform=setup.platform_for("x86_64"),
                                 python_source=source)


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    return wheelhouses.build_wheelhouse(spec_for(PythonSource()))


@pytest.mark.e2e
def test_a_node_that_cannot_get_the_clients_python_fails_at_once_saying_what_to_set(
    host: Endpoint, wheelhouse: Path
) -> None:
    with pytest.raises(PythonUnavailable) as err:
        setup.setup_node(host, spec_for(PythonSource()), wheelhouse, PythonGate())
    text = str(err.value)
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert text.startswith(f"nopython ({HOST_IP}): the image has no python3, this client runs")
    assert f"`uv python install {minor}` from uv's default source" in text
    assert "python_install_mirror or python_downloads_json_url" in text


@pytest.mark.e2e
def test_a_node_without_python3_installs_the_clients_minor_from_a_mirror(
    host: Endpoint, mirror: str, wheelhouse: Path
) -> None:
    result = setup.setup_node(host, spec_for(PythonSource(downloads_json_url=mirror)), wheelhouse)

    assert not result.skipped
    check = (f"{ROOT}/venv/bin/python -c 'import sys, sklearn, ipyparallel; "
             "print(sys.version_info[:2], sys.base_prefix)'")
    out = remote.run(host, check)
    assert f"({sys.version_info.major}, {sys.version_info.minor})" in out
    assert f"{ROOT}/python/" in out  # the managed interpreter, not the image's
    again = setup.setup_node(host, spec_for(PythonSource(downloads_json_url=mirror)), wheelhouse)
    assert again.skipped
