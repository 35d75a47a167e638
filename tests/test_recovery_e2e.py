"""What a search survives on the simulated region: the laptop's link cut mid-search,
and the (spot) master interrupted mid-search, then replaced by `up`.

One small cluster serves the module (a spot master and one worker, one engine
each); tests run in file order, the last one replaces the master. Every test
drives `provision run` as a user does, from a plain subprocess, and waits for
what it needs (results in the journal, the tunnel's log lines), never for a delay.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import sim_cluster_env
from interrupts import EXE
from waits import Lines, wait_for

from provision import cloud, context, data, lifecycle, sim
from provision.cloud.common import InstanceInfo
from provision.config import load_config
from provision.controller import recorded_master

pytestmark = pytest.mark.e2e
NAME = "rec"
PAIRS = 12 * 3  # 4 C x 3 gamma candidates, 3 splits


def _env() -> dict[str, str]:
    """The test's environment (its state dir), with wide log lines: a fragment a
    test waits for is never wrapped across two lines."""
    return {**os.environ, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def env(sim_region, tmp_path_factory):
    with sim_cluster_env(tmp_path_factory.mktemp("rec"), NAME, 2, spot_master=True) as env:
        yield env


@pytest.fixture(scope="module")
def cluster(env):
    result = lifecycle.up(load_config(env["config"]))
    data.put_data(context.context_for(NAME), "digits", n_splits=3)
    return result


def _search(out: Path, *extra: str) -> list[str]:
    return [str(EXE), "run", NAME, "gridsearch", "--data", "digits", "--model",
            "sklearn.svm.SVC", "--param", "C=logspace(-1,2,4)", "--param",
            "gamma=logspace(-4,-2,3)", "--batch-size", "1", "--out", str(out), *extra]


def _start(args: list[str]) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stderr is not None
    return proc, Lines(proc.stderr)


def _journaled(journal: Path) -> int:
    return journal.read_text().count('"type":"result"') if journal.exists() else 0


def _mid_search(proc: subprocess.Popen[str], err: Lines, journal: Path) -> None:
    wait_for(lambda: _journaled(journal) >= 3 or proc.poll() is not None, 120,
             "3 results in the journal")
    assert proc.poll() is None and _journaled(journal) < PAIRS, (
        f"the search ended early ({proc.poll()}): {err.text(5)}"
    )


def _every_pair_once(journal: Path, sessions: int) -> None:
    from payload.journal import verify_journal

    check = verify_journal(journal)
    assert check.ok, check  # no pair computed twice, none submitted again once done
    assert check.n_sessions == sessions
    assert check.n_results == PAIRS


def _master() -> InstanceInfo:
    master = cloud.describe_cluster(context.context_for(NAME).region, NAME).master
    assert master is not None
    return master


def test_a_cut_link_reconnects_by_itself_and_results_finished_meanwhile_come_from_the_hub(
    cluster, tmp_path
):
    journal = tmp_path / "journal.jsonl"
    proc, err = _start(_search(tmp_path))
    _mid_search(proc, err, journal)
    master = _master()
    sim.cut(master.instance_id)
    try:
        err.wait_for("reconnecting", 60)  # the tunnel's probe went unanswered
    finally:
        sim.heal(master.instance_id)
    err.wait_for("reconnected", 60)
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, err.text(5)
    assert out.startswith("Rank 1: validation: "), out
    fetched = re.search(r"fetched (\d+) result", err.text(5))
    assert fetched and int(fetched[1]) > 0, err.text()  # finished during the cut
    _every_pair_once(journal, sessions=1)


def test_the_master_goes_mid_search_then_up_replaces_it_and_the_run_resumes(
    cluster, env, tmp_path
):
    region = context.context_for(NAME).region
    before = cloud.describe_cluster(region, NAME)
    old, (worker,) = before.master, before.workers
    assert old is not None
    journal = tmp_path / "journal.jsonl"
    proc, err = _start(_search(tmp_path, "--timeout", "15"))
    _mid_search(proc, err, journal)
    sim.interrupt(old.instance_id)
    # The link to the master is silent for good, as a cut longer than --timeout:
    # one line, exit 1, the journal kept for a resume.
    assert proc.wait(timeout=120) == 1, err.text(5)
    text = err.text(5)
    assert "Traceback" not in text
    assert "search not finished within 15" in text and "resume" in text, text
    status = subprocess.run([str(EXE), "status", NAME], capture_output=True, text=True,
                            env=_env(), timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"cluster {NAME} has no controller" in status.stdout, status.stdout

    again = lifecycle.up(load_config(env["config"]))
    new = again.cluster.master
    assert new is not None and new.instance_id != old.instance_id
    assert new.name == old.name and new.role == old.role
    assert [w.instance_id for w in again.cluster.workers] == [worker.instance_id]
    assert again.engines == 2  # the surviving worker's engine joined the new controller
    assert recorded_master(NAME) == new.instance_id  # the laptop's files are the new hub's

    rerun = subprocess.run(_search(tmp_path), capture_output=True, text=True, env=_env(),
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("Rank 1: validation: ")
    _every_pair_once(journal, sessions=2)
