"""Simulated hosts: one network namespace per instance, with its own sshd.

Follows the probe in ``shared/SIMULATED_REGION.md``. A host shares the process
table, /root, /tmp and the installed Python with this machine, but has its own
network stack (one veth on the bridge, no default route), hostname, /srv and
/run. Everything started over SSH lives inside the namespace, so killing the
namespace's processes is exactly "the instance vanished".

Needs root, ``ip`` (iproute2) and ``sshd`` (openssh-server).
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

# Several regions can run side by side on one machine (one per checkout, or per
# test worker), each with its own id 0-9: bridge, namespaces, veths, subnet and
# state directory all carry it, so one region never reaps or routes another's hosts.
SIM_ID = int(os.environ.get("PROVISION_SIM_ID", "0"))
if not 0 <= SIM_ID <= 9:
    raise ValueError(f"PROVISION_SIM_ID must be 0-9, got {SIM_ID}")
_SUFFIX = str(SIM_ID) if SIM_ID else ""
BRIDGE = f"psim{SIM_ID}"
NETNS_PREFIX = f"psim{_SUFFIX}-"
VETH_PREFIX = f"psv{_SUFFIX}"
SSHD = "/usr/sbin/sshd"
STATE_ROOT = Path(os.environ.get("PROVISION_SIM_DIR", f"/tmp/provision-sim{_SUFFIX}"))


class SimError(BadInput):
    """One-line, user-facing problem with the simulated region."""


@dataclass(frozen=True)
class Host:
    """A running simulated host."""

    name: str  # netns name, e.g. psim-4
    ip: str
    hostname: str
    sshd_pid: int | None

    @property
    def dir(self) -> Path:
        return host_dir(self.name)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
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
    if problems:
        raise SimError("; ".join(problems))


def netns_name(ip: str) -> str:
    """Namespace name from the last octet: short enough for interface names."""
    return f"{NETNS_PREFIX}{ipaddress.ip_address(ip).packed[-1]}"


def host_dir(name: str) -> Path:
    return STATE_ROOT / "hosts" / name


def ensure_bridge(gateway_cidr: str) -> None:
    """Create the bridge with the subnet's first address (idempotent)."""
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    addrs = _run("ip", "-o", "addr", "show", "dev", BRIDGE).stdout
    if gateway_cidr.split("/")[0] + "/" not in addrs:
        _run("ip", "addr", "add", gateway_cidr, "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")


def remove_bridge() -> None:
    _run("ip", "link", "del", BRIDGE, check=False)


def _sshd_config(d: Path, ip: str) -> str:
    return "\n".join(
        [
            f"ListenAddress {ip}",
            f"HostKey {d}/ssh_host_ed25519_key",
            f"PidFile {d}/sshd.pid",
            f"AuthorizedKeysFile {d}/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "AcceptEnv LANG LC_*",
            "",
        ]
    )


def start_host(ip: str, prefixlen: int, authorized_keys: str, hostname: str, tmpfs_size: str = "2g") -> Host:
    """Boot a host at `ip` whose sshd accepts `authorized_keys` (idempotent)."""
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
    if not key.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    (d / "sshd_config").write_text(_sshd_config(d, ip))
    (d / "hostname").write_text(hostname)
    (d / "ip").write_text(ip)

    veth = f"{VETH_PREFIX}{name[len(NETNS_PREFIX):]}"
    _run("ip", "netns", "add", name)
    _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
    _run("ip", "link", "set", veth, "master", BRIDGE, "up")
    _run("ip", "-n", name, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0")
    _run("ip", "-n", name, "link", "set", "eth0", "up")
    _run("ip", "-n", name, "link", "set", "lo", "up")
    script = (
        f"hostname {hostname} && "
        f"mount -t tmpfs -o size={tmpfs_size},mode=755 tmpfs /srv && "
        "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/sshd && "
        f"exec {SSHD} -D -e -f {d}/sshd_config"
    )
    with open(d / "sshd.log", "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", name, "unshare", "--mount", "--uts", "--propagation", "private",
             "--", "/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    (d / "sshd.pid.outer").write_text(str(proc.pid))
    return Host(name=name, ip=ip, hostname=hostname, sshd_pid=proc.pid)


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
    pid = None
    pidfile = d / "sshd.pid.outer"
    if pidfile.exists():
        p = int(pidfile.read_text())
        pid = p if _pid_alive(p) else None
    hostname = (d / "hostname").read_text() if (d / "hostname").exists() else name
    return Host(name=name, ip=(d / "ip").read_text(), hostname=hostname, sshd_pid=pid)


def namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX))


def list_hosts() -> list[Host]:
    names = set(namespaces())
    hosts_dir = STATE_ROOT / "hosts"
    if hosts_dir.exists():
        names |= {p.name for p in hosts_dir.iterdir()}
    return [h for h in (get_host(n) for n in sorted(names)) if h is not None]


def netns_pids(name: str) -> list[int]:
    out = _run("ip", "netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split()]


def stop_host(name: str, timeout: float = 5.0) -> None:
    """Make the host vanish: kill everything in it, then its namespace and veth."""
    pids = set(netns_pids(name))
    pidfile = host_dir(name) / "sshd.pid.outer"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        # Only if it is still ours: after a crash the PID may belong to someone else.
        try:
            if f"{host_dir(name)}/sshd_config".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
        except OSError:
            pass
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)
    veth = f"{VETH_PREFIX}{name[len(NETNS_PREFIX):]}"
    _run("ip", "link", "del", veth, check=False)
    _run("ip", "netns", "del", name, check=False)
    shutil.rmtree(host_dir(name), ignore_errors=True)


def stop_all_hosts() -> None:
    for name in set(namespaces()) | {h.name for h in list_hosts()}:
        stop_host(name)
