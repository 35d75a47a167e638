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

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import namespace_host
from python_mirror import build_mirror

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


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One namespace host whose python3 is hidden, on a bridge of its own."""
    tmp = tmp_path_factory.mktemp("nopython")
    with namespace_host(tmp, "ppy", f"{BRIDGE_IP}/{PREFIX}", HOST_IP, "nopython", "nopython") as ep:
        remote.run(ep, HIDE_PYTHON)
        yield ep


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, host: Endpoint) -> str:
    """The downloads list of a CPython of the client's minor, served to the host."""
    return build_mirror(tmp_path_factory.mktemp("mirror"), BRIDGE_IP)


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
