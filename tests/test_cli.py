"""The CLI against moto's in-process EC2: bad input exits 2 and creates nothing;
read commands and `down` report what EC2 holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from conftest import offline_aws_env
from moto import mock_aws
from oracle import anything, assert_nothing_left, files_under

from provision import cloud, context, lifecycle, state
from provision.cli import main
from provision.config import load_config

CONFIG = """\
default: aws
clusters:
  aws:
    region: us-east-1
    name: unit
    instance_type: c5.large
    ssh_cidr: 203.0.113.7/32
    key_path: {key}
    cluster_size: 3
    spot_bid: 0.10
"""


@pytest.fixture
def aws(monkeypatch, tmp_path, moto_amis):
    offline_aws_env(monkeypatch, tmp_path)
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


@pytest.fixture
def cfg_file(tmp_path) -> Path:
    key = tmp_path / "id_ed25519"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {key}")
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIG.format(key=key))
    return path


def nothing_created(client) -> None:
    """Nothing in the region, tagged or not (instances, spot requests, volumes,
    groups, key pairs; provision makes no images or snapshots, and moto starts with
    its own), and no local state or data cache: asked with the tests' own oracle."""
    found = {k: v for k, v in anything(client).items() if v and k not in ("images", "snapshots")}
    assert found == {}, f"created: {found}"
    assert files_under(Path(os.environ["PROVISION_STATE_DIR"])) == []


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spot-bid", "-1"], "--spot-bid"),
        (["--spot-bid", "0"], "--spot-bid"),
        (["--instance-type", "m5.large"], "--instance-type"),
        (["--instance-type", "t3.micro"], "--instance-type"),
        (["--instance-type", "c5.enormous"], "c5.enormous"),
        (["-n", "0"], "--cluster-size"),
        (["--name", "Bad_Name"], "--name"),
        (["--engines-per-node", "0"], "--engines-per-node"),
    ],
)
def test_bad_up_flags_exit_2_with_one_line_and_create_nothing(aws, cfg_file, args, message):
    result = invoke("up", "--config", str(cfg_file), *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    nothing_created(aws)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("cluster_size:", "clustr_size:"), "did you mean 'cluster_size'"),
        (lambda s: s.replace("spot_bid: 0.10", "spot_bid: -3"), "spot_bid"),
        (lambda s: s.replace("c5.large", "m5.large"), "instance_type"),
        (lambda s: s.replace("region: us-east-1", "region: {{ nope( }}"), "line 4"),
        (lambda s: s.replace("ssh_cidr: 203.0.113.7/32", "ssh_cidr: 999.1.1.1/40"), "ssh_cidr"),
        (lambda s: s + "    extends: aws\n", "aws -> aws"),
    ],
)
def test_bad_config_files_exit_2_naming_the_field(aws, cfg_file, edit, message):
    cfg_file.write_text(edit(cfg_file.read_text()))
    result = invoke("up", "--config", str(cfg_file))
    assert result.exit_code == 2, result.output
    assert message in result.output and str(cfg_file.name) in result.output
    nothing_created(aws)


def test_key_file_readable_by_others_is_refused(aws, cfg_file, tmp_path):
    os.chmod(tmp_path / "id_ed25519", 0o644)
    result = invoke("up", "--config", str(cfg_file))
    assert result.exit_code == 2
    assert "readable by others" in result.output and "chmod 600" in result.output
    nothing_created(aws)


def test_missing_config_file_is_named(aws, tmp_path):
    result = invoke("up", "--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "nope.yaml" in result.output
    nothing_created(aws)


def test_down_without_a_terminal_needs_yes(aws, cfg_file):
    result = invoke("down", "unit", "--config", str(cfg_file))
    assert result.exit_code == 2 and "--yes" in result.output


def test_help_teaches_every_command():
    result = invoke("--help")
    for command in ("init", "spothistory", "up", "status", "list", "down", "addnode", "removenode",
                    "put-data", "run", "ssh", "put", "get", "restart-engines", "sim"):
        assert command in result.output
    assert "provision up -n 3 --spot-bid 0.10" in result.output
    assert "--spot-bid" in invoke("up", "--help").output


def test_init_writes_a_starter_and_refuses_to_overwrite(aws, tmp_path):
    target = tmp_path / "c.yaml"
    assert invoke("init", "--path", str(target)).exit_code == 0
    assert target.exists() and oct(target.stat().st_mode & 0o777) == "0o600"
    again = invoke("init", "--path", str(target))
    assert again.exit_code == 2 and "--force" in again.output
    assert invoke("init", "--path", str(target), "--force").exit_code == 0


def _launch_unit_cluster(cfg_file: Path) -> context.Context:
    """What `up` does before SSH: validate, group, key pair, reconcile."""
    ctx = context.prepare(load_config(cfg_file))
    lifecycle.ensure_instances(ctx)
    return ctx


def test_reconcile_twice_launches_no_extra_instances(aws, cfg_file):
    ctx = _launch_unit_cluster(cfg_file)
    _launch_unit_cluster(cfg_file)
    info = cloud.describe_cluster(ctx.region, "unit")
    assert len(info.alive) == 3
    assert info.master is not None and info.master.lifecycle == "on-demand"
    assert [w.lifecycle for w in info.workers] == ["spot", "spot"]


def test_reconcile_replaces_only_a_lost_worker(aws, cfg_file):
    ctx = _launch_unit_cluster(cfg_file)
    lost = cloud.describe_cluster(ctx.region, "unit").workers[0]
    cloud.terminate_instances(ctx.region, [lost.instance_id])
    _launch_unit_cluster(cfg_file)
    alive = cloud.describe_cluster(ctx.region, "unit").alive
    assert len(alive) == 3 and lost.instance_id not in {i.instance_id for i in alive}


def test_status_json_lists_every_node(aws, cfg_file):
    _launch_unit_cluster(cfg_file)
    result = invoke("status", "unit", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert sorted(n["role"] for n in doc["nodes"]) == ["master", "worker", "worker"]
    assert {n["type"] for n in doc["nodes"]} == {"c5.large"}
    assert "testing" not in result.output  # no credentials in output


def test_list_shows_the_cluster_with_its_size_age_and_cost_so_far(aws, cfg_file):
    _launch_unit_cluster(cfg_file)
    state.update("unit", expected_engines=6)
    doc = json.loads(invoke("list", "--config", str(cfg_file), "--json").output)
    assert len(doc) == 1
    row = doc[0]
    assert {k: row[k] for k in ("name", "region", "live", "local_record", "nodes", "engines")} == {
        "name": "unit", "region": "us-east-1", "live": True, "local_record": True, "nodes": 3,
        "engines": 6,
    }
    assert row["age_hours"] >= 0 and row["cost_so_far"] > 0
    table = invoke("list", "--config", str(cfg_file)).output
    assert "cost so far" in table and "unit" in table


def test_down_leaves_nothing_tagged_and_twice_is_a_no_op(aws, cfg_file):
    _launch_unit_cluster(cfg_file)
    first = invoke("down", "unit", "--yes")
    assert first.exit_code == 0, first.output
    assert "nothing tagged with it is left" in first.output
    assert_nothing_left(aws, "unit")
    assert state.load("unit") == {}
    second = invoke("down", "unit", "--yes", "--config", str(cfg_file))
    assert second.exit_code == 0 and "already gone" in second.output
