"""The simulated region as AWS behaves, used raw: boto3 calls in, ssh to its hosts.

Timing and consistency are on (the session region's default): every wait here
waits for a state, a line or an address, with a timeout; none sleeps blindly.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from provision import sim
from provision.cloud.common import Region
from provision.sim import hosts, net
from provision.sim.cli import sim as sim_cli
from provision.sim.state import PUBLIC_CIDR, PUBLIC_GATEWAY, STATE_ROOT, SUBNET_CIDR, client

pytestmark = pytest.mark.e2e

UBUNTU = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
DEBIAN = "/aws/service/debian/release/bookworm/latest/amd64"
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
            "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR"]

Launch = Callable[..., list[dict[str, Any]]]


def ssh(ip: str, key: Path, command: str, user: str = "ubuntu", jump: str | None = None,
        timeout: float = 30, stdin: Any = None) -> subprocess.CompletedProcess[str]:
    """ssh(1) as a user would run it; `jump` = "user@public-ip" to go through another host."""
    opts = ["-i", str(key), *SSH_OPTS]
    if jump:  # ProxyCommand, so the options (key, no known_hosts) apply to the hop too
        opts += ["-o", "ProxyCommand=" + " ".join(["ssh", *opts, "-W", "%h:%p", jump])]
    return subprocess.run(["ssh", *opts, f"{user}@{ip}", command], capture_output=True,
                          text=stdin is None, timeout=timeout, stdin=stdin)


def wait_until(cond: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := cond()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return result


def port_open(ip: str, port: int = 22, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ssh(ip: str, key: Path, user: str = "ubuntu", jump: str | None = None) -> None:
    """Until the host lets `user` in: the sim's sshd boots seconds after `running`."""
    def up() -> bool:
        reachable = jump is not None or port_open(ip)
        return reachable and ssh(ip, key, "true", user, jump).returncode == 0

    wait_until(up, 30, f"{user}@{ip} to answer SSH")


def retry_not_found(fn: Callable[[], Any], timeout: float = 10) -> Any:
    """Call `fn` until the API stops answering *.NotFound for a new id (AWS's advice)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ClientError as e:
            if not e.response["Error"]["Code"].endswith("NotFound") or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def describe(ec2: Any, iid: str) -> dict[str, Any]:
    res = retry_not_found(lambda: ec2.describe_instances(InstanceIds=[iid]))
    return res["Reservations"][0]["Instances"][0]


def wait_state(ec2: Any, iid: str, state: str, timeout: float = 20) -> dict[str, Any]:
    return wait_until(lambda: (d := describe(ec2, iid))["State"]["Name"] == state and d,
                      timeout, f"{iid} to be {state}")


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def our_processes() -> list[psutil.Process]:
    """Live processes the region made: the daemon and every host's sshd."""
    return [p for p in psutil.process_iter(["cmdline"])
            if any(m in " ".join(p.info["cmdline"] or []) for m in (str(STATE_ROOT), "/run/sim/"))]


@pytest.fixture
def region(sim_region: Region) -> Region:
    """The region as it is now (a run_last test restarts it under a new endpoint)."""
    return sim.region()


@pytest.fixture
def ec2(region: Region) -> Any:
    return client("ec2", region.endpoint_url or "")


@pytest.fixture
def launch(region: Region, ec2: Any, sim_key: tuple[str, Path]) -> Iterator[Launch]:
    """Run c5.large instances in the sim subnet; returns them once `running`; terminated after."""
    ids: list[str] = []
    ssm = client("ssm", region.endpoint_url or "")

    def run(count: int = 1, *, public: bool = True, image: str = UBUNTU, spot: bool = False,
            groups: list[str] | None = None, wait: bool = True) -> list[dict[str, Any]]:
        nic: dict[str, Any] = {"DeviceIndex": 0, "SubnetId": region.subnet_id,
                               "AssociatePublicIpAddress": public}
        if groups:
            nic["Groups"] = groups
        market = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
        r = ec2.run_instances(
            ImageId=ssm.get_parameter(Name=image)["Parameter"]["Value"], InstanceType="c5.large",
            MinCount=count, MaxCount=count, KeyName=sim_key[0], NetworkInterfaces=[nic],
            MetadataOptions={"HttpTokens": "required"}, **market,
        )
        ids.extend(i["InstanceId"] for i in r["Instances"])
        if not wait:
            return list(r["Instances"])
        return [wait_state(ec2, i["InstanceId"], "running") for i in r["Instances"]]

    yield run
    st = sim.status()
    if ids and st is not None and st.alive and st.endpoint == region.endpoint_url:
        retry_not_found(lambda: ec2.terminate_instances(InstanceIds=ids))
        wait_until(lambda: not set(ids) & {h.instance_id for h in st_hosts()}, what="hosts to go")


def st_hosts() -> tuple[sim.SimHost, ...]:
    st = sim.status()
    return st.hosts if st else ()


# --- hosts, addresses, images -----------------------------------------------------------


def test_public_instance_is_an_ssh_host_at_its_public_ip_with_its_private_one_on_eth0(
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    ip, pub = inst["PrivateIpAddress"], inst["PublicIpAddress"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET_CIDR)
    assert ipaddress.ip_address(pub) in ipaddress.ip_network(PUBLIC_CIDR)
    wait_ssh(pub, sim_key[1])
    r = ssh(pub, sim_key[1], "hostname; ip -o -4 addr show eth0; ip route")
    assert r.stdout.splitlines()[0] == f"ip-{ip.replace('.', '-')}"
    assert f"{ip}/24" in r.stdout
    assert "default" not in r.stdout  # hosts reach the planes only, nothing beyond


def test_private_only_instance_is_reachable_only_through_a_public_one(
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    master, worker = launch()[0], launch(public=False)[0]
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
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
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
    launch: Launch, ec2: Any, sim_key: tuple[str, Path], param: str, user: str, name: str,
    has_python: bool,
) -> None:
    (inst,) = launch(image=param)
    (image,) = ec2.describe_images(ImageIds=[inst["ImageId"]])["Images"]
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
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    a, b = (i["PublicIpAddress"] for i in launch(2))
    wait_ssh(a, sim_key[1])
    wait_ssh(b, sim_key[1])
    r = ssh(a, sim_key[1],
            "sudo sh -c 'echo data > /srv/only-here' && echo x > ~/mine && cat /srv/only-here")
    assert r.stdout == "data\n"
    assert ssh(b, sim_key[1], "test -e /srv/only-here || test -e ~/mine").returncode == 1


# --- timing and eventual consistency -------------------------------------------------------


def test_new_instances_pend_unknown_to_the_api_for_a_moment_then_run_with_a_public_ip(
    launch: Launch, ec2: Any
) -> None:
    start = time.monotonic()
    insts = launch(3, wait=False)
    ids = [i["InstanceId"] for i in insts]
    assert {i["State"]["Name"] for i in insts} == {"pending"}
    assert all(i["PrivateIpAddress"] and "PublicIpAddress" not in i for i in insts)
    codes = []
    for iid in ids:
        tag = [{"Key": "k", "Value": "v"}]
        for call, kw in ((ec2.describe_instances, {"InstanceIds": [iid]}),
                         (ec2.create_tags, {"Resources": [iid], "Tags": tag})):
            try:
                call(**kw)
            except ClientError as e:
                codes.append(e.response["Error"]["Code"])
    assert "InvalidInstanceID.NotFound" in codes  # 3 windows of 0-2 s: at least one still open
    pending = describe(ec2, ids[0])
    assert pending["State"]["Name"] == "pending" and "PublicIpAddress" not in pending
    running = wait_state(ec2, ids[0], "running")
    assert time.monotonic() - start >= 1.5  # pending lasts seconds (2-4 s by default)
    assert ipaddress.ip_address(running["PublicIpAddress"]) in ipaddress.ip_network(PUBLIC_CIDR)


def test_a_new_group_is_briefly_unknown_and_cannot_be_deleted_while_its_instance_shuts_down(
    launch: Launch, ec2: Any, region: Region
) -> None:
    vpc = ec2.describe_subnets(SubnetIds=[region.subnet_id])["Subnets"][0]["VpcId"]
    groups = [ec2.create_security_group(GroupName=f"t-{os.getpid()}-{time.monotonic_ns()}-{n}",
                                        Description="test", VpcId=vpc)["GroupId"] for n in range(3)]
    codes = []
    for gid in groups:
        try:
            ec2.describe_security_groups(GroupIds=[gid])
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
    assert "InvalidGroup.NotFound" in codes
    for gid in groups[1:]:
        retry_not_found(lambda g=gid: ec2.delete_security_group(GroupId=g))
    gid = groups[0]
    retry_not_found(lambda: ec2.authorize_security_group_ingress(
        GroupId=gid, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                     "IpRanges": [{"CidrIp": region.ssh_cidr}]}]))
    (inst,) = launch(groups=[gid])
    with pytest.raises(ClientError, match="DependencyViolation"):
        ec2.delete_security_group(GroupId=gid)  # running
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    assert describe(ec2, inst["InstanceId"])["State"]["Name"] == "shutting-down"
    with pytest.raises(ClientError, match="DependencyViolation"):
        ec2.delete_security_group(GroupId=gid)  # still shutting down
    wait_state(ec2, inst["InstanceId"], "terminated")
    ec2.delete_security_group(GroupId=gid)


def test_spot_prices_vary_by_zone_and_over_time_around_a_realistic_level(ec2: Any) -> None:
    day = ec2.describe_spot_price_history(
        InstanceTypes=["c5.large"], StartTime=time.time() - 86400
    )["SpotPriceHistory"]
    prices = [float(p["SpotPrice"]) for p in day]
    assert all(0.015 < p < 0.05 for p in prices)  # c5.large on demand: 0.085 USD/h
    by_zone: dict[str, set[float]] = {}
    for p in day:
        by_zone.setdefault(p["AvailabilityZone"], set()).add(float(p["SpotPrice"]))
    assert len(by_zone) >= 3 and all(len(v) >= 3 for v in by_zone.values())
    now = ec2.describe_spot_price_history(InstanceTypes=["c5.large"], StartTime=time.time())
    assert len({p["SpotPrice"] for p in now["SpotPriceHistory"]}) > 1  # zones differ


# --- interruptions, termination ------------------------------------------------------------


def test_interruption_notice_is_on_the_hosts_metadata_before_the_host_goes(
    launch: Launch, ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch(spot=True)
    pub, iid = inst["PublicIpAddress"], inst["InstanceId"]
    wait_ssh(pub, sim_key[1])
    imds = ("T=$(curl -s -X PUT http://169.254.169.254/latest/api/token"
            " -H 'X-aws-ec2-metadata-token-ttl-seconds: 60'); q() { curl -s -w ' %{http_code}\\n'"
            " -H \"X-aws-ec2-metadata-token: $T\" http://169.254.169.254/latest/$1; };"
            " curl -s -o /dev/null -w '%{http_code}\\n' http://169.254.169.254/latest/meta-data/;")
    items = ["instance-id", "local-ipv4", "public-ipv4", "placement/availability-zone",
             "instance-type", "instance-life-cycle", "spot/instance-action"]
    before = ssh(pub, sim_key[1], imds + "".join(f" q meta-data/{i};" for i in items)).stdout
    assert before.splitlines() == ["401", f"{iid} 200", f"{inst['PrivateIpAddress']} 200",
                                   f"{pub} 200", "us-east-1a 200", "c5.large 200", "spot 200",
                                   "Not Found 404"]

    when = sim.interrupt(iid, notice=4)

    notice = ssh(pub, sim_key[1], imds + " q meta-data/spot/instance-action").stdout.splitlines()
    assert notice[1].endswith(" 200")
    assert json.loads(notice[1][:-4]) == {"action": "terminate", "time": when}
    assert describe(ec2, iid)["State"]["Name"] == "running"  # notice first...
    gone = wait_state(ec2, iid, "shutting-down", timeout=15)  # ...then the interruption
    assert gone["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    wait_until(lambda: iid not in {h.instance_id for h in st_hosts()}, what="the host to go")


def test_interrupt_kills_work_running_on_that_host(
    launch: Launch, ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    pub = inst["PublicIpAddress"]
    wait_ssh(pub, sim_key[1])
    pid = int(ssh(pub, sim_key[1], "nohup sleep 1000 >/dev/null 2>&1 & echo $!").stdout)
    assert not pid_gone(pid)

    sim.interrupt(inst["InstanceId"])

    wait_until(lambda: pid_gone(pid), timeout=2, what=f"pid {pid} to die")
    assert hosts.netns_name(inst["PrivateIpAddress"]) not in hosts.namespaces()
    assert describe(ec2, inst["InstanceId"])["State"]["Name"] in ("shutting-down", "terminated")


def test_terminating_an_instance_removes_its_host_while_it_shuts_down(
    launch: Launch, ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    ip = inst["PrivateIpAddress"]
    wait_ssh(inst["PublicIpAddress"], sim_key[1])
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    wait_until(lambda: hosts.netns_name(ip) not in hosts.namespaces(), what="the namespace to go")
    assert describe(ec2, inst["InstanceId"])["State"]["Name"] == "shutting-down"
    assert not port_open(inst["PublicIpAddress"])
    assert "PublicIpAddress" not in wait_state(ec2, inst["InstanceId"], "terminated")


def test_interrupting_an_unknown_instance_is_a_one_line_error(sim_region: Region) -> None:
    result = CliRunner().invoke(sim_cli, ["interrupt", "i-0123456789abcdef0"])
    assert result.exit_code == 1
    assert "cannot interrupt i-0123456789abcdef0" in result.output
    assert "Traceback" not in result.output


# --- the WAN ---------------------------------------------------------------------------------


def test_uplink_shaping_slows_the_laptop_to_host_path_only(
    launch: Launch, sim_key: tuple[str, Path], tmp_path: Path
) -> None:
    a, b = launch(2)
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
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (a,) = launch()
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


def test_bad_uplink_is_a_usage_error_naming_the_flag(sim_region: Region) -> None:
    result = CliRunner().invoke(sim_cli, ["up", "--uplink", "fast"])
    assert result.exit_code == 2 and "--uplink" in result.output
    assert "not shaped" in CliRunner().invoke(sim_cli, ["status"]).output


# --- the region itself --------------------------------------------------------------------


def test_up_twice_reuses_the_running_region_and_refuses_to_switch_its_timing(
    sim_region: Region,
) -> None:
    again = sim.up()
    assert again.reused and again.endpoint == sim_region.endpoint_url
    assert sim.region() == sim_region
    result = CliRunner().invoke(sim_cli, ["up", "--instant"])
    assert result.exit_code == 1 and "`provision sim down` first" in result.output
    assert sim.status().endpoint == sim_region.endpoint_url  # type: ignore[union-attr]


def test_status_command_shows_the_planes_and_each_host(
    launch: Launch, sim_region: Region, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    wait_ssh(inst["PublicIpAddress"], sim_key[1])
    result = CliRunner().invoke(sim_cli, ["status"])
    assert result.exit_code == 0, result.output
    assert sim_region.endpoint_url in result.output and PUBLIC_CIDR in result.output
    row = next(line for line in result.output.splitlines() if inst["InstanceId"][:12] in line)
    assert inst["PrivateIpAddress"] in row and inst["PublicIpAddress"] in row
    assert "ubuntu" in row and "alive" in row


def test_simulated_addresses_never_route_to_the_default_gateway(sim_region: Region) -> None:
    private = net.SUBNET_CIDR.replace("0/24", "9")
    public = net.PUBLIC_CIDR.replace("0/24", "9")
    via = subprocess.run(["ip", "route", "get", public], capture_output=True, text=True).stdout
    assert f"dev {hosts.PUBLIC_BRIDGE}" in via  # up: the public plane's own bridge
    blocked = subprocess.run(["ip", "route", "get", private], capture_output=True, text=True)
    assert blocked.returncode != 0  # the laptop has no way into the private plane


@pytest.mark.run_last
def test_up_after_a_crash_cleans_up_and_starts_afresh(
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
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
    launch: Launch, sim_key: tuple[str, Path]
) -> None:
    (inst,) = launch()
    pub = inst["PublicIpAddress"]
    wait_ssh(pub, sim_key[1])
    job = int(ssh(pub, sim_key[1], "nohup sleep 1000 >/dev/null 2>&1 & echo $!").stdout)

    sim.down()

    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split()
    assert [n for n in netns if n.startswith(hosts.NETNS_PREFIX)] == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for name in (hosts.BRIDGE, hosts.PUBLIC_BRIDGE, f" {hosts.VETH_PREFIX}",
                 f" {hosts.PUBLIC_VETH_PREFIX}"):
        assert name not in links
    assert [r.split()[0] for r in net.routes()] == ["blackhole", "blackhole"]
    gone = subprocess.run(["ip", "route", "get", pub], capture_output=True, text=True)
    assert gone.returncode != 0 and "dev eth" not in gone.stdout  # never the default gateway
    assert pid_gone(job)
    assert our_processes() == []
    assert [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE] == []
    assert sim.status() is None
    assert {p.name for p in STATE_ROOT.iterdir()} <= {"daemon.log", "hosts", "lock"}
    with pytest.raises(sim.SimError, match="not running: start it with `provision sim up`"):
        sim.region()
