"""Bytes from the laptop cross its uplink once, on the simulated region: put-data on a
master and two workers with a shaped uplink sends one copy over the laptop's link,
and a worker added later gets the datasets and the packages from the master.

The oracle is the kernel's count of what this machine sent into the region: the
public bridge's tx bytes (`ip -s link`), which every frame from here to a host
crosses and which the uplink's tbf shapes; host-to-host frames never pass it.
One cluster serves the module (workers reached only through the master); tests
run in file order; the fixture takes it down.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import sklearn
from conftest import sim_cluster_env
from interrupts import EXE

from provision import lifecycle, sim, state
from provision.config import load_config
from provision.sim import hosts

pytestmark = pytest.mark.e2e
NAME = "fanout"
COPY_SLACK = 1.25  # TCP/IP and SSH framing, tar headers, handshakes: well under two copies


def _sent_into_region() -> int:
    """What this machine has sent into the region so far (the public bridge's tx bytes)."""
    return int(Path(f"/sys/class/net/{hosts.PUBLIC_BRIDGE}/statistics/tx_bytes").read_text())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The console script as a user runs it, with no terminal."""
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(sim_region, tmp_path_factory):
    with sim_cluster_env(tmp_path_factory.mktemp("fanout"), NAME, 3, public_ip=False) as env:
        lifecycle.up(load_config(env["config"]))
        yield env


def _on_nodes(command: str) -> dict[str, list[str]]:
    """Node -> the output lines of `command` on it, run with `provision exec`."""
    ran = _cli("exec", NAME, "--", command)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out: dict[str, list[str]] = {}
    node = ""
    for line in ran.stdout.splitlines():
        if line.endswith(": exit 0"):
            node = line.split(":")[0]
            out[node] = []
        elif line.strip():
            out[node].append(line.strip())
    return out


def _sums_on_nodes(remote_dir: str) -> dict[str, dict[str, str]]:
    """Node -> {file: sha256} of `remote_dir` on every node."""
    return {node: {name: digest for digest, name in (line.split() for line in lines)}
            for node, lines in _on_nodes(f"cd {remote_dir} && sha256sum *").items()}


# What `uv pip install` leaves on a node and a copy of the master's environment does not.
INSTALL_TRACES = "ls -d /srv/provision/uv-cache /srv/provision/wheels 2>/dev/null; hostname"


def _installed_where() -> tuple[set[str], dict[str, str]]:
    """The nodes where `uv pip install` ran, and node -> hostname."""
    found = _on_nodes(INSTALL_TRACES)
    return ({n for n, lines in found.items() if len(lines) > 1},
            {n: lines[-1] for n, lines in found.items()})


def _engines_import_sklearn() -> dict[str, str]:
    """Hostname -> the scikit-learn version each engine imports (one engine per node)."""
    rc = lifecycle.connect(NAME, timeout=60)
    try:
        rc[:].use_cloudpickle()  # the function travels by value: engines lack this module
        got = rc[:].apply_sync(lambda: (__import__("socket").gethostname(),
                                        __import__("sklearn").__version__))
    finally:
        rc.close()
    return dict(got)


def test_workers_take_the_masters_environment_instead_of_installing(cluster):
    installed, hostnames = _installed_where()
    assert installed == {"master"}, f"`uv pip install` ran on {sorted(installed)}"
    versions = _engines_import_sklearn()
    assert versions == {hostnames[n]: sklearn.__version__ for n in hostnames}, versions


def _local() -> tuple[str, dict[str, str]]:
    """The dataset put on the cluster: its directory on the nodes, and its files' sha256
    as this machine holds them."""
    entry = state.load(NAME)["datasets"]["digits"]
    local = Path(entry["local_dir"])
    return entry["remote_dir"], {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                 for p in local.iterdir()}


def test_put_data_on_three_nodes_sends_one_copy_over_the_shaped_uplink(cluster):
    sim.up(uplink="20mbit")
    try:
        before = _sent_into_region()
        ran = _cli("put-data", NAME, "digits")
        sent = _sent_into_region() - before
    finally:
        sim.up(uplink="off")
    assert ran.returncode == 0, ran.stderr
    remote_dir, local = _local()
    entry = state.load(NAME)["datasets"]["digits"]
    copy = sum(p.stat().st_size for p in Path(entry["local_dir"]).iterdir())
    assert copy <= sent <= COPY_SLACK * copy, (
        f"{sent} bytes crossed the laptop's link for a {copy}-byte dataset on 3 hosts")
    assert "on 3 host(s)" in ran.stdout, ran.stdout
    assert (f"(laptop link {copy / 1e6:.2f} MB, cluster network {2 * copy / 1e6:.2f} MB)"
            in ran.stdout), ran.stdout
    nodes = _sums_on_nodes(remote_dir)
    assert nodes == {n: local for n in ("master", "node001", "node002")}, nodes


def test_a_worker_added_later_gets_data_and_packages_from_the_master(cluster):
    before = _sent_into_region()
    ran = _cli("addnode", NAME, "-n", "1", "--spot-bid", "0.10")
    sent = _sent_into_region() - before
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "4 engines registered" in ran.stdout, ran.stdout
    # Its wheelhouse (~90 MB) and the dataset (~4.7 MB) came over the cluster network:
    # the laptop sent only SSH sessions and commands.
    assert sent < 1_000_000, f"{sent} bytes crossed the laptop's link for an added worker"
    remote_dir, local = _local()
    assert _sums_on_nodes(remote_dir).get("node003") == local
    installed, hostnames = _installed_where()
    assert "node003" not in installed, "`uv pip install` ran on the added worker"
    assert _engines_import_sklearn().get(hostnames["node003"]) == sklearn.__version__


def test_a_worker_installs_itself_when_the_masters_environment_cannot_be_copied(cluster):
    # A file of the master's venv its tar cannot read: the stream fails (tar exits 2).
    unreadable = "/srv/provision/venv/unreadable-by-tar"
    ran = _cli("exec", NAME, "--node", "master", "--",
               f"touch {unreadable} && chmod 000 {unreadable}")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    try:
        added = _cli("addnode", NAME, "-n", "1", "--spot-bid", "0.10")
    finally:
        _cli("exec", NAME, "--node", "master", "--", f"rm -f {unreadable}")
    assert added.returncode == 0, added.stdout + added.stderr
    assert "5 engines registered" in added.stdout, added.stdout
    output = " ".join((added.stdout + added.stderr).split())
    assert "could not copy the master's environment" in output, output
    assert "installing on the node instead" in output, output
    installed, hostnames = _installed_where()
    assert installed == {"master", "node004"}, f"`uv pip install` ran on {sorted(installed)}"
    assert _on_nodes("ls /srv/provision")["node004"].count("env.tmp") == 0
    assert _engines_import_sklearn().get(hostnames["node004"]) == sklearn.__version__
