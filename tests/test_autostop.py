"""Autostop, max_hours and budget without a cluster: durations, settings, the
agent's decision (a pure function), what it counts as work and as a client, the
launch's shutdown behaviour, and how status and list tell a cluster it stopped."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from click.testing import CliRunner
from test_ec2 import base, client, region, request  # noqa: F401 - fixtures

from provision import cloud, query
from provision.cli import limits as cli_limits
from provision.cli.app import main
from provision.cloud.common import MASTER, WORKER, ClusterInfo, InstanceInfo, Region
from provision.durations import parse_duration, show_duration
from provision.nodes.autostop_agent import BUDGET, IDLE, MAX_HOURS, Limits, busy, clients, decide
from provision.schema import ClusterConfig

# --- durations and settings ----------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("40s", 40), ("30m", 1800), ("1.5h", 5400), ("30", 1800), (2, 120), (" 90S ", 90),
    (".5m", 30),
])
def test_durations_read_as_people_type_them_and_a_bare_number_is_minutes(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "0", "0s", "-5m", "5d", "1h30m", True])
def test_a_duration_that_is_not_one_or_is_zero_is_refused(text):
    with pytest.raises(ValueError, match="duration like 30m|longer than zero"):
        parse_duration(text)


def test_autostop_is_kept_in_one_spelling_so_the_saved_record_reads_back_the_same():
    cfg = ClusterConfig(autostop=30, max_hours=0.02, budget=1.5)
    assert (cfg.autostop, cfg.autostop_s) == ("30m", 1800)
    again = ClusterConfig.model_validate(cfg.model_dump(mode="json"))
    assert (again.autostop, again.autostop_s, again.max_hours, again.budget) == (
        "30m", 1800, 0.02, 1.5)
    assert [show_duration(s) for s in (40, 5400, 7200, 1.5)] == ["40s", "90m", "2h", "1.5s"]


CONFIG = """default: t
clusters:
  t:
    region: us-east-1
    name: c1
    key_path: {key}
{extra}"""


@pytest.fixture
def config_file(tmp_path):
    key = tmp_path / "id_ed25519"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {key}")

    def write(extra: str = "") -> str:
        path = tmp_path / "cluster.yaml"
        path.write_text(CONFIG.format(key=key, extra=extra))
        return str(path)
    return write


@pytest.mark.parametrize(("flags", "extra", "named"), [
    (["--autostop", "soon"], "", "--autostop"),
    (["--autostop", "0"], "", "--autostop"),
    (["--max-hours", "0"], "", "--max-hours"),
    (["--max-hours", "-1"], "", "--max-hours"),
    ([], "    autostop: later\n", "autostop"),
    ([], "    max_hours: 0\n", "max_hours"),
    ([], "    budget: -2\n", "budget"),
    ([], "    budget: lots\n", "budget"),
])
def test_bad_limits_exit_2_naming_the_field_before_anything_is_asked(
        config_file, monkeypatch, tmp_path, flags, extra, named):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(main, ["up", "-c", config_file(extra), "--dry-run", *flags])
    assert result.exit_code == 2, result.output
    assert named in result.output and "error:" in result.output, result.output


def test_the_autostop_command_refuses_nothing_to_do_and_both_a_duration_and_cancel(tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    nothing = CliRunner().invoke(main, ["autostop", "c1"])
    assert nothing.exit_code == 2 and "DURATION" in nothing.output, nothing.output
    both = CliRunner().invoke(main, ["autostop", "c1", "30m", "--cancel"])
    assert both.exit_code == 2 and "--cancel" in both.output, both.output


# --- the agent's decision --------------------------------------------------------------

T0 = 1_000_000.0


def test_an_idle_cluster_stops_after_the_idle_period_and_not_before():
    limits = Limits(idle_s=60, set_at=T0, launched_at=T0 - 300)
    assert decide(limits, last_active=T0, now=T0 + 59) is None
    assert decide(limits, last_active=T0, now=T0 + 60) == IDLE
    assert decide(limits, last_active=T0 + 30, now=T0 + 60) is None  # work seen at +30
    assert decide(limits, last_active=T0 + 30, now=T0 + 90) == IDLE


def test_a_new_setting_restarts_the_idle_clock():
    limits = Limits(idle_s=60, set_at=T0 + 100)
    assert decide(limits, last_active=T0, now=T0 + 150) is None
    assert decide(limits, last_active=T0, now=T0 + 160) == IDLE


def test_max_hours_stops_a_busy_cluster_whatever_the_idle_clock_says():
    limits = Limits(idle_s=60, max_hours=0.5, set_at=T0, launched_at=T0)
    assert decide(limits, last_active=T0 + 1799, now=T0 + 1799) is None
    assert decide(limits, last_active=T0 + 1800, now=T0 + 1800) == MAX_HOURS


def test_the_budget_is_reached_from_the_spend_handed_over_plus_the_hourly_rate_since():
    limits = Limits(budget=1.0, hourly=0.5, spent=0.25, set_at=T0, launched_at=T0 - 1800)
    assert decide(limits, last_active=T0 + 5399, now=T0 + 5399) is None  # 0.25 + 0.7497
    assert decide(limits, last_active=T0 + 5400, now=T0 + 5400) == BUDGET  # 0.25 + 0.75
    assert decide(Limits(budget=1.0), last_active=T0, now=T0 + 10**6) is None  # no rate: no spend


def test_without_limits_the_agent_never_stops_the_cluster():
    assert decide(Limits(set_at=T0), last_active=T0, now=T0 + 10**7) is None
    assert Limits.from_json({"idle_s": 40, "max_hours": None, "workers": ["10.0.0.5"]}) == Limits(
        idle_s=40)


def test_work_is_a_queued_unassigned_or_running_task_or_one_completed_since_the_last_look():
    quiet = {"unassigned": 0, 0: {"queue": 0, "completed": 3, "tasks": 0}}
    assert busy(quiet, None) == (False, 3)
    assert busy(quiet, 3) == (False, 3)
    assert busy(quiet, 2) == (True, 3)  # one ran entirely between two looks
    assert busy({"unassigned": 2, 0: {"queue": 0, "completed": 0, "tasks": 0}}, 0)[0]
    assert busy({"unassigned": 0, 0: {"queue": 0, "completed": 0, "tasks": 1}}, 0)[0]
    assert busy({"unassigned": 0, 0: {"queue": 1, "completed": 0, "tasks": 0}}, 0)[0]


def _sock(local: str, remote: str, inode: int, state: str = "01") -> tuple[str, str, str, int]:
    def hexed(addr: str) -> str:
        ip, port = addr.split(":")
        return "".join(f"{int(p):02X}" for p in reversed(ip.split("."))) + f":{int(port):04X}"
    return hexed(local), hexed(remote), state, inode


def test_a_client_is_a_connection_to_a_client_port_from_neither_the_controller_nor_the_agent():
    ports = {5000, 5001}
    me = 42
    rows = [
        _sock("10.0.0.4:5000", "10.0.0.4:40000", 1), _sock("10.0.0.4:40000", "10.0.0.4:5000", 2),
        _sock("10.0.0.4:5001", "10.0.0.4:40001", 3), _sock("10.0.0.4:40001", "10.0.0.4:5001", 4),
        _sock("10.0.0.4:5000", "10.0.0.4:40002", 5), _sock("10.0.0.4:40002", "10.0.0.4:5000", 6),
        _sock("10.0.0.4:6000", "10.0.0.5:40003", 7),  # an engine on an engine port
        _sock("10.0.0.4:5000", "10.0.0.4:40004", 8, state="06"),  # TIME_WAIT: gone
    ]
    owners = {2: "77 /venv/bin/python /venv/bin/ipcontroller --ip=10.0.0.4",
              4: f"{me} /venv/bin/python /srv/provision/autostop/agent.py /srv/provision"}
    assert clients(ports, rows, owners, me) == 1  # 6: a process we cannot look into (sshd)
    owners[6] = "99 sshd: ubuntu@notty"  # a laptop's tunnel
    assert clients(ports, rows, owners, me) == 1
    remote = [_sock("10.0.0.4:5001", "10.0.0.9:50000", 9)]  # a client on another host
    assert clients(ports, rows + remote, owners, me) == 2
    owners[6] = "78 /venv/bin/python /venv/bin/ipcontroller --ip=10.0.0.4"  # its scheduler
    assert clients(ports, rows, owners, me) == 0


# --- the cloud's side --------------------------------------------------------------------


def test_nodes_are_launched_to_terminate_when_their_os_shuts_down(region, base, client):  # noqa: F811
    [iid] = cloud.launch(region, request(base, role=MASTER))
    got = client.describe_instance_attribute(InstanceId=iid,
                                             Attribute="instanceInitiatedShutdownBehavior")
    assert got["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"


START = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _node(role: str, state: str, reason: str = "", minutes: int = 0) -> InstanceInfo:
    return InstanceInfo(
        instance_id=f"i-{role}{minutes}", role=role, instance_type="c5.large", state=state,
        zone="us-east-1a", lifecycle="on-demand", private_ip=None, public_ip=None,
        launch_time=START + dt.timedelta(minutes=minutes),
        state_reason=reason)


def test_a_cluster_whose_latest_master_shut_itself_down_is_told_stopped_by_autostop():
    shut = "Client.InstanceInitiatedShutdown"
    user = "Client.UserInitiatedShutdown"

    def info(*nodes: InstanceInfo) -> ClusterInfo:
        return ClusterInfo("c1", Region("us-east-1"), list(nodes))

    assert query.stopped_by_autostop(info(_node(MASTER, "terminated", shut),
                                          _node(WORKER, "terminated", shut)))
    assert not query.stopped_by_autostop(info(_node(MASTER, "terminated", user)))
    assert not query.stopped_by_autostop(info(_node(MASTER, "running")))
    # an earlier cluster of the same name stopped itself; this one was terminated by hand
    assert not query.stopped_by_autostop(info(_node(MASTER, "terminated", shut, 0),
                                              _node(MASTER, "terminated", user, 9)))


def test_status_says_the_limits_how_long_idle_and_the_spend_against_the_budget():
    line = cli_limits.describe({"autostop": "30m", "max_hours": 8.0, "budget": 5.0},
                               {"idle_s": 150, "controller": "ok"}, 0.1234)
    assert line == ("autostop after 30m idle (idle 2.5 min); max 8h of life; "
                    "budget $5.00 (spent $0.1234)")
    assert "runs until `provision down`" in cli_limits.describe({})
    tiny = cli_limits.describe({"budget": 0.0025}, None, 0.001)
    assert tiny == "budget $0.0025 (spent $0.0010)"


def test_every_worker_accepts_the_agents_key_before_the_agent_starts(monkeypatch):
    """A limit already reached stops the workers at the agent's first look: a worker
    authorised after that would be left running, and billing."""
    from types import SimpleNamespace

    from provision import autostop as limits_api

    calls: list[str] = []
    monkeypatch.setattr(limits_api, "wanted", lambda ctx: True)
    monkeypatch.setattr(limits_api, "limits", lambda ctx, info, hourly: {})
    monkeypatch.setattr(limits_api.state, "update", lambda *a, **k: None)
    monkeypatch.setattr(limits_api.agent, "ensure_key",
                        lambda ep, root: calls.append(f"key on {ep}") or "PUB")
    monkeypatch.setattr(limits_api.agent, "authorize",
                        lambda ep, key: calls.append(f"{key} on {ep}"))
    monkeypatch.setattr(limits_api.agent, "install",
                        lambda ep, root, config: calls.append(f"agent on {ep}"))
    master = SimpleNamespace(label="master")
    workers = [SimpleNamespace(label=f"node00{i}") for i in (1, 2)]
    ctx = SimpleNamespace(name="c", config=SimpleNamespace(remote_root="/srv/p"),
                          endpoint=lambda inst, via=None: inst.label)
    limits_api.apply(ctx, SimpleNamespace(master=master, workers=workers), 0.1)
    assert calls[0] == "key on master" and calls[-1] == "agent on master", calls
    assert sorted(calls[1:-1]) == ["PUB on node001", "PUB on node002"], calls
