"""What a search survives on the simulated region: the laptop's link cut mid-search,
and the (spot) master interrupted mid-search, then replaced by `up`.

A cut longer than the run's --timeout ends the run with one line and an intact
journal; once healed, the same run resumes and completes. A master gone for good
ends the run at once (EC2 says so), not at its --timeout.

One small cluster serves the module (a spot master and one worker, one engine
each); tests run in file order, the last one replaces the master. Every test
drives `provision run` as a user does, from a plain subprocess, and waits for
what it needs (results in the journal, the tunnel's log lines), never for a delay.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import sim_cluster_env
from interrupts import EXE
from waits import Lines, wait_for

from payload.journal import verify_journal
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


def _equals_sklearn(out: Path) -> None:
    """The search's cv_results equal GridSearchCV's on the splits put-data made
    (its default: ShuffleSplit, test_size 0.25, seed 42)."""
    from sklearn import model_selection as ms
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    grid = {"C": np.logspace(-1, 2, 4), "gamma": np.logspace(-4, -2, 3)}
    ref = ms.GridSearchCV(SVC(), grid, cv=ms.ShuffleSplit(3, test_size=0.25, random_state=42),
                          n_jobs=2).fit(X, y)
    ours = json.loads((out / "cv_results.json").read_text())
    for key in ("mean_test_score", *(f"split{i}_test_score" for i in range(3))):
        np.testing.assert_array_equal(ours[key], ref.cv_results_[key], err_msg=key)


def test_a_cut_longer_than_the_timeout_ends_with_one_line_then_the_same_run_resumes(
    cluster, tmp_path
):
    journal = tmp_path / "journal.jsonl"
    proc, err = _start(_search(tmp_path, "--timeout", "20"))
    _mid_search(proc, err, journal)
    master = _master()
    sim.cut(master.instance_id)
    cut_at = time.monotonic()
    try:
        # 20 s after the search's start plus a bounded close: not hanging on the link.
        status = proc.wait(timeout=60)
        ended_after = time.monotonic() - cut_at
        text = err.text(5)
        assert status == 1, text
        assert "Traceback" not in text
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, text
        assert "search not finished within 20" in errors[0], text
        assert f"re-run to resume from {journal}" in errors[0], text
        assert "(the master has not answered for " in errors[0], text
        assert "done in" not in text, text  # the bar stopped, it did not finish
        assert ended_after < 35, f"{ended_after:.0f} s after the cut:\n{text}"
        lines = journal.read_bytes().split(b"\n")
        assert lines[-1] == b"", "the journal's last line is cut short"
        for line in lines[:-1]:
            json.loads(line)  # every line whole
        check = verify_journal(journal)
        assert check.ok and check.n_sessions == 1, check
        assert 3 <= check.n_results < PAIRS, check
    finally:
        sim.heal(master.instance_id)
    rerun = subprocess.run(_search(tmp_path), capture_output=True, text=True, env=_env(),
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("Rank 1: validation: ")
    _every_pair_once(journal, sessions=2)
    _equals_sklearn(tmp_path)


def test_the_master_goes_mid_search_then_up_replaces_it_and_the_run_resumes(
    cluster, env, tmp_path
):
    region = context.context_for(NAME).region
    before = cloud.describe_cluster(region, NAME)
    old, (worker,) = before.master, before.workers
    assert old is not None
    journal = tmp_path / "journal.jsonl"
    proc, err = _start(_search(tmp_path, "--timeout", "300"))
    _mid_search(proc, err, journal)
    sim.interrupt(old.instance_id)
    gone_at = time.monotonic()
    # The tunnel cannot reconnect and EC2 says the master is terminated: one line,
    # exit 1, long before --timeout; the journal kept for a resume.
    assert proc.wait(timeout=120) == 1, err.text(5)
    ended_after = time.monotonic() - gone_at
    text = err.text(5)
    assert "Traceback" not in text
    (line,) = [line for line in text.splitlines() if line.startswith("error:")]
    assert (f"{old.label} ({old.instance_id}), is gone (terminated, "
            "Server.SpotInstanceTermination)") in line, text
    assert f"run `provision up {NAME}` to replace it" in line, text
    assert ended_after < 60, f"ended {ended_after:.0f} s after the master went:\n{text}"
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
