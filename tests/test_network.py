"""Where nodes launch and how this machine reaches them, against moto's EC2:
subnet_id / vpc_id / the default VPC, public addresses only when asked for (the
master always), the image's login user, and a worker without a public address
reached through the master (paramiko gateway, ssh(1) ProxyCommand, Ansible)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import test_cli
from click.testing import CliRunner
from conftest import offline_aws_env
from moto import mock_aws

from provision import cloud, context, inventory, lifecycle
from provision.cli import main
from provision.cloud.aws.images import image_family
from provision.cloud.common import MASTER, WORKER, InstanceInfo, InstanceTypeInfo, Region
from provision.config import load_config
from provision.errors import ProvisionError
from provision.nodes import transfer
from provision.schema import ClusterConfig

ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    offline_aws_env(monkeypatch, tmp_path)
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


cfg = test_cli.cfg_file  # a cluster file of 1 + 2 spot nodes and its key (moto's CLI tests)


def with_settings(cfg: Path, **settings: Any) -> Path:
    lines = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in settings.items())
    cfg.write_text(cfg.read_text() + lines)
    return cfg


def launched(cfg: Path) -> dict[str, dict[str, Any]]:
    """up's cloud phase; the nodes as EC2 describes them, by name."""
    ctx = context.prepare(load_config(cfg))
    info = lifecycle.ensure_instances(ctx)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    found = ec2.describe_instances(InstanceIds=[i.instance_id for i in info.alive])
    names = {i.instance_id: i.name for i in info.alive}
    return {names[i["InstanceId"]]: i for r in found["Reservations"] for i in r["Instances"]}


# --- public addresses ----------------------------------------------------------------


def test_workers_get_a_public_address_by_default(ec2, cfg):
    nodes = launched(cfg)
    assert all(n.get("PublicIpAddress") for n in nodes.values()), nodes


def test_public_ip_false_leaves_workers_private_and_the_master_public(ec2, cfg):
    nodes = launched(with_settings(cfg, public_ip=False))
    assert nodes["master"].get("PublicIpAddress")
    assert [n for n in ("node001", "node002") if nodes[n].get("PublicIpAddress")] == []
    assert all(n["PrivateIpAddress"] for n in nodes.values())


def test_the_launch_asks_for_the_public_address_whatever_the_subnet_maps(ec2):
    from provision.cloud.aws import instances
    from provision.cloud.common import LaunchRequest

    for public in (True, False):
        req = LaunchRequest("c1", WORKER, 1, "c5.large", "ami-1", "k", "sg-1", public_ip=public)
        [nic] = instances._run_params(req, "/dev/sda1", "subnet-1")["NetworkInterfaces"]
        assert nic["AssociatePublicIpAddress"] is public
        assert nic["SubnetId"] == "subnet-1" and nic["Groups"] == ["sg-1"]


# --- subnet, VPC, default VPC ----------------------------------------------------------


def _vpc(ec2: Any, cidr: str, zones: list[str]) -> tuple[str, dict[str, str]]:
    vpc = ec2.create_vpc(CidrBlock=f"{cidr}.0.0/16")["Vpc"]["VpcId"]
    subnets = {
        z: ec2.create_subnet(VpcId=vpc, CidrBlock=f"{cidr}.{n}.0/24", AvailabilityZone=z)[
            "Subnet"]["SubnetId"]
        for n, z in enumerate(zones)
    }
    return vpc, subnets


def test_subnet_id_pins_subnet_zone_and_the_groups_vpc(ec2, cfg):
    vpc, subnets = _vpc(ec2, "10.20", ["us-east-1c"])
    nodes = launched(with_settings(cfg, subnet_id=subnets["us-east-1c"]))
    assert {n["SubnetId"] for n in nodes.values()} == {subnets["us-east-1c"]}
    group = nodes["master"]["NetworkInterfaces"][0]["Groups"][0]["GroupId"]
    assert ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["VpcId"] == vpc


def test_vpc_id_and_zone_launch_into_that_vpcs_subnet_in_that_zone(ec2, cfg):
    _, subnets = _vpc(ec2, "10.30", ["us-east-1a", "us-east-1b"])
    vpc = ec2.describe_subnets(SubnetIds=[subnets["us-east-1b"]])["Subnets"][0]["VpcId"]
    nodes = launched(with_settings(cfg, vpc_id=vpc, zone="us-east-1b"))
    assert {n["SubnetId"] for n in nodes.values()} == {subnets["us-east-1b"]}


def test_a_subnet_in_another_zone_than_the_zone_set_is_one_line(ec2, cfg):
    _, subnets = _vpc(ec2, "10.40", ["us-east-1a"])
    with_settings(cfg, subnet_id=subnets["us-east-1a"], zone="us-east-1d")
    result = CliRunner().invoke(main, ["up", "--config", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "is in zone us-east-1a, not us-east-1d" in result.output


def test_a_region_without_a_default_vpc_says_to_set_subnet_id(ec2, cfg):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
            "Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    ec2.delete_vpc(VpcId=vpc["VpcId"])

    result = CliRunner().invoke(main, ["up", "--config", str(cfg)], catch_exceptions=False)

    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "has no default VPC: set subnet_id (or vpc_id, and zone) in the cluster file" in lines[0]
    assert {"subnet_id", "vpc_id", "zone"} <= set(ClusterConfig.model_fields)  # fields that exist
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []


# --- the login user ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "description", "owner", "user"),
    [
        ("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250115",
         "Canonical, Ubuntu, 24.04, amd64 noble image", "099720109477", "ubuntu"),
        ("ubuntu-pro-server/images/hvm-ssd/ubuntu-jammy-22.04-amd64-pro-server", "", "1", "ubuntu"),
        ("al2023-ami-2023.6.20250115.0-kernel-6.1-x86_64",
         "Amazon Linux 2023 AMI 2023.6.20250115.0 x86_64 HVM kernel-6.1", "137112412989",
         "ec2-user"),
        ("amzn2-ami-kernel-5.10-hvm-2.0.20250115.0-x86_64-gp2", "", "1", "ec2-user"),
        ("debian-12-amd64-20250112-1990", "Debian 12 (20250112-1990)", "136693071363", "admin"),
        ("Deep Learning AMI GPU PyTorch 2.5 (Ubuntu 22.04)", "", "898082745236", "ubuntu"),
        ("RHEL-9.5.0_HVM-20241211-x86_64-0-Hourly2-GP3", "", "309956199498", "ec2-user"),
    ],
)
def test_the_ssh_user_comes_from_the_image_family(name, description, owner, user):
    family = image_family(name, description, owner)
    assert family is not None and family[1] == user


def test_an_image_of_no_known_family_has_no_user():
    assert image_family("team-image-2025-01", "our build", "123456789012") is None


def test_prepare_takes_the_images_user_and_user_overrides_it(ec2, cfg):
    ctx = context.prepare(load_config(cfg))  # moto's Amazon Linux 2023 default image
    assert ctx.user == "ec2-user"
    assert context.prepare(load_config(with_settings(cfg, user="admin"))).user == "admin"


def test_an_image_of_no_known_family_without_user_is_one_line_naming_user(ec2, cfg):
    image = ec2.register_image(Name="team-image-2025-01", Description="our build",
                               RootDeviceName="/dev/xvda", Architecture="x86_64")["ImageId"]
    with_settings(cfg, image_id=image)
    result = CliRunner().invoke(main, ["up", "--config", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "user: image " in result.output and "set user in the cluster file" in result.output


# --- reaching a node without a public address ------------------------------------------


def _ctx(tmp_path: Path) -> context.Context:
    return context.Context(
        config=ClusterConfig(name="c1", key_path=tmp_path / "key"),
        region=Region("us-east-1"),
        type_info=InstanceTypeInfo("c5.large", 2, 4096, "x86_64"),
        image_id="ami-1",
        user="ubuntu",
        public_key="",
        _ssh_cidr="203.0.113.7/32",
    )


def _node(name: str, role: str, private: str, public: str | None) -> InstanceInfo:
    return InstanceInfo(f"i-{name}", role, "c5.large", "running", "us-east-1a", "spot", private,
                        public, None, name=name)


MASTER_NODE = _node("master", MASTER, "10.0.0.4", "198.51.100.4")
PRIVATE_NODE = _node("node001", WORKER, "10.0.0.5", None)


def test_a_worker_without_a_public_address_is_reached_through_the_master(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    ctx = _ctx(tmp_path)
    ep = ctx.endpoint(PRIVATE_NODE, MASTER_NODE)
    assert (ep.host, ep.user) == ("10.0.0.5", "ubuntu")
    assert ep.via is not None and (ep.via.host, ep.via.user) == ("198.51.100.4", "ubuntu")
    assert ep.via.known_hosts == ep.known_hosts
    assert ctx.endpoint(MASTER_NODE).via is None


def test_a_master_without_a_public_address_is_an_error_not_a_private_guess(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    hidden = _node("master", MASTER, "10.0.0.4", None)
    with pytest.raises(ProvisionError, match="master i-master .* has no public address"):
        _ctx(tmp_path).endpoint(hidden)
    with pytest.raises(ProvisionError, match="no running master with a public one"):
        _ctx(tmp_path).endpoint(PRIVATE_NODE, hidden)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_ssh_reaches_a_private_worker_through_the_master_with_the_same_key_and_host_keys(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    ep = _ctx(tmp_path).endpoint(PRIVATE_NODE, MASTER_NODE)
    argv = transfer.ssh_argv(ep, "true")
    assert argv is not None
    # ssh -G resolves the options as ssh would use them, without connecting.
    resolved = subprocess.run([*argv[:-2], "-G", ep.host], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    proxy = next(line for line in resolved if line.startswith("proxycommand "))
    assert proxy.endswith(f"-W %h:%p {MASTER_NODE.public_ip}")
    for option in (f"-i {ep.key_path}", "-l ubuntu", f"UserKnownHostsFile={ep.known_hosts}",
                   "StrictHostKeyChecking=yes", "BatchMode=yes", "-F /dev/null"):
        assert option in proxy, (option, proxy)
    assert "user ubuntu" in resolved and f"hostname {PRIVATE_NODE.private_ip}" in resolved


@pytest.mark.parametrize("fmt", ["yaml", "ini"])
def test_the_inventory_reaches_a_private_worker_through_the_master(tmp_path, monkeypatch, fmt):
    from provision.cloud.common import ClusterInfo
    from provision.nodes import setup

    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    ctx = _ctx(tmp_path)
    info = ClusterInfo("c1", ctx.region, [MASTER_NODE, PRIVATE_NODE])
    spec = setup.EnvSpec("3.11", ("numpy==2.0.0",))
    doc = inventory.build(ctx, info, spec=spec, wheelhouse=tmp_path / "wh")
    path = tmp_path / f"inventory.{fmt}"
    path.write_text(inventory.render(doc, fmt))
    out = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(path), "--list"], capture_output=True,
                         text=True, check=True, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    hostvars = json.loads(out.stdout)["_meta"]["hostvars"]
    worker, master = hostvars["node001"], hostvars["master"]
    assert worker["ansible_host"] == PRIVATE_NODE.private_ip and worker["ansible_user"] == "ubuntu"
    assert "ProxyCommand=" in worker["ansible_ssh_common_args"]
    assert f"-W %h:%p {MASTER_NODE.public_ip}" in worker["ansible_ssh_common_args"]
    assert master["ansible_host"] == MASTER_NODE.public_ip
    assert "ProxyCommand" not in master["ansible_ssh_common_args"]


def test_terminate_is_safe_to_repeat_on_ids_that_are_gone(ec2, cfg):
    ctx = context.prepare(load_config(cfg))
    info = lifecycle.ensure_instances(ctx)
    ids = [i.instance_id for i in info.alive]
    cloud.terminate_instances(ctx.region, ids, timeout=60)
    cloud.terminate_instances(ctx.region, ids, timeout=60)  # again: nothing to do
    assert {i.state for i in cloud.describe_instances(ctx.region, ids)} == {"terminated"}
