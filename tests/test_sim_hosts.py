"""The simulated region's hosts as a user meets them: addresses on two planes, images with
their own users, private disks, a status table, and a WAN between this machine and them.

Timing and consistency are on (the session region's default): every wait here waits
for a state, a line or an address, with a timeout; none sleeps blindly.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from simhelp import AL2023, DEBIAN, UBUNTU, Launch, ssh, wait_ssh

from provision import sim
from provision.cloud.common import Region
from provision.sim.cli import sim as sim_cli
from provision.sim.state import PUBLIC_CIDR, PUBLIC_GATEWAY, SUBNET_CIDR

pytestmark = pytest.mark.e2e


def test_public_instance_is_an_ssh_host_at_its_public_ip_with_its_private_one_on_eth0(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch()
    ip, pub = inst["PrivateIpAddress"], inst["PublicIpAddress"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET_CIDR)
    assert ipaddress.ip_address(pub) in ipaddress.ip_network(PUBLIC_CIDR)
    wait_ssh(pub, sim_key[1])
    r = ssh(pub, sim_key[1], "hostname; ip -o -4 addr show eth0; ip route")
    assert r.stdout.splitlines()[0] == f"ip-{ip.replace('.', '-')}"
    assert f"{ip}/24" in r.stdout
    assert "default" not in r.stdout  # hosts reach the planes only, nothing beyond


def test_private_only_instance_is_reachable_only_through_a_public_one(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    master, worker = sim_launch()[0], sim_launch(public=False)[0]
    assert "PublicIpAddress" not in worker
    jump = f"ubuntu@{master['PublicIpAddress']}"
    wait_ssh(master["PublicIpAddress"], sim_key[1])
    wait_ssh(worker["PrivateIpAddress"], sim_key[1], jump=jump)

    with pytest.raises(OSError):  # the laptop has no route into the private plane
        socket.create_connection((worker["PrivateIpAddress"], 22), timeout=2)
    with pytest.raises(OSError):
        socket.create_connection((master["PrivateIpAddress"], 22), timeout=2)
    r = ssh(worker["PrivateIpAddress"], sim_key[1], f"hostname; ip route get {PUBLIC_GATEWAY}",
            jump=jump)
    assert r.stdout.splitlines()[0] == f"ip-{worker['PrivateIpAddress'].replace('.', '-')}"
    assert "unreachable" in r.stderr  # a private host cannot reach the laptop either


def test_a_public_host_reaches_the_laptops_side_of_the_public_plane(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch()
    pub = inst["PublicIpAddress"]
    with socket.create_server((PUBLIC_GATEWAY, 0)) as srv:  # a mirror the laptop would serve
        port = srv.getsockname()[1]
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(srv.accept()[0].recv(64)), daemon=True)
        t.start()
        wait_ssh(pub, sim_key[1])
        send = f"cat > /dev/tcp/{PUBLIC_GATEWAY}/{port}"
        r = ssh(pub, sim_key[1], f"echo mirror-ok | timeout 5 bash -c '{send}'")
        assert r.returncode == 0, r.stderr
        t.join(5)
    assert got == [b"mirror-ok\n"]


@pytest.mark.parametrize(
    ("param", "user", "name", "has_python"),
    [(UBUNTU, "ubuntu", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-", True),
     (AL2023, "ec2-user", "al2023-ami-2023.", False),
     (DEBIAN, "admin", "debian-12-amd64-", True)],
)
def test_each_image_logs_in_as_its_user_with_sudo_and_refuses_root(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path], param: str, user: str, name: str,
    has_python: bool,
) -> None:
    (inst,) = sim_launch(image=param)
    (image,) = sim_ec2.describe_images(ImageIds=[inst["ImageId"]])["Images"]
    assert image["Name"].startswith(name)  # how code finds the family (and so the user) on AWS
    pub = inst["PublicIpAddress"]
    wait_ssh(pub, sim_key[1], user)
    r = ssh(pub, sim_key[1], "id -un; sudo -n id -u; echo $HOME; ls -A /work | wc -l;"
            " ls /root >/dev/null 2>&1 || echo no-root;"
            " command -v python3 && python3 -c 'import sys; print(sys.version_info[:2])';"
            " ls /usr/bin/python3* 2>/dev/null | wc -l", user)
    lines = r.stdout.split()
    assert lines[:5] == [user, "0", f"/home/{user}", "0", "no-root"]  # none of the laptop's
    if has_python:
        assert "(3, 11)" in r.stdout
    else:
        assert lines[5:] == ["0"]  # no python3 anywhere the client would look
    root = ssh(pub, sim_key[1], "true", user="root")
    assert root.returncode == 255 and "Permission denied" in root.stderr
    users = [line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()]
    assert user not in users  # this machine's /etc is untouched


def test_files_under_srv_and_home_on_one_host_are_invisible_on_another(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    a, b = (i["PublicIpAddress"] for i in sim_launch(2))
    wait_ssh(a, sim_key[1])
    wait_ssh(b, sim_key[1])
    r = ssh(a, sim_key[1],
            "sudo sh -c 'echo data > /srv/only-here' && echo x > ~/mine && cat /srv/only-here")
    assert r.stdout == "data\n"
    assert ssh(b, sim_key[1], "test -e /srv/only-here || test -e ~/mine").returncode == 1


# --- timing and eventual consistency -------------------------------------------------------


def test_status_command_shows_the_planes_and_each_host(
    sim_launch: Launch, sim_region: Region, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch()
    wait_ssh(inst["PublicIpAddress"], sim_key[1])
    result = CliRunner().invoke(sim_cli, ["status"])
    assert result.exit_code == 0, result.output
    assert sim_region.endpoint_url in result.output and PUBLIC_CIDR in result.output
    row = next(line for line in result.output.splitlines() if inst["InstanceId"][:12] in line)
    assert inst["PrivateIpAddress"] in row and inst["PublicIpAddress"] in row
    assert "ubuntu" in row and "alive" in row


# --- the WAN -----------------------------------------------------------------------------


def test_uplink_shaping_slows_the_laptop_to_host_path_only(
    sim_launch: Launch, sim_key: tuple[str, Path], tmp_path: Path
) -> None:
    a, b = sim_launch(2)
    for h in (a, b):
        wait_ssh(h["PublicIpAddress"], sim_key[1])
    blob = tmp_path / "10mb"
    blob.write_bytes(os.urandom(10_000_000))

    def upload() -> float:
        with blob.open("rb") as f:
            t = time.monotonic()
            assert ssh(a["PublicIpAddress"], sim_key[1], "cat > /dev/null", stdin=f).returncode == 0
            return time.monotonic() - t

    fast = upload()
    sim.up(uplink="20mbit")
    try:
        assert "uplink 20mbit" in CliRunner().invoke(sim_cli, ["status"]).output
        slow = upload()
        # host to host, on the private plane: a python sink on b, a sender on a
        sink = ("nohup python3 -c \"import socket; s=socket.create_server(('0.0.0.0', 9000));"
                " c=s.accept()[0]; [0 for _ in iter(lambda: c.recv(1 << 20), b'')]\""
                " >/dev/null 2>&1 & sleep 0.3")
        assert ssh(b["PublicIpAddress"], sim_key[1], sink).returncode == 0
        send = ("python3 -c \"import socket, time; t=time.monotonic();"
                f" c=socket.create_connection(('{b['PrivateIpAddress']}', 9000));"
                " c.sendall(bytes(10_000_000)); c.close(); print(time.monotonic()-t)\"")
        lan = float(ssh(a["PublicIpAddress"], sim_key[1], send).stdout)
    finally:
        sim.up(uplink="off")
    print(f"10 MB laptop->host: {fast:.2f}s unshaped, {slow:.2f}s at 20mbit; "
          f"host->host {lan:.3f}s")
    assert 3.0 < slow < 8.0 and fast < 1.5  # 80 Mbit at 20 Mbit/s: ~4 s
    assert lan < 1.0


def test_rtt_delays_the_laptop_to_host_path_or_names_the_missing_netem(
    sim_launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (a,) = sim_launch()
    wait_ssh(a["PublicIpAddress"], sim_key[1])

    def connect_ms() -> float:
        t = time.monotonic()
        with socket.create_connection((a["PublicIpAddress"], 22), timeout=5):
            return 1000 * (time.monotonic() - t)

    before = min(connect_ms() for _ in range(3))
    try:
        sim.up(rtt="40ms")
    except sim.SimError as e:  # this kernel cannot delay: a one-line error, nothing changed
        assert "netem" in str(e) and "\n" not in str(e)
        assert "not shaped" in CliRunner().invoke(sim_cli, ["status"]).output
        return
    try:
        after = min(connect_ms() for _ in range(3))
    finally:
        sim.up(rtt="off")
    assert before < 10 and after >= 35
