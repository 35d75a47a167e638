"""The day-to-day commands through Click, against moto: ssh's options and node
aliases, exec's per-node outcome and exit status, put/get trees and globs,
removenode by name or newest, the plan and confirmation before `up`, and
spothistory's window and plot. What needs real SSH hosts is in
test_commands_e2e.py."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
import test_cli
from test_cli import _launch_unit_cluster, invoke, nothing_created

from provision import cloud, files, query, removal, state
from provision.cli import nodes as nodes_cli
from provision.cloud.common import ClusterInfo, InstanceInfo, Region
from provision.errors import BadInput, ProvisionError
from provision.nodes import remote

aws, cfg_file = test_cli.aws, test_cli.cfg_file  # moto, and a cluster file of 1 + 2 spot


# --- ssh: options, `--`, aliases -----------------------------------------------------


@pytest.fixture
def ssh_calls(monkeypatch, tmp_path):
    """`provision ssh` with the cluster lookup and ssh(1) itself recorded, not run."""
    calls: list[dict[str, object]] = []
    ep = remote.Endpoint("master", "198.51.100.1", "ubuntu", tmp_path / "key",
                         known_hosts=tmp_path / "known_hosts")

    def endpoint(config, node):
        calls.append({"node": node})
        return ep

    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/agent.sock")
    monkeypatch.setattr(nodes_cli, "settings", lambda *a, **k: None)
    monkeypatch.setattr(nodes_cli.files, "node_endpoint", endpoint)
    monkeypatch.setattr(nodes_cli.subprocess, "call",
                        lambda argv: calls[-1].update(argv=argv) or 0)
    return calls


@pytest.mark.parametrize(
    ("args", "node", "user", "agent", "command"),
    [
        (["c1", "-A"], None, "ubuntu", True, None),
        (["c1", "master", "-A"], "master", "ubuntu", True, None),
        (["c1", "-u", "alice", "node001"], "node001", "alice", False, None),
        (["c1", "--", "ls", "-la"], None, "ubuntu", False, "ls -la"),
        (["c1", "2", "-A", "--", "df", "-h", "/srv"], "2", "ubuntu", True, "df -h /srv"),
        (["c1", "node001", "hostname"], "node001", "ubuntu", False, "hostname"),
    ],
)
def test_ssh_takes_its_options_anywhere_and_the_command_after_dash_dash(
    ssh_calls, args, node, user, agent, command
):
    result = invoke("ssh", *args)
    assert result.exit_code == 0, result.output
    call = ssh_calls[-1]
    argv = call["argv"]
    assert call["node"] == node
    assert argv[argv.index("-l") + 1] == user
    # The socket itself: ssh drops SSH_AUTH_SOCK under IdentityAgent=none, and a
    # plain -A would win over (and so forward nothing but) that.
    assert ("ForwardAgent=/run/agent.sock" in argv) is agent and "-A" not in argv
    if command is None:
        assert argv[-1] == "198.51.100.1" and "-T" not in argv
    else:
        assert argv[-2:] == ["198.51.100.1", command]


def test_ssh_forwards_no_agent_unless_asked_and_says_when_there_is_none(ssh_calls, monkeypatch):
    invoke("ssh", "c1", "node001")
    argv = ssh_calls[-1]["argv"]
    assert "IdentityAgent=none" in argv and not any("ForwardAgent" in a for a in argv)
    monkeypatch.delenv("SSH_AUTH_SOCK")
    result = invoke("ssh", "c1", "-A")
    assert result.exit_code == 2 and "SSH_AUTH_SOCK is not set" in result.output


def test_nodes_are_found_by_alias_index_name_or_address(aws, cfg_file):
    ctx = _launch_unit_cluster(cfg_file)
    info = cloud.describe_cluster(ctx.region, "unit")
    assert files.find_node(info, "0") is info.master
    assert files.find_node(info, "master") is info.master
    assert files.find_node(info, "1").name == "node001"
    assert files.find_node(info, "002").name == "node002"
    assert files.find_node(info, info.workers[1].private_ip).name == "node002"
    with pytest.raises(BadInput, match=r"NODE: no node '7' .*have: master, node001, node002"):
        files.find_node(info, "7")


# --- exec -------------------------------------------------------------------------------


def test_exec_prints_each_nodes_output_and_fails_when_one_node_fails(monkeypatch):
    seen = []

    def run_everywhere(config, command, node, timeout):
        seen.append(command)
        return {"master": files.Ran(0, "m-out\n", ""), "node001": files.Ran(3, "", "boom\n"),
                "node002": OSError("no route")}

    monkeypatch.setattr(nodes_cli, "settings", lambda *a, **k: None)
    monkeypatch.setattr(nodes_cli.files, "run_everywhere", run_everywhere)
    result = invoke("exec", "c1", "--", "uname", "-a")
    assert seen == ["uname -a"]
    assert result.exit_code == 1
    assert "master: exit 0" in result.output and "  m-out" in result.output
    assert "node001: exit 3" in result.output and "boom" in result.output
    assert "node002: not run: no route" in result.output
    assert "2 of 3 nodes failed: node001, node002" in result.output


def test_exec_exits_zero_when_every_node_succeeds_and_2_without_a_command(monkeypatch):
    monkeypatch.setattr(nodes_cli, "settings", lambda *a, **k: None)
    ok = files.Ran(0, "", "")
    monkeypatch.setattr(nodes_cli.files, "run_everywhere",
                        lambda *a: {"master": ok, "node001": ok})
    assert invoke("exec", "c1", "--", "true").exit_code == 0
    missing = invoke("exec", "c1")
    assert missing.exit_code == 2 and "COMMAND" in missing.output


# --- put/get: trees and globs, over an SFTP stand-in on the local disk ---------------------


class LocalSFTP:
    """paramiko's SFTPClient calls `files` makes, on this machine's disk."""

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def put(self, local: str, target: str) -> None:
        Path(target).write_bytes(Path(local).read_bytes())

    def get(self, source: str, local: str) -> None:
        Path(local).write_bytes(Path(source).read_bytes())


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_tree_goes_there_and_back_byte_for_byte_with_its_modes(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.bin").write_bytes(bytes(range(256)) * 3)
    (src / "a" / "b" / "deep.txt").write_text("deep\n")
    (src / "a" / "run.sh").write_text("#!/bin/sh\n")
    (src / "a" / "run.sh").chmod(0o755)
    remote_root = tmp_path / "node"
    remote_root.mkdir()
    sftp = LocalSFTP()
    # Into an existing directory, as scp -r: node/src/...
    assert files._put_tree(sftp, src, str(remote_root / "src")) == 3
    back = tmp_path / "back"
    assert files._get_tree(sftp, str(remote_root / "src"), back, recursive=True) == 3
    assert _tree(back) == _tree(src)
    with pytest.raises(BadInput, match="use -r"):
        files._get_tree(sftp, str(remote_root / "src"), tmp_path / "no", recursive=False)


def test_globs_expand_locally_for_put_and_on_the_node_for_get(tmp_path, monkeypatch):
    for name in ("a.csv", "b.csv", "c.txt", ".hidden.csv"):
        (tmp_path / name).write_text(name)
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    assert [p.name for p in files.expand_local(["*.csv"], False)] == ["a.csv", "b.csv"]
    with pytest.raises(BadInput, match=r"LOCAL: \*\.json: no such file"):
        files.expand_local(["*.json"], False)
    with pytest.raises(BadInput, match="LOCAL: d is a directory"):
        files.expand_local(["d"], False)
    found = files.expand_remote(LocalSFTP(), f"{tmp_path}/*.csv")
    assert found == [f"{tmp_path}/a.csv", f"{tmp_path}/b.csv"]
    assert files.expand_remote(LocalSFTP(), "*.txt") == ["c.txt"]


def test_put_with_a_missing_local_file_exits_2_before_reaching_any_node(monkeypatch, tmp_path):
    monkeypatch.setattr(nodes_cli, "settings", lambda *a, **k: pytest.fail("looked up"))
    result = invoke("put", "c1", str(tmp_path / "nope*"), "/srv/x")
    assert result.exit_code == 2 and "no such file" in result.output


# --- removenode ---------------------------------------------------------------------------


def _inst(name: str, minutes: int, role: str = "worker") -> InstanceInfo:
    launched = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=minutes)
    return InstanceInfo(f"i-{name}", role, "c5.large", "running", "us-east-1a", "spot",
                        "10.0.0.1", None, launched, name=name)


def test_the_newest_workers_are_the_last_launched_whatever_their_names():
    info = ClusterInfo("c1", Region("us-east-1"), [
        _inst("master", 0, "master"), _inst("node001", 1), _inst("node002", 30),
        _inst("node003", 5),
    ])
    assert [i.name for i in removal.newest_workers(info, 2)] == ["node002", "node003"]
    with pytest.raises(BadInput, match="only 3 worker"):
        removal.newest_workers(info, 4)


@pytest.fixture
def no_engines(monkeypatch):
    """Workers on moto have no SSH: record which ones removenode stops."""
    stopped: list[str] = []
    monkeypatch.setattr(removal.engines, "stop_engines",
                        lambda ep, root: stopped.append(ep.name) or 1)
    return stopped


def test_removenode_n_2_terminates_both_workers_and_keeps_the_master(aws, cfg_file, no_engines):
    ctx = _launch_unit_cluster(cfg_file)
    result = invoke("removenode", "unit", "-n", "2", "--config", str(cfg_file))
    assert result.exit_code == 0, result.output
    assert sorted(no_engines) == ["node001", "node002"]
    assert result.output.count("removed node00") == 2
    info = cloud.describe_cluster(ctx.region, "unit")
    assert info.master is not None and info.workers == []


def test_removenode_takes_several_names_and_refuses_the_master_or_both_forms(
    aws, cfg_file, no_engines
):
    _launch_unit_cluster(cfg_file)
    for args, message in ((["0"], "is the master"), (["node001", "-n", "1"], "or give -n"),
                          ([], "or give -n"), (["node009"], "no node 'node009'")):
        result = invoke("removenode", "unit", *args, "--config", str(cfg_file))
        assert result.exit_code == 2 and message in result.output, result.output
    assert no_engines == []
    result = invoke("removenode", "unit", "1", "node002", "--config", str(cfg_file))
    assert result.exit_code == 0 and sorted(no_engines) == ["node001", "node002"]


def test_removenode_leaves_the_autostop_agent_only_the_workers_that_remain(
    aws, cfg_file, no_engines, monkeypatch
):
    """The agent powers off the workers its config lists: a removed one must leave
    it (its address may be reused), spend so far is carried over at the old rate."""
    ctx = _launch_unit_cluster(cfg_file)
    before = cloud.describe_cluster(ctx.region, "unit")
    config = {"idle_s": 600, "hourly": 3.6, "spent": 1.0, "set_at": 0.0, "user": "ubuntu",
              "workers": [i.private_ip for i in before.workers]}
    written: list[dict] = []
    monkeypatch.setattr(removal.autostop.agent, "read_config", lambda ep, root: dict(config))
    monkeypatch.setattr(removal.autostop.agent, "write_config",
                        lambda ep, root, doc: written.append(doc))
    state.update("unit", autostop_agent=True)
    monkeypatch.setattr(removal.autostop.time, "time", lambda: 3600.0)
    result = invoke("removenode", "unit", "node001", "--config", str(cfg_file))
    assert result.exit_code == 0, result.output
    (doc,) = written
    (kept,) = [i for i in before.workers if i.name != "node001"]
    assert doc["workers"] == [kept.private_ip]
    assert doc["spent"] == 1.0 + 3.6 and doc["set_at"] == 3600.0  # an hour at the old rate
    after = cloud.describe_cluster(ctx.region, "unit")
    assert doc["hourly"] == query.hourly_total(ctx.region, after, ctx.config) > 0
    assert doc["idle_s"] == 600  # the limits themselves are kept


# --- up: the plan, and confirm_above --------------------------------------------------------


def _with(cfg_file: Path, line: str) -> Path:
    cfg_file.write_text(cfg_file.read_text() + f"    {line}\n")
    return cfg_file


def test_up_above_confirm_above_without_a_terminal_refuses_and_creates_nothing(aws, cfg_file):
    result = invoke("up", "--config", str(_with(cfg_file, "confirm_above: 0.01")))
    assert result.exit_code == 2, result.output
    assert "--yes:" in result.output and "passes confirm_above ($0.01/hour)" in result.output
    assert "c5.large" in result.output and "2 workers" in result.output  # the plan came first
    nothing_created(aws)


@pytest.mark.parametrize(("line", "flags"), [("confirm_above: 0.01", ["--yes"]),
                                             ("confirm_above: 50", []), ("", [])])
def test_up_prints_the_plan_and_launches_under_the_limit_or_with_yes(
    aws, cfg_file, monkeypatch, line, flags
):
    def launch(*a, **k):
        raise ProvisionError("launching")

    monkeypatch.setattr("provision.cli.cluster.lifecycle.up", launch)
    result = invoke("up", "--config", str(_with(cfg_file, line)), *flags)
    assert result.exit_code == 1 and "launching" in result.output, result.output
    assert "1 master" in result.output and "on-demand" in result.output
    assert "2 workers" in result.output and "spot" in result.output


def test_a_negative_confirm_above_is_bad_input(aws, cfg_file):
    result = invoke("up", "--config", str(_with(cfg_file, "confirm_above: -1")))
    assert result.exit_code == 2 and "confirm_above" in result.output


# --- spothistory --------------------------------------------------------------------------


def test_spothistory_refuses_a_window_ec2_cannot_answer(aws, cfg_file):
    tomorrow = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).strftime("%Y-%m-%d")
    for args, message in ((["--end", tomorrow], "--end:"),
                          (["--start", "2026-01-02", "--end", "2026-01-01"], "--start:"),
                          (["--start", "2001-01-01"], "keeps 90 days")):
        result = invoke("spothistory", "c5.large", "--config", str(cfg_file), *args)
        assert result.exit_code == 2 and message in result.output, result.output


def test_spothistory_plots_each_zone_into_a_png(aws, cfg_file, tmp_path, monkeypatch):
    series_asked = []
    real = cloud.spot_price_series

    def series(region, itype, zone, start, end):
        series_asked.append((zone, round((end - start).total_seconds() / 3600)))
        return real(region, itype, zone, start, end)

    monkeypatch.setattr(cloud, "spot_price_series", series)
    png = tmp_path / "prices.png"
    result = invoke("spothistory", "c5.large", "--config", str(cfg_file), "--days", "2",
                    "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert series_asked and {hours for _, hours in series_asked} == {48}
    assert f"plot: {png}" in result.output


def test_context_is_untouched_by_read_commands(aws, cfg_file):
    """`list` and `spothistory` create nothing, not even a local record."""
    invoke("spothistory", "c5.large", "--config", str(cfg_file))
    invoke("list", "--config", str(cfg_file))
    nothing_created(aws)
