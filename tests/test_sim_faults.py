"""What goes wrong in a real region, on demand: spot interruptions (of any node, the master
too), a cut link between this machine and one host, and a disk that fills.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner
from simhelp import (
    SSH_OPTS,
    Launch,
    background,
    booted,
    describe,
    host_of,
    imds,
    notice,
    pid_gone,
    port_open,
    spot_request,
    ssh,
    st_hosts,
    wait_ssh,
    wait_state,
    wait_until,
)

from provision import sim
from provision.cloud.common import Region
from provision.sim import hosts
from provision.sim.cli import sim as sim_cli

pytestmark = pytest.mark.e2e

# --- spot interruptions ------------------------------------------------------------------


def test_interruption_notice_is_on_the_hosts_metadata_before_the_host_goes(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch(spot=True)
    pub, iid, rid = inst["PublicIpAddress"], inst["InstanceId"], inst["SpotInstanceRequestId"]
    wait_ssh(pub, sim_key[1])
    tokenless = ssh(pub, sim_key[1], "curl -s -o /dev/null -w '%{http_code}' "
                                     "http://169.254.169.254/latest/meta-data/").stdout
    assert tokenless == "401"  # HttpTokens=required: IMDSv2 only
    before = imds(pub, sim_key[1], "instance-id", "local-ipv4", "public-ipv4",
                  "placement/availability-zone", "instance-type", "instance-life-cycle",
                  "spot/instance-action")
    assert before == [f"{iid} 200", f"{inst['PrivateIpAddress']} 200", f"{pub} 200",
                      "us-east-1a 200", "c5.large 200", "spot 200", "Not Found 404"]

    when = sim.interrupt(iid, notice=4)

    assert notice(imds(pub, sim_key[1], "spot/instance-action")[0]) == {
        "action": "terminate", "time": when}
    assert describe(sim_ec2, iid)["State"]["Name"] == "running"  # notice first...
    req = wait_until(lambda: (r := spot_request(sim_ec2, rid))["Status"]["Code"] ==
                     "marked-for-termination" and r, 5, "the request to be marked")
    assert req["State"] == "closed"  # as AWS closes it while the instance still runs
    gone = wait_state(sim_ec2, iid, "shutting-down", timeout=15)  # ...then the interruption
    assert gone["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    req = spot_request(sim_ec2, rid)
    assert (req["State"], req["Status"]["Code"]) == ("closed", "instance-terminated-no-capacity")
    wait_until(lambda: iid not in {h.instance_id for h in st_hosts()}, what="the host to go")


def test_interrupting_the_master_with_a_notice_leaves_its_workers_running(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (master,) = sim_launch()  # on demand: `sim interrupt` takes any instance, as "the master goes"
    (worker,) = sim_launch(public=False, spot=True)
    pub = master["PublicIpAddress"]
    jump = f"ubuntu@{pub}"
    wait_ssh(pub, sim_key[1])
    wait_ssh(worker["PrivateIpAddress"], sim_key[1], jump=jump)
    job = background(worker["PrivateIpAddress"], sim_key[1], jump=jump)

    when = sim.interrupt(master["InstanceId"], notice=3)

    assert notice(imds(pub, sim_key[1], "spot/instance-action")[0])["time"] == when
    wait_state(sim_ec2, master["InstanceId"], "shutting-down", timeout=15)
    wait_until(lambda: host_of(master["InstanceId"]) is None, what="the master's host to go")
    assert not port_open(pub)
    assert describe(sim_ec2, worker["InstanceId"])["State"]["Name"] == "running"
    assert spot_request(sim_ec2, worker["SpotInstanceRequestId"])["State"] == "active"
    assert host_of(worker["InstanceId"]).sshd_alive and not pid_gone(job)  # type: ignore[union-attr]


def test_interrupt_kills_work_running_on_that_host(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    pid = background(pub, sim_key[1])
    assert not pid_gone(pid)

    sim.interrupt(iid)

    wait_until(lambda: pid_gone(pid), timeout=2, what=f"pid {pid} to die")
    assert host_of(iid) is None and not port_open(pub)
    assert describe(sim_ec2, iid)["State"]["Name"] in ("shutting-down", "terminated")


def test_terminating_an_instance_removes_its_host_while_it_shuts_down(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch()
    ip = inst["PrivateIpAddress"]
    wait_ssh(inst["PublicIpAddress"], sim_key[1])
    sim_ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    wait_until(lambda: hosts.netns_name(ip) not in hosts.namespaces(), what="the namespace to go")
    assert describe(sim_ec2, inst["InstanceId"])["State"]["Name"] == "shutting-down"
    assert not port_open(inst["PublicIpAddress"])
    assert "PublicIpAddress" not in wait_state(sim_ec2, inst["InstanceId"], "terminated")


def test_interrupting_an_unknown_instance_is_a_one_line_error(sim_region: Region) -> None:
    result = CliRunner().invoke(sim_cli, ["interrupt", "i-0123456789abcdef0"])
    assert result.exit_code == 1
    assert "cannot interrupt i-0123456789abcdef0" in result.output
    assert "Traceback" not in result.output


# --- a cut link --------------------------------------------------------------------------


class EchoSession:
    """An open ssh session that answers each line it is sent: an established TCP connection."""

    def __init__(self, ip: str, key: Path) -> None:
        self.proc = subprocess.Popen(
            ["ssh", "-i", str(key), *SSH_OPTS, f"ubuntu@{ip}",
             "while read -r l; do echo got-$l; done"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout or ()],
                         daemon=True).start()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")

    def answer(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout).strip()
        except queue.Empty:
            raise AssertionError(f"no answer within {timeout}s") from None

    def retransmitting(self) -> bool:
        """Whether TCP has resent unanswered data on the session's connection (ss(8))."""
        ports = [c.laddr.port for c in psutil.Process(self.proc.pid).net_connections("tcp")]
        out = subprocess.run(["ss", "-tinH", f"sport = :{ports[0]}"] if ports else ["true"],
                             capture_output=True, text=True).stdout
        return "retrans:" in out

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(10)


def test_a_cut_silences_the_laptop_link_but_not_the_private_plane_and_heals(
    sim_launch: Launch, sim_key: tuple[str, Path], tmp_path: Path
) -> None:
    a, b = sim_launch(2)
    iid = a["InstanceId"]
    for h in (a, b):
        wait_ssh(h["PublicIpAddress"], sim_key[1])
    session = EchoSession(a["PublicIpAddress"], sim_key[1])
    session.send("one")
    assert session.answer(10) == "got-one"

    sim.cut(iid)
    try:
        assert "cut" in CliRunner().invoke(sim_cli, ["status"]).output
        t = time.monotonic()
        r = ssh(a["PublicIpAddress"], sim_key[1], "true")
        assert r.returncode == 255 and "timed out" in r.stderr, r.stderr  # silence
        assert time.monotonic() - t >= 2.5  # ConnectTimeout=3: it waited, nothing answered
        # As on a long cut, this machine forgets the host's MAC; asking again must not
        # earn a quick "no route to host" (an unanswered ARP) where the internet is silent.
        subprocess.run(["ip", "neigh", "flush", "dev", hosts.PUBLIC_BRIDGE], check=True)
        with pytest.raises(TimeoutError):
            socket.create_connection((a["PublicIpAddress"], 22), timeout=5)
        # host to host on the private plane: through b, to a's private address
        blob = tmp_path / "1mb"
        blob.write_bytes(os.urandom(1_000_000))
        with blob.open("rb") as f:
            over = ssh(a["PrivateIpAddress"], sim_key[1], "wc -c", stdin=f,
                       jump=f"ubuntu@{b['PublicIpAddress']}")
        assert over.returncode == 0 and over.stdout.split() == [b"1000000"]
        # Into the void: heal once TCP has resent it. Sent earlier, a long cut (a busy
        # machine) would back the next resend off past any sane wait (up to 120 s).
        session.send("two")
        wait_until(session.retransmitting, 30, "TCP to resend the unanswered line")
    finally:
        assert sim.heal(iid)
    assert session.answer(30) == "got-two"  # the connection lived through the cut
    assert session.close() == 0
    wait_ssh(a["PublicIpAddress"], sim_key[1], timeout=10)
    assert not sim.heal(iid)  # healing twice is a no-op


def test_a_cut_for_some_seconds_heals_by_itself(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    result = CliRunner().invoke(sim_cli, ["cut", iid, "--seconds", "3"])
    assert result.exit_code == 0, result.output
    t = time.monotonic()
    assert "left)" in CliRunner().invoke(sim_cli, ["status"]).output  # "cut (3s left)"
    assert 0 < host_of(iid).cut_until - time.time() <= 3  # type: ignore[union-attr,operator]
    assert not port_open(pub, timeout=1)
    wait_ssh(pub, sim_key[1], timeout=15)
    assert time.monotonic() - t >= 2  # not before its time
    assert host_of(iid).cut_until is None  # type: ignore[union-attr]


def test_cutting_a_private_only_or_unknown_instance_is_a_one_line_error(
    sim_launch: Launch
) -> None:
    (worker,) = sim_launch(public=False)
    wait_until(lambda: host_of(worker["InstanceId"]), what="the worker's host")
    for iid, says in ((worker["InstanceId"], "has no public address"),
                      ("i-0123456789abcdef0", "has no host")):
        result = CliRunner().invoke(sim_cli, ["cut", iid])
        assert result.exit_code == 1 and says in result.output, result.output
        assert "Traceback" not in result.output
    bad = CliRunner().invoke(sim_cli, ["cut", worker["InstanceId"], "--seconds", "0"])
    assert bad.exit_code == 2 and "--seconds" in bad.output


# --- a small disk ------------------------------------------------------------------------


def test_a_shrunk_data_disk_keeps_its_files_and_fills_with_enospc(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    assert ssh(pub, sim_key[1], "echo kept | sudo tee /srv/f >/dev/null").returncode == 0

    result = CliRunner().invoke(sim_cli, ["disk", iid, "--size", "5M"])

    assert result.exit_code == 0, result.output
    assert "5242880 bytes" in result.output
    r = ssh(pub, sim_key[1], "cat /srv/f; df -B1 --output=size /srv | tail -1;"
                             " sudo dd if=/dev/zero of=/srv/big bs=1M count=8 2>&1; echo rc=$?")
    lines = [line.strip() for line in r.stdout.splitlines()]
    assert lines[:2] == ["kept", "5242880"]
    assert "No space left on device" in r.stdout and lines[-1] == "rc=1"
    refused = CliRunner().invoke(sim_cli, ["disk", iid, "--size", "1k"])
    assert refused.exit_code == 1 and "already holds" in refused.output
    bad = CliRunner().invoke(sim_cli, ["disk", iid, "--size", "small"])
    assert bad.exit_code == 2 and "--size" in bad.output
