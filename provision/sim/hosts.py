"""Simulated hosts: one network namespace per instance, with its own sshd.

Follows the probe in ``shared/SIMULATED_REGION.md``. A host has its own network
stack: eth0 on the private bridge at the instance's private address and, for an
instance with a public address, eth1 on the public bridge; no default route, and
169.254.169.254 on its loopback for the metadata service. Its file system is the
image's view of this machine (see `hostfs`): own users, home, /etc files, /tmp,
hostname, and nothing of the laptop's. It shares the process table with this
machine, so killing the namespace's processes is exactly "the instance vanished".

Needs root, ``ip`` (iproute2), ``sshd`` (openssh-server) and ``sudo``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provision.errors import BadInput
from provision.sim import hostfs, power
from provision.sim.hostfs import INSIDE, ROOT_LOGIN, Login

# Several regions can run side by side on one machine (one per checkout, or per
# test worker), each with its own id 0-9: bridge, namespaces, veths, subnet and
# state directory all carry it, so one region never reaps or routes another's hosts.
SIM_ID = int(os.environ.get("PROVISION_SIM_ID", "0"))
if not 0 <= SIM_ID <= 9:
    raise ValueError(f"PROVISION_SIM_ID must be 0-9, got {SIM_ID}")
_SUFFIX = str(SIM_ID) if SIM_ID else ""
BRIDGE = f"psim{SIM_ID}"  # the private plane
PUBLIC_BRIDGE = f"psimpub{SIM_ID}"  # the public plane
NETNS_PREFIX = f"psim{_SUFFIX}-"
# "-" before the host number: region 3's host 4 and region 0's host 34 must differ.
VETH_PREFIX = f"psv{_SUFFIX}-"
PUBLIC_VETH_PREFIX = f"psp{_SUFFIX}-"
SSHD = hostfs.SSHD
SUDO = "/usr/bin/sudo"
METADATA_IP = "169.254.169.254"
STATE_ROOT = Path(os.environ.get("PROVISION_SIM_DIR", f"/tmp/provision-sim{_SUFFIX}"))


class SimError(BadInput):
    """One-line, user-facing problem with the simulated region."""


@dataclass(frozen=True)
class Host:
    """A running simulated host."""

    name: str  # netns name, e.g. psim-4
    ip: str  # private
    hostname: str
    sshd_pid: int | None
    public_ip: str | None = None
    user: str = "root"

    @property
    def dir(self) -> Path:
        return host_dir(self.name)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SimError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def check_requirements() -> None:
    """Say exactly what is missing, and how to get it."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the simulated region needs root (network namespaces, a bridge)")
    if not shutil.which("ip"):
        problems.append("`ip` not found: apt-get install -y iproute2")
    if not Path(SSHD).exists():
        problems.append(f"{SSHD} not found: apt-get install -y openssh-server")
    if not Path(SUDO).exists():
        problems.append(f"{SUDO} not found (the images' users sudo): apt-get install -y sudo")
    for tool, package in (("tc", "iproute2"), ("bridge", "iproute2"), ("nsenter", "util-linux")):
        if not shutil.which(tool):
            problems.append(f"`{tool}` not found: apt-get install -y {package}")
    if problems:
        raise SimError("; ".join(problems))


def netns_name(ip: str) -> str:
    """Namespace name from the last octet: short enough for interface names."""
    return f"{NETNS_PREFIX}{ipaddress.ip_address(ip).packed[-1]}"


def host_dir(name: str) -> Path:
    return STATE_ROOT / "hosts" / name


def ensure_bridge(gateway_cidr: str | None, bridge: str | None = None) -> None:
    """Create a bridge, with this machine's address on it if `gateway_cidr` (idempotent)."""
    bridge = bridge or BRIDGE
    if run("ip", "link", "show", bridge, check=False).returncode != 0:
        run("ip", "link", "add", bridge, "type", "bridge")
    if gateway_cidr is not None:
        addrs = run("ip", "-o", "addr", "show", "dev", bridge).stdout
        if gateway_cidr.split("/")[0] + "/" not in addrs:
            run("ip", "addr", "add", gateway_cidr, "dev", bridge)
    run("ip", "link", "set", bridge, "up")


def remove_bridge(bridge: str | None = None) -> None:
    run("ip", "link", "del", bridge or BRIDGE, check=False)


def _veths(name: str) -> tuple[str, str]:
    n = name[len(NETNS_PREFIX):]
    return f"{VETH_PREFIX}{n}", f"{PUBLIC_VETH_PREFIX}{n}"


def start_host(
    ip: str,
    prefixlen: int,
    authorized_keys: str,
    hostname: str,
    tmpfs_size: str = "2g",
    *,
    public_ip: str | None = None,
    login: Login = ROOT_LOGIN,
    restore: Path | None = None,
    host_key: Path | None = None,
) -> Host:
    """Boot a host at `ip` whose sshd accepts `authorized_keys` for `login.user` (idempotent).

    `restore`: a tar of the root volume's files from an earlier life (see `disks`).
    `host_key`: sshd's ed25519 key, kept by the instance across reboots and stops
    as its root volume keeps it on EC2; made (and written there) if it does not exist.
    """
    name = netns_name(ip)
    existing = get_host(name)
    if existing and existing.sshd_pid:
        return existing
    stop_host(name)  # clear a half-made host from an earlier crash
    d = host_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "authorized_keys").write_text(authorized_keys.strip() + "\n")
    os.chmod(d / "authorized_keys", 0o600)
    key = d / "ssh_host_ed25519_key"
    if host_key is not None and host_key.exists():
        for suffix in ("", ".pub"):
            shutil.copy2(f"{host_key}{suffix}", f"{key}{suffix}")
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    if host_key is not None and not host_key.exists():
        host_key.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".pub", ""):  # the private key last: its presence means both are there
            shutil.copy2(f"{key}{suffix}", f"{host_key}{suffix}")
    uid = 0
    if not login.is_root:
        uid = hostfs.write_etc(d, login, ip, hostname)
        hostfs.write_root_keys(d, login, authorized_keys)
        if not login.python:
            hostfs.write_whiteouts(d)
    (d / "sshd_config").write_text(hostfs.sshd_config(d, ip, login))
    inside = Path(str(d) if login.is_root else INSIDE)
    power.install(d / hostfs.POWER_BIN, str(inside / power.REQUEST))
    if restore is not None:
        share(restore, d / "restore.tar")
    (d / "hostname").write_text(hostname)
    (d / "user").write_text(login.user)
    (d / "ip").write_text(ip)

    veth, pveth = _veths(name)
    run("ip", "netns", "add", name)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
    run("ip", "link", "set", veth, "master", BRIDGE, "up")
    run("ip", "-n", name, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0")
    run("ip", "-n", name, "link", "set", "eth0", "up")
    run("ip", "-n", name, "link", "set", "lo", "up")
    run("ip", "-n", name, "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
    if public_ip is not None:
        run("ip", "link", "add", pveth, "type", "veth", "peer", "name", "eth1", "netns", name)
        run("ip", "link", "set", pveth, "master", PUBLIC_BRIDGE, "up")
        run("ip", "-n", name, "addr", "add", f"{public_ip}/24", "dev", "eth1")
        run("ip", "-n", name, "link", "set", "eth1", "up")
        (d / "public_ip").write_text(public_ip)
        # This machine may remember the address at another host's MAC (or a cut's entry).
        run("ip", "neigh", "del", public_ip, "dev", PUBLIC_BRIDGE, check=False)
    script = hostfs.boot_script(d, login, hostname, tmpfs_size, uid)
    with open(d / "sshd.log", "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", name, "unshare", "--mount", "--uts", "--propagation", "private",
             "--", "/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    (d / "sshd.pid.outer").write_text(f"{proc.pid} {_started(proc.pid)}")
    return Host(name=name, ip=ip, hostname=hostname, sshd_pid=proc.pid, public_ip=public_ip,
                user=login.user)


def _started(pid: int) -> str:
    """A process's start time (clock ticks since boot): with the PID, names it uniquely."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _our_sshd(name: str) -> int | None:
    """The host's sshd PID if that process is still the one started (PIDs get reused)."""
    try:
        pid, started = (host_dir(name) / "sshd.pid.outer").read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid) if _started(int(pid)) == started and _pid_alive(int(pid)) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def get_host(name: str) -> Host | None:
    d = host_dir(name)
    if not (d / "ip").exists():
        return None
    pid = _our_sshd(name)

    def read(f: str) -> str | None:
        try:
            return (d / f).read_text()
        except OSError:
            return None

    return Host(name=name, ip=(d / "ip").read_text(), hostname=read("hostname") or name,
                sshd_pid=pid, public_ip=read("public_ip"), user=read("user") or "root")


def namespaces() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX))


def list_hosts() -> list[Host]:
    names = set(namespaces())
    hosts_dir = STATE_ROOT / "hosts"
    if hosts_dir.exists():
        names |= {p.name for p in hosts_dir.iterdir()}
    return [h for h in (get_host(n) for n in sorted(names)) if h is not None]


def netns_pids(name: str) -> list[int]:
    out = run("ip", "netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split()]


def share(src: Path, dst: Path) -> None:
    """`dst` holds what `src` holds: a hard link (our tars never change in place), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _kill(pids: set[int], timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)


def kill_processes(name: str, timeout: float = 5.0) -> None:
    """End everything running on the host but its sshd, which holds its mounts (its disk)."""
    _kill(set(netns_pids(name)) - {_our_sshd(name)}, timeout)


def stop_host(name: str, timeout: float = 5.0) -> None:
    """Make the host vanish: kill everything in it, then its namespace and veth."""
    pids = set(netns_pids(name))
    sshd = _our_sshd(name)  # also if the namespace is gone (crash leftovers)
    if sshd is not None:
        pids.add(sshd)
    _kill(pids, timeout)
    for veth in _veths(name):
        if Path(f"/sys/class/net/{veth}").exists():
            run("ip", "link", "del", veth, check=False)
    run("ip", "netns", "del", name, check=False)
    shutil.rmtree(host_dir(name), ignore_errors=True)


def stop_all_hosts() -> None:
    for name in set(namespaces()) | {h.name for h in list_hosts()}:
        stop_host(name)
