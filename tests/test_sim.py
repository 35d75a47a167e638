"""The simulated region, used as provision uses it: EC2 calls in, SSH-able hosts out."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from provision import sim
from provision.cloud.common import Region
from provision.sim import hosts
from provision.sim.cli import sim as sim_cli
from provision.sim.state import STATE_ROOT, SUBNET_CIDR, client

pytestmark = pytest.mark.e2e

UBUNTU_AMD64 = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"

Launch = Callable[..., list[dict[str, Any]]]


def ssh(ip: str, key: Path, command: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR", f"root@{ip}", command],
        capture_output=True, text=True, timeout=timeout,
    )


def port_open(ip: str, timeout: float = 0.3) -> bool:
    """A cheap probe: ssh to an address nobody holds yet blocks for its whole ConnectTimeout."""
    try:
        with socket.create_connection((ip, 22), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ssh(ip: str, key: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(ip) or ssh(ip, key, "true").returncode != 0:
        assert time.monotonic() < deadline, f"{ip} never answered SSH"
        time.sleep(0.05)


def wait_until(cond: Callable[[], bool], timeout: float = 5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def our_processes() -> list[psutil.Process]:
    """Live processes the region made: the daemon and anything configured under its dir."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(STATE_ROOT) in cmd:  # the daemon's --state-dir, hosts' sshd configs
            found.append(p)
    return found


@pytest.fixture
def region(sim_region: Region) -> Region:
    """The region as it is now (a run_last test restarts it under a new endpoint)."""
    return sim.region()


@pytest.fixture
def ec2(region: Region) -> Any:
    return client("ec2", region.endpoint_url or "")


@pytest.fixture
def launch(region: Region, ec2: Any, sim_key: tuple[str, Path]) -> Iterator[Launch]:
    """Run c5.large instances in the sim subnet from Canonical's SSM image; terminated after."""
    ids: list[str] = []
    image = client("ssm", region.endpoint_url or "").get_parameter(Name=UBUNTU_AMD64)
    image_id = image["Parameter"]["Value"]

    def run(count: int = 1) -> list[dict[str, Any]]:
        r = ec2.run_instances(
            ImageId=image_id, InstanceType="c5.large", MinCount=count, MaxCount=count,
            KeyName=sim_key[0], SubnetId=region.subnet_id,
        )
        ids.extend(i["InstanceId"] for i in r["Instances"])
        return r["Instances"]

    yield run
    st = sim.status()
    if ids and st is not None and st.alive and st.endpoint == region.endpoint_url:
        ec2.terminate_instances(InstanceIds=ids)
        res = ec2.describe_instances(InstanceIds=ids)["Reservations"]
        gone = {i["PrivateIpAddress"] for r in res for i in r["Instances"]}
        wait_until(lambda: not gone & {h.ip for h in hosts.list_hosts()}, what="hosts to go")


def test_launched_instance_becomes_an_ssh_host_at_its_private_ip_with_its_own_hostname(
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    ip = inst["PrivateIpAddress"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET_CIDR)
    wait_ssh(ip, sim_key[1])
    r = ssh(ip, sim_key[1], "hostname; ip -o -4 addr show eth0")
    assert r.stdout.splitlines()[0] == f"ip-{ip.replace('.', '-')}"
    assert f"{ip}/24" in r.stdout


def test_files_under_srv_on_one_host_are_invisible_on_another(
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    a, b = (i["PrivateIpAddress"] for i in launch(2))
    wait_ssh(a, sim_key[1])
    wait_ssh(b, sim_key[1])
    assert ssh(a, sim_key[1], "echo data > /srv/only-here && cat /srv/only-here").stdout == "data\n"
    assert ssh(b, sim_key[1], "test -e /srv/only-here").returncode == 1


def test_terminating_an_instance_removes_its_host(
    launch: Launch, ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    ip = inst["PrivateIpAddress"]
    wait_ssh(ip, sim_key[1])
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    wait_until(lambda: hosts.netns_name(ip) not in hosts.namespaces(), what="the namespace to go")
    listed = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert hosts.netns_name(ip) not in listed.split()
    assert not port_open(ip)


def test_interrupt_kills_work_running_on_that_host(
    launch: Launch, ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    ip = inst["PrivateIpAddress"]
    wait_ssh(ip, sim_key[1])
    pid = int(ssh(ip, sim_key[1], "nohup sleep 1000 >/dev/null 2>&1 & echo $!").stdout)
    assert not pid_gone(pid)

    sim.interrupt(inst["InstanceId"])

    wait_until(lambda: pid_gone(pid), timeout=2, what=f"pid {pid} to die")
    assert hosts.netns_name(ip) not in hosts.namespaces()
    state = ec2.describe_instances(InstanceIds=[inst["InstanceId"]])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"


def test_up_twice_reuses_the_running_region(sim_region: Region) -> None:
    again = sim.up(boot_delay=0.2)
    assert again.reused
    assert again.endpoint == sim_region.endpoint_url
    assert again.subnet_id == sim_region.subnet_id
    assert sim.region() == sim_region


def test_status_command_shows_the_endpoint_and_each_host(
    launch: Launch, sim_region: Region, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    ip = inst["PrivateIpAddress"]
    wait_ssh(ip, sim_key[1])
    result = CliRunner().invoke(sim_cli, ["status"])
    assert result.exit_code == 0, result.output
    assert sim_region.endpoint_url in result.output
    row = next(line for line in result.output.splitlines() if inst["InstanceId"] in line)
    assert ip in row
    assert f"ip-{ip.replace('.', '-')}" in row
    assert "alive" in row


def test_interrupting_an_unknown_instance_is_a_one_line_error(sim_region: Region) -> None:
    result = CliRunner().invoke(sim_cli, ["interrupt", "i-0123456789abcdef0"])
    assert result.exit_code == 1
    assert "cannot interrupt i-0123456789abcdef0" in result.output
    assert "Traceback" not in result.output


@pytest.mark.run_last
def test_up_after_a_crash_cleans_up_and_starts_afresh(
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    wait_ssh(inst["PrivateIpAddress"], sim_key[1])
    old = sim.status()
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)  # the daemon dies; its hosts and bridge stay behind
    wait_until(lambda: not sim.status().alive, what="the daemon to die")  # type: ignore[union-attr]

    new = sim.up(boot_delay=0.2)

    assert not new.reused
    assert new.pid != old.pid and new.endpoint != old.endpoint
    assert hosts.namespaces() == []  # the old instance's host went with the old region


@pytest.mark.run_last
def test_down_leaves_no_namespace_bridge_veth_or_process_behind(
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    ip = inst["PrivateIpAddress"]
    wait_ssh(ip, sim_key[1])
    job = int(ssh(ip, sim_key[1], "nohup sleep 1000 >/dev/null 2>&1 & echo $!").stdout)

    sim.down()

    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split()
    assert [n for n in netns if n.startswith(hosts.NETNS_PREFIX)] == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert hosts.BRIDGE not in links
    assert f" {hosts.VETH_PREFIX}" not in links
    assert pid_gone(job)
    assert our_processes() == []
    assert [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE] == []
    assert sim.status() is None
    with pytest.raises(sim.SimError, match="not running: start it with `provision sim up`"):
        sim.region()
