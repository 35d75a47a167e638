"""Shutting instances down from inside, as EC2 answers it: `poweroff` stops an EBS instance,
or terminates it when launched so (and always a one-time spot instance); `halt` leaves it
running but dead; `reboot` and a stop/start keep its disk. The master powering off its
workers, then itself, is what a cluster's autostop does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from simhelp import (
    Launch,
    background,
    booted,
    describe,
    host_of,
    pid_gone,
    spot_request,
    ssh,
    states_until,
    wait_ssh,
    wait_state,
    wait_until,
)

pytestmark = pytest.mark.e2e



def keyscan(ip: str) -> str:
    """The host key sshd presents, as a client records it in known_hosts."""
    out = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", ip], capture_output=True,
                         text=True).stdout
    return out.split(None, 1)[1].strip()


def test_poweroff_stops_an_ebs_instance_which_starts_again_with_its_disk_and_host_key(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    hostkey = keyscan(pub)
    setup = "echo data | sudo tee /srv/f >/dev/null && echo mine > ~/f && sudo touch /tmp/gone"
    assert ssh(pub, sim_key[1], setup).returncode == 0

    r = ssh(pub, sim_key[1], "sudo poweroff")

    assert r.returncode in (0, 255)  # the command returns, or the session is cut first
    seen = states_until(sim_ec2, iid, "stopped")
    assert seen[0] in ("running", "stopping") and "stopping" in seen  # EC2's default: stop
    stopped = describe(sim_ec2, iid)
    assert stopped["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    assert "PublicIpAddress" not in stopped  # released with the stop
    assert host_of(iid) is None

    sim_ec2.start_instances(InstanceIds=[iid])
    assert describe(sim_ec2, iid)["State"]["Name"] == "pending"
    new_pub = wait_state(sim_ec2, iid, "running")["PublicIpAddress"]
    wait_ssh(new_pub, sim_key[1])
    assert ssh(new_pub, sim_key[1], "cat /srv/f ~/f; ls /tmp").stdout.split() == ["data", "mine"]
    assert keyscan(new_pub) == hostkey  # the same machine, to known_hosts


def test_shutdown_on_the_master_then_itself_terminates_the_cluster_launched_to_terminate(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    terminate = {"InstanceInitiatedShutdownBehavior": "terminate"}
    (master,) = sim_launch(**terminate)
    workers = sim_launch(2, public=False, **terminate)
    pub = master["PublicIpAddress"]
    wait_ssh(pub, sim_key[1])
    for w in workers:
        wait_ssh(w["PrivateIpAddress"], sim_key[1], jump=f"ubuntu@{pub}")
    key = sim_key[1].read_text()
    opts = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes"
    autostop = "; ".join(  # `;`: a worker's session may end before ssh hears "done"
        [f"(umask 077 && printf '%s' '{key}' > ~/.ssh/id_ed25519)"]
        + [f"ssh {opts} {w['PrivateIpAddress']} sudo shutdown -h now" for w in workers]
        + ["sudo shutdown -h now"])

    ssh(pub, sim_key[1], autostop)

    for inst in (master, *workers):  # each went through shutting-down while we waited
        gone = wait_state(sim_ec2, inst["InstanceId"], "terminated")
        assert gone["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
        assert host_of(inst["InstanceId"]) is None


def test_poweroff_terminates_a_one_time_spot_instance_and_closes_its_request(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch(spot=True)  # shutdown behaviour: EC2's default, stop
    wait_ssh(inst["PublicIpAddress"], sim_key[1])

    ssh(inst["PublicIpAddress"], sim_key[1], "sudo systemctl poweroff")

    assert "stopping" not in states_until(sim_ec2, inst["InstanceId"], "terminated")
    req = spot_request(sim_ec2, inst["SpotInstanceRequestId"])
    assert (req["State"], req["Status"]["Code"]) == ("closed", "instance-terminated-by-user")


def test_only_root_shuts_down_and_shutdown_waits_a_minute_unless_cancelled(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    plain = ssh(pub, sim_key[1], "/usr/sbin/poweroff")
    assert plain.returncode == 1 and "authentication required" in plain.stderr
    later = ssh(pub, sim_key[1], "sudo shutdown -h; sudo ls /run/sim; sudo shutdown -c;"
                                 " sudo ls /run/sim")
    assert "Shutdown scheduled" in later.stdout
    assert later.stdout.count("power.json") == 1  # asked, then cancelled
    assert describe(sim_ec2, iid)["State"]["Name"] == "running"


def test_halt_leaves_the_instance_running_unreachable_until_rebooted(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    assert ssh(pub, sim_key[1], "echo data | sudo tee /srv/f >/dev/null").returncode == 0
    job = background(pub, sim_key[1])

    ssh(pub, sim_key[1], "sudo halt", timeout=15)

    wait_until(lambda: (h := host_of(iid)) is not None and h.halted, what="the host to halt")
    wait_until(lambda: pid_gone(job), timeout=5, what="its processes to end")
    r = ssh(pub, sim_key[1], "true")
    assert r.returncode == 255 and "timed out" in r.stderr  # dead silent, not refused
    assert describe(sim_ec2, iid)["State"]["Name"] == "running"  # and billing

    sim_ec2.reboot_instances(InstanceIds=[iid])

    wait_ssh(pub, sim_key[1])
    assert ssh(pub, sim_key[1], "cat /srv/f").stdout == "data\n"
    assert not host_of(iid).halted  # type: ignore[union-attr]


def test_reboot_ends_every_process_and_keeps_the_disk_and_the_address(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    setup = "echo data | sudo tee /srv/f >/dev/null && sudo touch /run/this-boot"
    assert ssh(pub, sim_key[1], setup).returncode == 0
    job = background(pub, sim_key[1])

    ssh(pub, sim_key[1], "sudo reboot")

    wait_until(lambda: pid_gone(job), timeout=5, what="its processes to end")
    # /run is the OS's own tmpfs: without the mark, this is the next boot
    wait_until(lambda: ssh(pub, sim_key[1], "test ! -e /run/this-boot").returncode == 0, 30,
               "the host to boot again")
    assert ssh(pub, sim_key[1], "cat /srv/f").stdout == "data\n"
    assert describe(sim_ec2, iid)["State"]["Name"] == "running"
