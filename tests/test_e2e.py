"""The user journey on the simulated region: up, connect, put-data, search,
addnode, removenode, interruptions, down. Real SSH hosts, real engines.

One cluster serves the module (bringing one up costs tens of seconds on two
cores); tests run in file order and each leaves the cluster as it found it,
except the last, which takes it down.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from provision import data, lifecycle, sim, state
from provision.cloud import ec2
from provision.config import load_config
from provision.sim import hosts

pytestmark = pytest.mark.e2e
NAME = "e2e"
# Engines cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _hostname() -> str:
    return socket.gethostname()


def _slow_square(x: float) -> tuple[float, str]:
    import socket
    import time

    time.sleep(0.25)
    return x * x, socket.gethostname()


@pytest.fixture(scope="module")
def env(sim_region, tmp_path_factory):
    """Config and state for the module's cluster, all under a temporary directory."""
    root = tmp_path_factory.mktemp("e2e")
    old = os.environ.get("PROVISION_STATE_DIR")
    os.environ["PROVISION_STATE_DIR"] = str(root / "state")
    cfg_file = root / "cluster.yaml"
    _keygen(root / "key")
    cfg_file.write_text(
        "default: sim\nclusters:\n  sim:\n    region: sim\n    name: e2e\n"
        f"    key_path: {root}/key\n    cluster_size: 3\n    spot_bid: 0.10\n"
        "    engines_per_node: 1\n    ssh_timeout: 120\n"
    )
    yield {"root": root, "config": cfg_file}
    with contextlib.suppress(Exception):  # already down after the last test
        lifecycle.down(NAME)
    if old is None:
        os.environ.pop("PROVISION_STATE_DIR", None)
    else:
        os.environ["PROVISION_STATE_DIR"] = old


@pytest.fixture(scope="module")
def cluster(env):
    result = lifecycle.up(load_config(env["config"]))
    return result


def _client(n: int | None = None):
    rc = lifecycle.connect(NAME, n_engines=n, timeout=120)
    rc[:].use_cloudpickle()  # functions of this module travel by value
    return rc


def test_up_gives_a_client_with_one_engine_on_each_of_three_hosts(cluster):
    assert cluster.engines == 3
    assert len(cluster.cluster.nodes) == 3
    rc = _client(3)
    try:
        names = rc[:].apply_sync(_hostname)
        assert len(set(names)) == 3
        assert all(n.startswith("ip-10-77-0-") for n in names)
    finally:
        rc.close()


def test_up_again_changes_nothing(cluster, env):
    before = sorted(i.instance_id for i in cluster.cluster.alive)
    again = lifecycle.up(load_config(env["config"]))
    assert sorted(i.instance_id for i in again.cluster.alive) == before
    assert again.engines == 3


def test_put_data_ships_once_and_the_second_run_moves_nothing(cluster, env):
    ctx = lifecycle.context_for(NAME)
    first = data.put_data(ctx, "digits", n_splits=3)
    assert len(first.bytes_per_host) == 3 and all(b > 0 for b in first.bytes_per_host.values())
    second = data.put_data(ctx, "digits", n_splits=3)
    assert second.bytes_moved == 0 and second.digest == first.digest


def test_gridsearch_on_the_cluster_equals_sklearn_on_the_same_splits(cluster):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV, ShuffleSplit
    from sklearn.svm import SVC

    from payload import DistributedSearch

    entry = state.load(NAME)["datasets"]["digits"]
    paths = [f"{entry['remote_dir']}/{f}" for f in entry["files"]]
    grid = {"C": [1.0, 10.0], "gamma": [1e-3, 1e-4]}
    rc = _client(3)
    try:
        search = DistributedSearch(rc.load_balanced_view(), SVC(), grid, paths)
        search.run()
        hosts_used = {r["hostname"] for r in search.results} if hasattr(search, "results") else None
    finally:
        rc.close()
    X, y = load_digits(return_X_y=True)
    cv = ShuffleSplit(n_splits=3, test_size=0.25, random_state=42)
    ref = GridSearchCV(SVC(), grid, cv=list(cv.split(X, y))).fit(X, y)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"], rtol=0, atol=1e-12)
    assert search.best_params_ == ref.best_params_
    if hosts_used is not None:
        assert len(hosts_used) >= 2


def test_addnode_joins_a_running_map_and_gets_the_data(cluster):
    rc = _client(3)
    try:
        view = rc.load_balanced_view()
        view.retries = 2
        # Long enough (~40 s on 3 engines) that the new node joins mid-map.
        pending = view.map_async(_slow_square, range(480))
        time.sleep(1.0)
        started = time.monotonic()
        grown = lifecycle.addnode(NAME, 1)
        print(f"addnode took {time.monotonic() - started:.1f} s")
        assert grown.engines == 4
        assert not pending.ready(), "the map ended before the node joined: make it longer"
        results = pending.get(timeout=300)
        assert [r[0] for r in results] == [x * x for x in range(480)]
        new = {i.instance_id for i in grown.cluster.workers} - {i.instance_id for i in cluster.cluster.workers}
        (new_node,) = [i for i in grown.cluster.workers if i.instance_id in new]
        new_host = "ip-" + new_node.private_ip.replace(".", "-")
        assert new_host in {r[1] for r in results}, "the new engine took part in the running map"
    finally:
        rc.close()
    # The node added later holds the datasets already put on the cluster.
    entry = state.load(NAME)["datasets"]["digits"]
    ctx = lifecycle.context_for(NAME)
    from provision.nodes import remote

    listing = remote.run(ctx.endpoint(new_node), f"ls {entry['remote_dir']}")
    assert set(entry["files"]) <= set(listing.split())


def test_removenode_mid_map_loses_no_result(cluster):
    info = ec2.describe_cluster(lifecycle.context_for(NAME).region, NAME)
    victim = info.workers[-1]
    rc = _client()
    try:
        view = rc.load_balanced_view()
        view.retries = 3
        pending = view.map_async(_slow_square, range(60))
        time.sleep(1.0)
        lifecycle.removenode(NAME, victim.name)
        results = pending.get(timeout=300)
        assert [r[0] for r in results] == [x * x for x in range(60)]
    finally:
        rc.close()
    assert ec2.describe_cluster(lifecycle.context_for(NAME).region, NAME).find(victim.instance_id) is None


def test_spot_interruption_mid_map_loses_no_result(cluster):
    info = ec2.describe_cluster(lifecycle.context_for(NAME).region, NAME)
    victim = info.workers[-1]
    rc = _client()
    try:
        view = rc.load_balanced_view()
        view.retries = 3
        pending = view.map_async(_slow_square, range(60))
        time.sleep(1.0)
        sim.interrupt(victim.instance_id)
        results = pending.get(timeout=300)
        assert [r[0] for r in results] == [x * x for x in range(60)]
    finally:
        rc.close()
    assert hosts.netns_name(victim.private_ip) not in hosts.namespaces()


def test_down_removes_everything_and_every_host(cluster):
    region = lifecycle.context_for(NAME).region
    ips = [i.private_ip for i in ec2.describe_cluster(region, NAME).instances if i.private_ip]
    lifecycle.down(NAME)
    assert not any(ec2.leftovers(region, NAME).values())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(map(hosts.netns_name, ips)) & set(hosts.namespaces()):
        time.sleep(0.2)
    assert not set(map(hosts.netns_name, ips)) & set(hosts.namespaces())


def test_ctrl_c_during_up_then_down_leaves_nothing(sim_region, tmp_path):
    """SIGINT once instances exist; `down` must then find and remove all of it."""
    import signal

    cfg = tmp_path / "c.yaml"
    _keygen(tmp_path / "key")
    cfg.write_text(
        "default: s\nclusters:\n  s:\n    region: sim\n    name: ctrlc\n"
        f"    key_path: {tmp_path}/key\n    cluster_size: 2\n    engines_per_node: 1\n"
    )
    env = dict(os.environ, PROVISION_STATE_DIR=str(tmp_path / "state"))
    exe = Path(os.sys.executable).parent / "provision"
    proc = subprocess.Popen([str(exe), "up", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    region = sim.region()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(ec2.describe_cluster(region, "ctrlc").alive) < 2:
        time.sleep(0.2)
    time.sleep(1.0)  # into the SSH wait / install
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    ips = [i.private_ip for i in ec2.describe_cluster(region, "ctrlc").instances if i.private_ip]
    down = subprocess.run([str(exe), "down", "ctrlc", "--yes", "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(ec2.leftovers(region, "ctrlc").values())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(map(hosts.netns_name, ips)) & set(hosts.namespaces()):
        time.sleep(0.2)
    assert not set(map(hosts.netns_name, ips)) & set(hosts.namespaces())
