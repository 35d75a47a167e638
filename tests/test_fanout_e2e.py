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


def _sums_on_nodes(remote_dir: str) -> dict[str, dict[str, str]]:
    """Node -> {file: sha256} of `remote_dir` on every node, read with `provision exec`."""
    ran = _cli("exec", NAME, "--", f"cd {remote_dir} && sha256sum *")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    sums: dict[str, dict[str, str]] = {}
    node = ""
    for line in ran.stdout.splitlines():
        if line.endswith(": exit 0"):
            node = line.split(":")[0]
        elif line.strip():
            digest, name = line.split()
            sums.setdefault(node, {})[name] = digest
    return sums


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
