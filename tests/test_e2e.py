"""The user journey on the simulated region: up, connect, put-data, search,
addnode, removenode, interruptions, down. Real SSH hosts, real engines.

One cluster serves the module (bringing one up costs tens of seconds on two
cores); tests run in file order and each leaves the cluster as it found it,
except the last, which takes it down. Its workers have no public address
(``public_ip: false``): everything reaches them through the master, as the
image's user (ubuntu), on a region with AWS's timing and eventual consistency.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from conftest import sim_cluster_env
from interrupts import EXE, HINT, interrupt_when_blocked
from oracle import assert_nothing_left, ec2_client
from waits import Lines, wait_for

from provision import cloud, context, data, lifecycle, sim, state
from provision.config import load_config
from provision.nodes import remote
from provision.progress import Reporter
from provision.sim import hosts
from provision.sim.state import GATEWAY

pytestmark = pytest.mark.e2e
NAME = "e2e"
# Engines cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _assert_hosts_gone(ips: list[str], timeout: float = 10) -> None:
    """The simulated hosts at `ips` vanish (the region's watcher may lag a poll)."""
    wait_for(lambda: not set(map(hosts.netns_name, ips)) & set(hosts.namespaces()), timeout,
             f"the hosts of {ips} to go")


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
    with sim_cluster_env(tmp_path_factory.mktemp("e2e"), NAME, 3, public_ip=False) as env:
        yield env


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
        assert all(
            n.startswith("ip-" + GATEWAY.rsplit(".", 1)[0].replace(".", "-") + "-") for n in names
        )
    finally:
        rc.close()


def test_workers_have_only_private_addresses_this_machine_has_no_route_to(cluster):
    info = cloud.describe_cluster(context.context_for(NAME).region, NAME)
    assert info.master is not None and info.master.public_ip and info.master.private_ip
    assert [w.public_ip for w in info.workers] == [None, None]
    for worker in info.workers:  # a namespaced host's private address: no route from here
        with pytest.raises(OSError), socket.create_connection((worker.private_ip, 22), timeout=3):
            pass


def test_the_images_user_with_sudo_is_the_login_user_and_root_is_refused(cluster):
    ctx = context.context_for(NAME)
    info = cloud.describe_cluster(ctx.region, NAME)
    for node in (info.master, info.workers[0]):  # the master, and a worker behind it
        ep = ctx.endpoint(node, info.master)
        assert remote.run(ep, "id -un; sudo -n id -u").split() == ["ubuntu", "0"]
        started = time.monotonic()
        with pytest.raises(remote.NodeError, match=r"root@\S+ refused key .* set `user`"):
            remote.wait_for_ssh(dataclasses.replace(ep, user="root"), 120, auth_grace=2)
        assert time.monotonic() - started < 30, "a refused key is an answer, not a wait"


def test_up_again_changes_nothing(cluster, env):
    before = sorted(i.instance_id for i in cluster.cluster.alive)
    again = lifecycle.up(load_config(env["config"]))
    assert sorted(i.instance_id for i in again.cluster.alive) == before
    assert again.engines == 3


def test_ctrl_c_after_up_did_its_work_exits_130_and_the_cluster_stays_up(cluster, env):
    """SIGINT while `provision up` prints its result (its work done, stdout held
    full): exit 130 with the hint, never a death by signal (issue 12's -2)."""
    code, out, err = interrupt_when_blocked(["up", "--config", str(env["config"])])
    assert code == 130, out + err
    assert err.strip().splitlines()[-1].startswith(HINT), err
    assert "Traceback" not in err
    assert err.count(": ready (") == 3  # every node was ready before the signal
    region = context.context_for(NAME).region
    assert len(cloud.describe_cluster(region, NAME).alive) == 3


def test_put_data_ships_once_and_the_second_run_moves_nothing(cluster, env):
    ctx = context.context_for(NAME)
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
    finally:
        rc.close()
    X, y = load_digits(return_X_y=True)
    cv = ShuffleSplit(n_splits=3, test_size=0.25, random_state=42)
    ref = GridSearchCV(SVC(), grid, cv=list(cv.split(X, y))).fit(X, y)
    # To the last bit, as the README says: the same fits on the same splits.
    assert np.array_equal(search.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"])
    assert search.best_params_ == ref.best_params_
    # Where the fits ran, as the search recorded it: (hostname, pid) -> fits.
    assert sum(search.engines.values()) == 4 * 3
    hosts_used = {host for host, _ in search.engines}
    assert len(hosts_used) >= 2, search.engines


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def test_ssh_put_and_get_reach_the_right_nodes(cluster, tmp_path):
    hosts_seen = _cli("ssh", NAME, "node001", "hostname")
    assert hosts_seen.returncode == 0, hosts_seen.stderr
    node001 = cloud.describe_cluster(context.context_for(NAME).region, NAME).find("node001")
    assert hosts_seen.stdout.strip() == "ip-" + node001.private_ip.replace(".", "-")
    local = tmp_path / "note.txt"
    local.write_text("hello nodes\n")
    put = _cli("put", NAME, str(local), "/srv/provision/note.txt")  # /srv is root's
    assert put.returncode == 0, put.stderr
    assert put.stdout.count("/srv/provision/note.txt") == 3
    back = tmp_path / "back.txt"
    got = _cli("get", NAME, "/srv/provision/note.txt", str(back), "--node", "node002")
    assert got.returncode == 0, got.stderr
    assert back.read_text() == "hello nodes\n"


def test_sklearn_searches_run_unchanged_through_the_joblib_backend(cluster):
    from sklearn.datasets import load_iris
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import (
        GridSearchCV,
        HalvingGridSearchCV,
        RandomizedSearchCV,
        cross_validate,
    )
    from sklearn.svm import SVC

    import provision

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": [0.01, 0.1]}
    makers = {
        "grid": lambda: GridSearchCV(SVC(), grid, cv=3, n_jobs=-1),
        "random": lambda: RandomizedSearchCV(
            SVC(), grid, n_iter=4, cv=3, n_jobs=-1, random_state=0
        ),
        "halving": lambda: HalvingGridSearchCV(SVC(), grid, cv=3, n_jobs=-1, random_state=0),
    }
    local = {k: m().fit(X, y).cv_results_["mean_test_score"] for k, m in makers.items()}
    local_cv = cross_validate(SVC(), X, y, cv=3)["test_score"]
    rc = _client(3)
    try:
        before = len(rc.history)
        with provision.joblib_backend(rc):
            remote = {k: m().fit(X, y).cv_results_["mean_test_score"] for k, m in makers.items()}
            remote_cv = cross_validate(SVC(), X, y, cv=3, n_jobs=-1)["test_score"]
        assert len(rc.history) > before, "tasks went through the cluster"
    finally:
        rc.close()
    for k in makers:
        np.testing.assert_allclose(remote[k], local[k])
    np.testing.assert_allclose(remote_cv, local_cv)


def test_learning_curve_from_the_cli_writes_its_plot(cluster, tmp_path):
    result = _cli("run", NAME, "learning-curve", "--data", "digits", "--model", "sklearn.svm.SVC",
                  "--set", "gamma=0.001", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert "samples: train" in result.stdout


def test_a_killed_client_resumes_the_search_without_recomputing(cluster, tmp_path):
    """SIGKILL `provision run` mid-search; the re-run finishes from the journal."""
    import signal

    from payload.journal import verify_journal

    args = [
        str(EXE),
        "run",
        NAME,
        "gridsearch",
        "--data",
        "digits",
        "--model",
        "sklearn.svm.SVC",
        "--param",
        "C=logspace(-1,2,4)",
        "--param",
        "gamma=logspace(-4,0,5)",
        "--out",
        str(tmp_path),
    ]
    journal = tmp_path / "journal.jsonl"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def results_journaled() -> int:
        return journal.read_text().count('"type":"result"') if journal.exists() else 0

    wait_for(lambda: results_journaled() >= 10 or proc.poll() is not None, 120,
             "10 results in the journal")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = journal.read_text().count('"type":"result"')
    assert 10 <= done_before < 60, "killed mid-search"
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Rank 1: validation: ")
    check = verify_journal(journal)
    assert check.ok, check
    assert check.n_sessions == 2
    assert check.n_results == 60  # every pair exactly once across both sessions
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV, ShuffleSplit
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    grid = {"C": np.logspace(-1, 2, 4), "gamma": np.logspace(-4, 0, 5)}
    cv = list(ShuffleSplit(n_splits=3, test_size=0.25, random_state=42).split(X, y))
    ref = GridSearchCV(SVC(), grid, cv=cv, n_jobs=2).fit(X, y)
    ours = json.loads((tmp_path / "cv_results.json").read_text())
    # Through JSON, as a user reads it: the same floats (repr round-trips exactly).
    assert np.array_equal(ours["mean_test_score"], ref.cv_results_["mean_test_score"])


def test_engines_killed_mid_search_lose_no_result(cluster):
    """A spot interruption during the payload's search: retries finish every pair."""
    from sklearn.svm import SVC

    from payload import DistributedSearch

    region = context.context_for(NAME).region
    victim = cloud.describe_cluster(region, NAME).workers[-1]
    entry = state.load(NAME)["datasets"]["digits"]
    paths = [f"{entry['remote_dir']}/{f}" for f in entry["files"]]
    grid = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": [1e-4, 1e-3, 1e-2]}
    rc = _client()
    try:
        search = DistributedSearch(rc.load_balanced_view(), SVC(), grid, paths, retries=3)
        search.start()
        wait_for(lambda: search.progress[0] >= 3, 120, "3 pairs done")
        sim.interrupt(victim.instance_id)
        assert search.wait(timeout=300)
    finally:
        rc.close()
    assert not np.isnan(search.cv_results_["mean_test_score"]).any()
    assert search.progress == (36, 36)


def test_addnode_joins_a_running_map_and_gets_the_data(cluster):
    region = context.context_for(NAME).region
    before_ids = {i.instance_id for i in cloud.describe_cluster(region, NAME).alive}
    rc = _client()
    try:
        engines_before = len(rc.ids)
        view = rc.load_balanced_view()
        view.retries = 2
        # Long enough (~40 s on 3 engines) that the new node joins mid-map.
        pending = view.map_async(_slow_square, range(480))
        wait_for(lambda: pending.progress >= 3, 120, "the map to run (3 tasks done)")
        started = time.monotonic()
        grown = lifecycle.addnode(NAME, 1)
        print(f"addnode took {time.monotonic() - started:.1f} s")
        assert grown.engines == engines_before + 1
        assert not pending.ready(), "the map ended before the node joined: make it longer"
        results = pending.get(timeout=300)
        assert [r[0] for r in results] == [x * x for x in range(480)]
        (new_node,) = [i for i in grown.cluster.alive if i.instance_id not in before_ids]
        new_host = "ip-" + new_node.private_ip.replace(".", "-")
        assert new_host in {r[1] for r in results}, "the new engine took part in the running map"
    finally:
        rc.close()
    # The node added later holds the datasets already put on the cluster.
    entry = state.load(NAME)["datasets"]["digits"]
    ctx = context.context_for(NAME)
    listing = remote.run(ctx.endpoint(new_node), f"ls {entry['remote_dir']}")
    assert set(entry["files"]) <= set(listing.split())


@pytest.mark.parametrize("lose", ["interrupt", "removenode"])
def test_losing_a_worker_mid_map_loses_no_result(cluster, lose):
    """`provision removenode` or a spot interruption while a map runs: retries cover it.

    The interruption goes first, while two other engines remain: with a single
    engine left, ipyparallel's scheduler took ~50 s instead of ~10 s to retry the
    lost tasks (still no loss)."""
    region = context.context_for(NAME).region
    victim = cloud.describe_cluster(region, NAME).workers[-1]
    rc = _client()
    try:
        view = rc.load_balanced_view()
        view.retries = 3
        pending = view.map_async(_slow_square, range(60))
        wait_for(lambda: pending.progress >= 3, 120, "the map to run (3 tasks done)")
        if lose == "removenode":
            lifecycle.removenode(NAME, victim.name)
        else:
            sim.interrupt(victim.instance_id)
        results = pending.get(timeout=300)
        assert [r[0] for r in results] == [x * x for x in range(60)]
    finally:
        rc.close()
    assert cloud.describe_cluster(region, NAME).find(victim.instance_id) is None
    _assert_hosts_gone([victim.private_ip])


def test_watch_replaces_lost_workers_whose_engines_join_a_running_map(cluster):
    region = context.context_for(NAME).region
    before = cloud.describe_cluster(region, NAME)
    if len(before.workers) == 2:  # run alone: lose one first
        sim.interrupt(before.workers[-1].instance_id)
        before = cloud.describe_cluster(region, NAME)
    rc = _client()
    try:
        view = rc.load_balanced_view()
        view.retries = 2
        pending = view.map_async(_slow_square, range(240))
        watched = _cli("watch", NAME, "--once")
        assert watched.returncode == 0, watched.stderr
        assert "replaced" in watched.stdout
        results = pending.get(timeout=300)
    finally:
        rc.close()
    after = cloud.describe_cluster(region, NAME)
    assert len(after.workers) == 2
    new_hosts = {
        "ip-" + i.private_ip.replace(".", "-") for i in after.workers if i not in before.workers
    }
    assert new_hosts & {r[1] for r in results}, "replacement engines took part in the running map"


def test_ten_thousand_short_tasks_complete_with_bounded_client_memory(cluster, tmp_path):
    """Load: 10,002 (candidate, split) fits, every result journaled, none lost;
    the client's memory stays within a fixed budget (results go to the journal
    and the search's arrays; ipyparallel's per-message caches are purged)."""
    import psutil
    from sklearn.dummy import DummyClassifier

    from payload import DistributedSearch
    from payload.journal import verify_journal

    entry = state.load(NAME)["datasets"]["digits"]
    paths = [f"{entry['remote_dir']}/{f}" for f in entry["files"]]
    grid = {"random_state": list(range(10_002 // len(paths)))}
    me = psutil.Process()
    rc = _client()
    try:
        rss_before = me.memory_info().rss
        search = DistributedSearch(rc.load_balanced_view(), DummyClassifier(), grid, paths,
                                   journal=tmp_path / "journal.jsonl", return_train_score=False)
        search.run(timeout=900)
        rss_mb = (me.memory_info().rss - rss_before) / 2**20
    finally:
        rc.close()
    n = len(grid["random_state"]) * len(paths)
    assert search.progress == (n, n)
    assert not np.isnan(search.cv_results_["mean_test_score"]).any()
    check = verify_journal(tmp_path / "journal.jsonl")
    assert check.ok and check.n_results == n
    print(f"{n} tasks; client RSS grew {rss_mb:.0f} MiB")
    assert rss_mb < 512, f"the client grew {rss_mb:.0f} MiB for {n} tasks"


def test_down_removes_everything_and_every_host(cluster):
    """On AWS's timing: `down` waits through shutting-down (and says so), then the group
    is free of its instances."""
    region = context.context_for(NAME).region
    assert not sim.status().timings.is_instant
    ips = [i.private_ip for i in cloud.describe_cluster(region, NAME).instances if i.private_ip]
    heard: list[str] = []

    class Ears(Reporter):
        def note(self, text: str) -> None:
            heard.append(text)

    lifecycle.down(NAME, reporter=Ears())
    assert_nothing_left(ec2_client(region), NAME)
    _assert_hosts_gone(ips)
    assert any("(shutting-down) to terminate" in line for line in heard), heard


@pytest.mark.parametrize(
    ("stage", "rerun"),
    [("waiting for running", False), ("installing packages", True),
     ("starting controller", False)],
    ids=["after-launch", "during-ssh-or-install", "during-engines"],
)
def test_ctrl_c_during_up_then_down_leaves_nothing(sim_region, tmp_path, request, stage, rerun):
    """SIGINT when `up` reports the step (its plain progress lines, stderr being a
    pipe); a re-run converges, and `down` removes all of it."""
    import signal

    name = "ctrlc-" + request.node.callspec.id.split("-")[-1]
    cfg = tmp_path / "c.yaml"
    _keygen(tmp_path / "key")
    cfg.write_text(
        f"default: s\nclusters:\n  s:\n    region: sim\n    name: {name}\n"
        f"    key_path: {tmp_path}/key\n    cluster_size: 2\n    engines_per_node: 1\n"
    )
    env = dict(os.environ, PROVISION_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([str(EXE), "up", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Lines(proc.stdout)  # type: ignore[arg-type]
    try:
        output.wait_for(f": {stage}", timeout=300)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = output.text(timeout=10)
    assert proc.returncode == 130, text
    assert text.splitlines()[-1].startswith(HINT), text
    region = sim.region()
    if rerun:
        again = subprocess.run([str(EXE), "up", "--config", str(cfg)], env=env,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "2 nodes, 2 engines registered" in again.stdout
        assert len(cloud.describe_cluster(region, name).alive) == 2
    ips = [i.private_ip for i in cloud.describe_cluster(region, name).instances if i.private_ip]
    down = subprocess.run([str(EXE), "down", name, "--yes", "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(ec2_client(region), name)
    _assert_hosts_gone(ips)
