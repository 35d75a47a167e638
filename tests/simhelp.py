"""What the simulated-region tests share: ssh as a user runs it, waits for states and
lines (never fixed sleeps), and the questions they ask the region and its hosts.

The fixtures that launch instances (`sim_ec2`, `sim_launch`) are in conftest.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from botocore.exceptions import ClientError

from provision import sim
from provision.sim import hosts
from provision.sim.state import STATE_ROOT

UBUNTU = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
DEBIAN = "/aws/service/debian/release/bookworm/latest/amd64"
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
            "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR"]
# A shell snippet that asks the host's metadata service for $1 (an IMDSv2 token first).
IMDS = ("T=$(curl -s -X PUT http://169.254.169.254/latest/api/token"
        " -H 'X-aws-ec2-metadata-token-ttl-seconds: 60'); q() { curl -s -w ' %{http_code}\\n'"
        " -H \"X-aws-ec2-metadata-token: $T\" http://169.254.169.254/latest/$1; };")

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


def wait_ssh(ip: str, key: Path, user: str = "ubuntu", jump: str | None = None,
             timeout: float = 30) -> None:
    """Until the host lets `user` in: the sim's sshd boots seconds after `running`."""
    def up() -> bool:
        reachable = jump is not None or port_open(ip)
        return reachable and ssh(ip, key, "true", user, jump).returncode == 0

    wait_until(up, timeout, f"{user}@{ip} to answer SSH")


def booted(launch: Launch, key: Path, user: str = "ubuntu", **kw: Any) -> tuple[str, str]:
    """One public instance launched with `kw`, once its host lets `user` in: (id, public IP)."""
    (inst,) = launch(**kw)
    wait_ssh(inst["PublicIpAddress"], key, user)
    return inst["InstanceId"], inst["PublicIpAddress"]


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


def states_until(ec2: Any, iid: str, final: str, timeout: float = 20) -> list[str]:
    """Every state the instance shows on the way to `final` (as a poller sees them)."""
    seen: list[str] = []

    def reached() -> bool:
        name = describe(ec2, iid)["State"]["Name"]
        if not seen or seen[-1] != name:
            seen.append(name)
        return name == final

    wait_until(reached, timeout, f"{iid} to be {final} (seen {seen})")
    return seen


def spot_request(ec2: Any, rid: str) -> dict[str, Any]:
    res = retry_not_found(lambda: ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[rid]))
    return res["SpotInstanceRequests"][0]


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def background(ip: str, key: Path, jump: str | None = None) -> int:
    """Start a long job on the host (as a user's nohup'd work); its PID."""
    return int(ssh(ip, key, "nohup sleep 1000 >/dev/null 2>&1 & echo $!", jump=jump).stdout)


def region_netns() -> set[int]:
    """This region's host namespaces, as nsfs inodes: a process in one belongs to the region.

    A host's sshd is seen by its namespace, not its command line: every region's sshd reads
    ``/run/sim/sshd_config``, and another region (the suite's other e2e group) may be up.
    An inode stays taken while a process is in the namespace, so it still names a leftover
    after the namespace's name is gone.
    """
    root = Path("/run/netns")
    names = os.listdir(root) if root.is_dir() else []
    return {os.stat(root / n).st_ino for n in names if n.startswith(hosts.NETNS_PREFIX)}


def _netns(p: psutil.Process) -> int | None:
    try:
        return os.stat(f"/proc/{p.pid}/ns/net").st_ino
    except OSError:
        return None


def our_processes(netns: set[int] | None = None) -> list[psutil.Process]:
    """Live processes of this region: its daemon (by state path) and anything in `netns`."""
    netns = region_netns() if netns is None else netns
    return [p for p in psutil.process_iter(["cmdline"])
            if str(STATE_ROOT) in " ".join(p.info["cmdline"] or []) or _netns(p) in netns]


def st_hosts() -> tuple[sim.SimHost, ...]:
    st = sim.status()
    return st.hosts if st else ()


def host_of(iid: str) -> sim.SimHost | None:
    return next((h for h in st_hosts() if h.instance_id == iid), None)


def imds(ip: str, key: Path, *items: str) -> list[str]:
    """Lines `<body> <http code>` of the host's metadata for each of `items` (meta-data/...)."""
    out = ssh(ip, key, IMDS + "".join(f" q meta-data/{i};" for i in items)).stdout
    return out.splitlines()


def notice(line: str) -> dict[str, str]:
    """The JSON body of an `imds` line that answered 200."""
    assert line.endswith(" 200"), line
    return dict(json.loads(line[:-4]))
