"""The day-to-day commands on the simulated region, as a user types them: ssh by
alias and as another user; exec on every node; put -r /
get -r of a tree and of globs, byte for byte; removenode -n 2 under a running map.

One small cluster serves the module (a master and two workers with one engine
each, workers reached only through the master); tests run in file order and the
last one shrinks it; the fixture takes it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
from conftest import sim_cluster_env
from interrupts import EXE
from waits import wait_for

from provision import cloud, context, lifecycle
from provision.config import load_config

pytestmark = pytest.mark.e2e
NAME = "cmds"
REMOTE = "/srv/provision"  # the remote root: the image's user may write there
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # engines cannot import this module


@pytest.fixture(scope="module")
def cluster(sim_region, tmp_path_factory):
    with sim_cluster_env(tmp_path_factory.mktemp("cmds"), NAME, 3, public_ip=False) as env:
        yield lifecycle.up(load_config(env["config"]))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script, with no terminal: no prompt can hang the test."""
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300,
                          env=env or dict(os.environ), stdin=subprocess.DEVNULL,
                          start_new_session=True)


@pytest.fixture(scope="module")
def hostnames(cluster) -> dict[str, str]:
    """Node name -> the hostname its simulated host reports (from its private address)."""
    return {i.name: "ip-" + (i.private_ip or "").replace(".", "-") for i in cluster.cluster.nodes}


def test_ssh_reaches_a_worker_by_index_and_refuses_a_user_without_the_key(hostnames):
    ran = _cli("ssh", NAME, "2", "--", "hostname", "&&", "id", "-un")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [hostnames["node002"], "ubuntu"]
    as_root = _cli("ssh", NAME, "node001", "-u", "root", "--", "true")
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr, as_root.stderr


def test_exec_shows_every_nodes_output_and_exits_1_when_one_node_fails(hostnames):
    victim = hostnames["node002"]
    ran = _cli("exec", NAME, "--", f'hostname; [ "$(hostname)" != {victim} ]')
    assert ran.returncode == 1, ran.stdout + ran.stderr
    out = ran.stdout
    assert "master: exit 0" in out and "node001: exit 0" in out and "node002: exit 1" in out
    assert all(f"  {h}" in out for h in hostnames.values()) and len(hostnames) == 3
    assert "1 of 3 nodes failed: node002" in ran.stderr
    ok = _cli("exec", NAME, "--json", "--", "hostname")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert {k: v["stdout"].strip() for k, v in doc.items()} == hostnames


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_put_r_and_get_r_round_trip_a_tree_and_globs_byte_for_byte(cluster, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.bin").write_bytes(os.urandom(300_000))
    (tree / "b.bin").write_bytes(os.urandom(1000))
    (tree / "empty").write_bytes(b"")
    (tree / "sub" / "deeper" / "notes.txt").write_text("tabs\tand ünïcode\n")
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (tree / "sub" / "run.sh").chmod(0o755)
    put = _cli("put", NAME, "-r", str(tree), f"{REMOTE}/tree")
    assert put.returncode == 0, put.stderr
    assert put.stdout.count("(5 files)") == 3  # every node
    back = tmp_path / "back"
    got = _cli("get", NAME, "-r", f"{REMOTE}/tree", str(back), "--node", "node002")
    assert got.returncode == 0, got.stderr
    assert _tree(back) == _tree(tree)

    globbed = _cli("put", NAME, str(tree / "*.bin"), f"{REMOTE}/bins", "--node", "1")
    assert globbed.returncode == 0 and "(2 files)" in globbed.stdout, globbed.stderr
    bins = tmp_path / "bins"
    got = _cli("get", NAME, f"{REMOTE}/bins/*.bin", str(bins), "--node", "node001")
    assert got.returncode == 0, got.stderr
    assert _tree(bins) == {k: v for k, v in _tree(tree).items() if k.endswith(".bin")}


def _slow_square(x: float) -> float:
    import time

    time.sleep(0.25)
    return x * x


def test_removenode_n_2_removes_the_two_newest_workers_and_no_task_is_lost(cluster):
    region = context.context_for(NAME).region
    workers = cloud.describe_cluster(region, NAME).workers
    assert len(workers) == 2
    rc = lifecycle.connect(NAME, n_engines=3, timeout=120)
    try:
        rc[:].use_cloudpickle()
        view = rc.load_balanced_view()
        view.retries = 3
        pending = view.map_async(_slow_square, range(24))
        wait_for(lambda: pending.progress >= 3, 120, "the map to run (3 tasks done)")
        removed = _cli("removenode", NAME, "-n", "2")
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.count("removed node00") == 2
        assert pending.get(timeout=120) == [x * x for x in range(24)]
    finally:
        rc.close()
    info = cloud.describe_cluster(region, NAME)
    assert info.workers == [] and info.master is not None
