"""A cluster stops itself on the simulated region, as a user sets it up: idle for
its autostop period, past its max_hours while busy, or over its budget; status
shows the setting, the minutes idle and the spend; status and list flag a
stopped cluster from the cloud's record; down removes what it leaves.

Three 1-node clusters (a spot master, so there is a spot request to leave),
brought up at once by three `provision up` processes (the busy one is given a
10-minute task as soon as it is up). The busy and the budget one are stopped on
demand (`provision autostop --max-hours/--budget`) while the idle one counts
down its 30 s, so the waits overlap.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from typing import Any

import pytest
from interrupts import EXE
from oracle import assert_nothing_left, ec2_client, leftovers
from simhelp import host_of
from waits import wait_for

from provision import autostop, cloud, lifecycle
from provision.context import context_for
from provision.nodes.autostop_agent import busy

pytestmark = pytest.mark.e2e
IDLE, BUSY, BUDGET = "as-idle", "as-busy", "as-budget"
IDLE_S, BUSY_IDLE_S = 30, 20  # autostop periods
POLL_S = 5  # the agent's (provision.nodes.autostop_agent.POLL_S)
MARGIN_S = 45  # after the idle period: a poll, the poweroff, the instance's shutting-down
CONFIG = """default: idle
clusters:
  base:
    region: sim
    key_path: {root}/key
    cluster_size: 1
    spot_bid: 0.10
    spot_master: true
    engines_per_node: 1
    ssh_timeout: 120
  idle: {{extends: base, name: {idle}}}
  busy: {{extends: base, name: {busy}, autostop: {busy_idle}s}}
  budget: {{extends: base, name: {budget}, budget: 5, cluster_size: 2}}
"""
seen: dict[str, Any] = {}  # what one test saw and a later one checks


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=dict(os.environ), start_new_session=True)


@pytest.fixture(scope="module")
def region(sim_region, tmp_path_factory):
    root = tmp_path_factory.mktemp("autostop")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVISION_STATE_DIR", str(root / "state"))
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "key")],
                       check=True)
        cfg = root / "cluster.yaml"
        cfg.write_text(CONFIG.format(root=root, idle=IDLE, busy=BUSY, budget=BUDGET,
                                     busy_idle=BUSY_IDLE_S))
        ups = {
            template: subprocess.Popen(
                [str(EXE), "up", "-c", str(cfg), "-t", template, "--yes", *flags],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                stdin=subprocess.DEVNULL, start_new_session=True)
            for template, flags in (("busy", []), ("budget", []),
                                    ("idle", ["--autostop", f"{IDLE_S}s", "--max-hours", "1"]))
        }
        try:
            for template, proc in ups.items():
                out, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, f"up -t {template}:\n{out}\n{err}"
                if template == "busy":  # work, before its idle period runs out
                    _submit_long_task(BUSY)
            yield sim_region
        finally:
            for proc in ups.values():
                if proc.poll() is None:
                    proc.kill()
            for name in (IDLE, BUSY, BUDGET):
                with contextlib.suppress(Exception):  # a test took it down already
                    lifecycle.down(name)


def _submit_long_task(name: str) -> None:
    """A task that runs for 10 minutes; then the client goes, as a closed laptop's does."""
    rc = lifecycle.connect(name, timeout=60)
    try:
        rc.load_balanced_view().apply_async(time.sleep, 600).wait_for_send(30)
        wait_for(lambda: busy(rc.queue_status(), None)[0], 30, "the hub to hold the task")
    finally:
        rc.close()


def _agent(name: str) -> dict[str, Any] | None:
    """The agent's state file, as `status` reads it (in-process: polled)."""
    ctx = context_for(name)
    return autostop.agent_state(ctx, cloud.describe_cluster(ctx.region, name))


def _states(ec2: Any, name: str) -> list[str]:
    found = ec2.describe_instances(Filters=[{"Name": "tag:provision:cluster", "Values": [name]}])
    return [i["State"]["Name"] for r in found["Reservations"] for i in r["Instances"]]


def _terminated(ec2: Any, name: str) -> bool:
    states = _states(ec2, name)
    return bool(states) and all(s == "terminated" for s in states)


def test_status_shows_the_limits_the_minutes_idle_and_the_spend_against_the_budget(region):
    agent = _agent(IDLE)
    assert agent is not None and agent["stopping"] is None, agent
    assert agent["idle_s"] >= 0 and agent["clients"] == 0 and not agent["busy"], agent
    assert (agent["limits"]["idle_s"], agent["limits"]["max_hours"]) == (IDLE_S, 1.0)
    seen["idle_set_at"] = agent["limits"]["set_at"]
    shown = _cli("status", IDLE).stdout
    assert f"autostop after {IDLE_S}s idle (idle " in shown and "max 1h of life" in shown, shown
    spend = _cli("status", BUDGET).stdout
    assert "budget $5.00 (spent $0.0" in spend and "autostop after" not in spend, spend


def test_a_busy_cluster_outlives_its_idle_period_and_max_hours_then_stops_it(region):
    def busy_past_idle() -> dict[str, Any] | None:
        agent = _agent(BUSY) or {}
        past = agent.get("updated_at", 0) - agent.get("limits", {}).get("set_at", 1e12)
        return agent if agent.get("busy") and past >= BUSY_IDLE_S + POLL_S else None

    agent = wait_for(busy_past_idle, 60, f"{BUSY}'s agent to see the task past its idle period",
                     interval=1)
    assert agent["stopping"] is None and agent["idle_s"] < BUSY_IDLE_S, agent
    ec2 = ec2_client(region)
    assert _states(ec2, BUSY).count("running") == 1
    ran = _cli("autostop", BUSY, "--max-hours", "0.001")
    assert ran.returncode == 0 and "max 3.6s of life" in ran.stdout, ran.stdout + ran.stderr
    wait_for(lambda: _terminated(ec2, BUSY), 60, f"{BUSY} to stop at its max_hours")


def test_a_cluster_over_its_budget_stops_itself(region):
    ran = _cli("autostop", BUDGET, "--budget", "0.0001")
    assert ran.returncode == 0 and "budget $0.0001" in ran.stdout, ran.stdout + ran.stderr
    wait_for(lambda: _terminated(ec2_client(region), BUDGET), 60, f"{BUDGET} to stop at its budget")


def test_an_idle_cluster_stops_itself_within_its_idle_period_and_leaves_no_host(region):
    ec2 = ec2_client(region)
    ids = [i["InstanceId"] for r in ec2.describe_instances(
        Filters=[{"Name": "tag:provision:cluster", "Values": [IDLE]}])["Reservations"]
        for i in r["Instances"]]
    deadline = seen["idle_set_at"] + IDLE_S + MARGIN_S
    wait_for(lambda: _terminated(ec2, IDLE), deadline - time.time(),
             f"{IDLE} to stop itself within {IDLE_S} s idle + {MARGIN_S} s")
    assert time.time() - seen["idle_set_at"] >= IDLE_S  # not before its time
    wait_for(lambda: all(host_of(i) is None for i in ids), 30, "its host to go")


def test_status_and_list_flag_a_stopped_cluster_and_down_cleans_up_what_it_left(region):
    advice = f"{IDLE}: stopped by autostop, run `provision down {IDLE}` to clean up"
    assert advice in _cli("status", IDLE).stdout
    listed = _cli("list")
    assert advice in listed.stdout and "stopped by autostop" in listed.stdout, listed.stdout
    ec2 = ec2_client(region)
    for name in (IDLE, BUSY, BUDGET):
        left = leftovers(ec2, name)
        assert "security_groups" in left and "instances" not in left, (name, left)
    down = _cli("down", IDLE, "--yes")
    assert down.returncode == 0 and "1 security_groups" in down.stdout, down.stdout + down.stderr
    for name in (BUSY, BUDGET):  # the same code, without a process start each
        lifecycle.down(name)
    for name in (IDLE, BUSY, BUDGET):
        assert_nothing_left(ec2, name)
