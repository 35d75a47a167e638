"""The simulated region itself: one per id, reused, never routed beyond this machine,
cleaned up after a crash, and gone without a trace after `down`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from simhelp import (
    UBUNTU,
    Launch,
    our_processes,
    pid_gone,
    port_open,
    region_netns,
    ssh,
    wait_ssh,
    wait_until,
)

from provision import sim
from provision.cloud.common import Region
from provision.sim import hosts, net
from provision.sim.cli import sim as sim_cli
from provision.sim.state import STATE_ROOT, client

pytestmark = pytest.mark.e2e


def test_bad_uplink_is_a_usage_error_naming_the_flag(sim_region: Region) -> None:
    result = CliRunner().invoke(sim_cli, ["up", "--uplink", "fast"])
    assert result.exit_code == 2 and "--uplink" in result.output
    assert "not shaped" in CliRunner().invoke(sim_cli, ["status"]).output


def test_up_twice_reuses_the_running_region_and_refuses_to_switch_its_timing(
    sim_region: Region,
) -> None:
    again = sim.up()
    assert again.reused and again.endpoint == sim_region.endpoint_url
    assert sim.region() == sim_region
    result = CliRunner().invoke(sim_cli, ["up", "--instant"])
    assert result.exit_code == 1 and "`provision sim down` first" in result.output
    assert sim.status().endpoint == sim_region.endpoint_url  # type: ignore[union-attr]


def test_simulated_addresses_never_route_to_the_default_gateway(sim_region: Region) -> None:
    private = net.SUBNET_CIDR.replace("0/24", "9")
    public = net.PUBLIC_CIDR.replace("0/24", "9")
    via = subprocess.run(["ip", "route", "get", public], capture_output=True, text=True).stdout
    assert f"dev {hosts.PUBLIC_BRIDGE}" in via  # up: the public plane's own bridge
    blocked = subprocess.run(["ip", "route", "get", private], capture_output=True, text=True)
    assert blocked.returncode != 0  # the laptop has no way into the private plane


@pytest.mark.run_last
def test_up_after_a_crash_cleans_up_and_starts_afresh(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch()
    wait_ssh(inst["PublicIpAddress"], sim_key[1])
    old = sim.status()
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)  # the daemon dies; its hosts and bridges stay behind
    wait_until(lambda: not sim.status().alive, what="the daemon to die")  # type: ignore[union-attr]

    new = sim.up()

    assert not new.reused
    assert new.pid != old.pid and new.endpoint != old.endpoint
    assert hosts.namespaces() == []  # the old instance's host went with the old region


@pytest.mark.run_last
def test_an_instant_region_runs_and_terminates_at_once(sim_key: tuple[str, Path]) -> None:
    sim.down()
    sim.up(instant=True)
    ec2 = client("ec2", sim.region().endpoint_url or "")
    pub = sim_key[1].with_suffix(".pub").read_bytes()
    ec2.import_key_pair(KeyName=sim_key[0], PublicKeyMaterial=pub)
    image = client("ssm", sim.region().endpoint_url or "").get_parameter(Name=UBUNTU)
    (inst,) = ec2.run_instances(
        ImageId=image["Parameter"]["Value"], MinCount=1, MaxCount=1, KeyName=sim_key[0],
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": sim.region().subnet_id,
                            "AssociatePublicIpAddress": True}],
    )["Instances"]
    (res,) = ec2.describe_instances(InstanceIds=[inst["InstanceId"]])["Reservations"]
    now = res["Instances"][0]
    assert now["State"]["Name"] == "running" and now["PublicIpAddress"]
    wait_until(lambda: port_open(now["PublicIpAddress"]), 5, "an instant host's sshd")
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    (res,) = ec2.describe_instances(InstanceIds=[inst["InstanceId"]])["Reservations"]
    assert res["Instances"][0]["State"]["Name"] == "terminated"


@pytest.mark.run_last
def test_down_leaves_nothing_but_the_blackhole_routes(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch()
    pub = inst["PublicIpAddress"]
    wait_ssh(pub, sim_key[1])
    job = int(ssh(pub, sim_key[1], "nohup sleep 1000 >/dev/null 2>&1 & echo $!").stdout)
    netns = region_netns()
    assert netns and our_processes(netns)  # the check below can see a host's processes

    sim.down()

    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split()
    assert [n for n in netns if n.startswith(hosts.NETNS_PREFIX)] == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for name in (hosts.BRIDGE, hosts.PUBLIC_BRIDGE, f" {hosts.VETH_PREFIX}",
                 f" {hosts.PUBLIC_VETH_PREFIX}"):
        assert name not in links
    assert sorted(r.split()[:2] for r in net.routes()) == [
        ["blackhole", net.VPC_CIDR], ["blackhole", net.PUBLIC_CIDR]]
    gone = subprocess.run(["ip", "route", "get", pub], capture_output=True, text=True)
    assert gone.returncode != 0 and "dev eth" not in gone.stdout  # never the default gateway
    assert pid_gone(job)
    assert our_processes(netns) == []
    assert [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE] == []
    assert sim.status() is None
    assert {p.name for p in STATE_ROOT.iterdir()} <= {"daemon.log", "hosts", "lock"}
    with pytest.raises(sim.SimError, match="not running: start it with `provision sim up`"):
        sim.region()
