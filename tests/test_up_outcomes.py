"""What `up` does with its nodes' outcomes, and what it leaves open, against moto
with a configure strategy that stops where SSH would start (see `faultkit`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from faultkit import (
    CIDR,
    REGION,
    WORKERS,
    StopAtSSH,
    StopBeforeSSH,
    assert_converged,
    cluster_file,
    down_leaves_nothing,
    run_up,
)

from provision import cloud, configure, lifecycle, state
from provision.cli import main
from provision.cloud.common import MASTER
from provision.config import load_config
from provision.errors import ProvisionError
from provision.nodes.python import PythonUnavailable
from provision.nodes.remote import NodeError

pytest_plugins = ["faultkit"]  # region, faults, name, key, cfg

SECRET = "SECRETVALUE123"


class FailingMaster(StopAtSSH):
    """The master fails configuration; the workers would have been fine."""

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        return {n.label: NodeError("no python3") if n.role == MASTER else None for n in nodes}


class Node001FailsOnce(StopAtSSH):
    """node001 fails configuration; the strategy then stops where SSH to its
    replacement would start."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        self.calls.append([n.label for n in nodes])
        if len(self.calls) > 1:
            raise StopBeforeSSH
        return {n.label: NodeError("no python3") if n.name == "node001" else None for n in nodes}


def test_a_master_that_fails_configuration_fails_up_and_terminates_what_it_launched(
    faults, region, cfg, name
):
    with pytest.raises(ProvisionError) as err:
        lifecycle.up(load_config(cfg), configure_with=FailingMaster())

    text = str(err.value)
    assert text.startswith("master i-") and "failed: no python3. Run `provision up`" in text
    assert f"terminated the {1 + WORKERS} instance(s) this up launched" in text
    assert cloud.describe_cluster(REGION, name).alive == []  # nothing left billing
    down_leaves_nothing(region, name)


def test_keep_failed_keeps_what_a_failed_up_launched_and_says_it_bills(faults, region, cfg, name):
    with pytest.raises(ProvisionError) as err:
        lifecycle.up(load_config(cfg), keep_failed=True, configure_with=FailingMaster())

    assert f"kept {1 + WORKERS} instance(s) this up launched (--keep-failed)" in str(err.value)
    assert f"bill until `provision down {name}`" in str(err.value)
    assert len(cloud.describe_cluster(REGION, name).alive) == 1 + WORKERS
    down_leaves_nothing(region, name)


class NoPythonForTheImage(StopAtSSH):
    """The first node finds the image cannot get the client's Python; the gate fails
    the others with it (as `nodes.python.PythonGate` does)."""

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        first = nodes[0].label
        err = PythonUnavailable(f"{first} (10.0.0.9): the image has no python3 ...", node=first)
        return {n.label: err for n in nodes}


def test_a_python_the_nodes_cannot_get_leaves_no_instance_running(faults, region, cfg, name):
    with pytest.raises(ProvisionError) as err:
        lifecycle.up(load_config(cfg), configure_with=NoPythonForTheImage())

    assert "the image has no python3" in str(err.value)
    assert f"terminated the {1 + WORKERS} instance(s) this up launched" in str(err.value)
    alive = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    assert [r for r in region.describe_instances(Filters=alive)["Reservations"]] == []
    down_leaves_nothing(region, name)


def test_a_failed_worker_is_terminated_and_with_replace_failed_replaced(faults, region, cfg, name):
    strategy = Node001FailsOnce()

    with pytest.raises(StopBeforeSSH):
        lifecycle.up(load_config(cfg), replace_failed=True, configure_with=strategy)

    first, again = strategy.calls
    assert first == ["master", "node001", "node002"] and len(again) == 1
    gone = [i for i in cloud.describe_cluster(REGION, name).instances if i.state == "terminated"]
    assert [i.name for i in gone] == ["node001"]
    assert_converged(region, name)  # the replacement took the free name
    down_leaves_nothing(region, name)


# --- what `up` leaves open ------------------------------------------------------


def launch_with_a_key_up_makes(tmp_path: Path, name: str) -> Path:
    """`up` until SSH from a cluster file without key_path (`up` creates the key) or
    ssh_cidr (`up` asks checkip, which answers CIDR's address)."""
    path = cluster_file(tmp_path / "cluster.yaml", name)
    assert run_up(path, StopAtSSH()) is None
    return path


@pytest.fixture
def secured(faults: Any, name: str, tmp_path: Path) -> Path:
    return launch_with_a_key_up_makes(tmp_path, name)


def test_up_opens_ssh_to_the_configured_cidr_only_and_everything_else_to_the_group(
    region, name, secured
):
    group_id = cloud.describe_cluster(REGION, name).security_group_id
    group = region.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    rules = {
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), source)
        for p in group["IpPermissions"]
        for source in [r["CidrIp"] for r in p.get("IpRanges", [])]
        + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
        + [r["PrefixListId"] for r in p.get("PrefixListIds", [])]
        + [g["GroupId"] for g in p.get("UserIdGroupPairs", [])]
    }
    assert rules == {("tcp", 22, 22, CIDR), ("-1", None, None, group_id)}


def test_up_requires_imdsv2_and_encrypts_root_volumes(region, name, secured):
    ids = [i.instance_id for i in cloud.describe_cluster(REGION, name).alive]
    found = [
        i
        for r in region.describe_instances(InstanceIds=ids)["Reservations"]
        for i in r["Instances"]
    ]
    assert len(found) == 1 + WORKERS
    assert {i["MetadataOptions"]["HttpTokens"] for i in found} == {"required"}
    attached = [{"Name": "attachment.instance-id", "Values": ids}]
    volumes = region.describe_volumes(Filters=attached)["Volumes"]
    assert len(volumes) == len(ids)
    assert all(v["Encrypted"] for v in volumes), volumes


def test_up_writes_the_key_and_local_state_private(name, secured):
    key = load_config(secured).key_path
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
    d = state.cluster_dir(name, create=False)
    for directory in (state.root(), d.parent, d):
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory
    files = [p for p in d.rglob("*") if p.is_file()]
    assert files, "up wrote no local state"
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}


def test_no_aws_secret_or_private_key_reaches_logs_or_status_json(
    region, name, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a session that reads SECRET
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="provision")  # the CLI sets its own level
    cfg = launch_with_a_key_up_makes(tmp_path, name)
    assert boto3.DEFAULT_SESSION.get_credentials().secret_key == SECRET  # up really signed with it
    result = CliRunner().invoke(main, ["status", name, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["nodes"]) == 1 + WORKERS
    lines = load_config(cfg).key_path.read_text().splitlines()
    private = [line for line in lines if line and not line.startswith("-----")]
    assert private
    seen = caplog.text + result.output
    assert "botocore" in caplog.text  # DEBUG logs were captured, requests included
    assert SECRET not in seen
    assert not [line for line in private if line in seen]


def test_missing_engines_are_revived_and_explained_node_by_node(monkeypatch):
    """`up`'s wait for engines: a node with engines that exited gets them started again,
    every node's logs explain a timeout, and a node it cannot reach is one warning."""
    from types import SimpleNamespace

    from provision.cloud.common import WORKER

    nodes = [SimpleNamespace(label=label, role=role) for label, role in
             (("master", MASTER), ("node001", WORKER), ("node002", WORKER))]
    warned: list[str] = []
    ctx = SimpleNamespace(
        config=SimpleNamespace(remote_root="/srv/p"), connection_files=("c.json", "e.json"),
        reporter=SimpleNamespace(warn=warned.append), endpoint=lambda i: i.label,
        engines_on=lambda i: 0 if i.role == MASTER else 2,
    )

    def answer(ep: str, found: list[str]) -> list[str]:
        if ep == "node002":
            raise NodeError("connection refused")
        return found

    monkeypatch.setattr(lifecycle.engines, "revive_engines",
                        lambda ep, root, n, engine_file, registered:
                        answer(ep, [f"{n} engines exited, {sorted(registered)} held"]))
    monkeypatch.setattr(lifecycle.engines, "log_clues",
                        lambda ep, root, master: answer(ep, [f"log master={master}"]))
    info = SimpleNamespace(nodes=nodes)
    lifecycle._revive(ctx, info, {0, 3})
    lifecycle._clues(ctx, info)

    assert warned == [
        "node001: 2 engines exited, [0, 3] held; started it again",
        "node002: could not look at its engines: connection refused",
        "master: log master=True", "node001: log master=False",
        "node002: could not read its logs: connection refused",
    ]
