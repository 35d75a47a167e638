"""Start, inspect, stop and disturb the simulated region from outside its daemon.

Everything here goes through the state file, the daemon's PID and the EC2 API;
nothing keeps state in memory between calls except the daemon's `Popen` when
this process started it, so `down` can reap it rather than leave a zombie
until PID 1 gets round to it (in containers that can be late or never).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from provision.cloud.common import Region
from provision.sim import hosts
from provision.sim.hosts import SimError
from provision.sim.state import (
    ACCESS_KEY,
    LOCK_FILE,
    LOG_FILE,
    SECRET_KEY,
    SSH_CIDR,
    STATE_ROOT,
    SimHost,
    SimState,
    client,
    host_instance_id,
    read_state,
    remove_state,
)

NOT_RUNNING = "the simulated region is not running: start it with `provision sim up`"
DAEMON_MODULE = "provision.sim.daemon"

_children: dict[int, subprocess.Popen[bytes]] = {}  # daemons this process started


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialize up/down across processes (two `up`s must not start two daemons)."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _is_daemon(pid: int) -> bool:
    """Whether `pid` is a live sim daemon (not a zombie, not a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return DAEMON_MODULE.encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _answers(st: SimState) -> bool:
    """Whether the endpoint serves the sim subnet (i.e. the region is usable)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client("ec2", st.endpoint).describe_subnets(SubnetIds=[st.subnet_id])
    except (BotoCoreError, ClientError):
        return False
    return True


def _leftovers() -> bool:
    """Anything a crashed region may have left: namespaces, host dirs, the bridge."""
    return bool(hosts.list_hosts() or hosts.namespaces()) or Path(
        f"/sys/class/net/{hosts.BRIDGE}"
    ).exists()


def _wait_gone(pid: int, timeout: float) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        del _children[pid]
        return True
    deadline = time.monotonic() + timeout
    while _is_daemon(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _teardown(st: SimState | None) -> None:
    """Stop the daemon (it cleans up after itself), then sweep whatever a crash left."""
    if st is not None and _is_daemon(st.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(st.pid, signal.SIGTERM)
        if not _wait_gone(st.pid, 20):
            with contextlib.suppress(ProcessLookupError):
                os.kill(st.pid, signal.SIGKILL)
            _wait_gone(st.pid, 5)
    for pid, proc in list(_children.items()):  # reap daemons of ours that died earlier
        if proc.poll() is not None:
            del _children[pid]
    hosts.stop_all_hosts()
    hosts.remove_bridge()
    remove_state()


def _log_tail(offset: int, lines: int = 8) -> str:
    try:
        with open(LOG_FILE, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _start(boot_delay: float, timeout: float) -> SimState:
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    offset = LOG_FILE.stat().st_size if LOG_FILE.exists() else 0
    with open(LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            # --state-dir names the region in `ps` (several may run); the daemon
            # inherits PROVISION_SIM_ID/PROVISION_SIM_DIR and checks they agree.
            [sys.executable, "-m", DAEMON_MODULE, "--boot-delay", str(boot_delay),
             "--state-dir", str(STATE_ROOT)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # a Ctrl-C in the caller's terminal must not kill it
        )
    _children[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _teardown(None)
            raise SimError(
                f"the simulated region failed to start (exit {proc.returncode}); "
                f"{LOG_FILE} says:\n{_log_tail(offset)}"
            )
        st = read_state()
        if st is not None and st.pid == proc.pid and _answers(st):
            return st
        time.sleep(0.1)
    _teardown(read_state())
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    _wait_gone(proc.pid, 5)
    raise SimError(f"the simulated region did not answer within {timeout:.0f}s; see {LOG_FILE}")


def _port_open(ip: str, port: int = 22, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hosts() -> tuple[SimHost, ...]:
    return tuple(
        SimHost(
            instance_id=host_instance_id(h.name),
            ip=h.ip,
            hostname=h.hostname,
            netns=h.name,
            sshd_alive=h.sshd_pid is not None and _port_open(h.ip),
        )
        for h in sorted(hosts.list_hosts(), key=lambda h: tuple(map(int, h.ip.split("."))))
    )


def _running_state() -> SimState:
    st = read_state()
    if st is None or not _is_daemon(st.pid):
        raise SimError(NOT_RUNNING)
    return st


# --- public API (re-exported by provision.sim) ---------------------------------------


def up(boot_delay: float = 1.0, timeout: float = 60) -> SimState:
    """Start the region in the background, or reuse it if it is already healthy.

    A stale region (daemon dead, endpoint silent, leftovers of a crash) is torn
    down first, so `up` after anything ends with one working region. A reused
    region keeps the boot delay it was started with.
    """
    hosts.check_requirements()
    with _lock():
        st = read_state()
        if st is not None and _is_daemon(st.pid) and _answers(st):
            return replace(st, reused=True, hosts=_hosts())
        if st is not None or _leftovers():
            _teardown(st)
        return _start(boot_delay, timeout)


def down() -> None:
    """Stop the region: daemon, moto, every host and whatever runs on it, the bridge."""
    hosts.check_requirements()
    with _lock():
        _teardown(read_state())


def status() -> SimState | None:
    """The region as it is now, hosts included; None if it was never started or is down.

    A state whose daemon died is returned with `alive=False` (`up` cleans it up).
    """
    st = read_state()
    if st is None:
        return None
    alive = _is_daemon(st.pid)
    return replace(st, alive=alive, hosts=_hosts())


def interrupt(instance_id: str) -> None:
    """Simulate a spot interruption: terminate the instance, its host vanishes at once.

    The host is stopped here rather than by the watcher, so work on it dies
    before this returns, as when AWS reclaims the capacity.
    """
    from botocore.exceptions import ClientError

    st = _running_state()
    ec2 = client("ec2", st.endpoint)
    try:
        res = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        ec2.terminate_instances(InstanceIds=[instance_id])
    except ClientError as e:
        raise SimError(f"cannot interrupt {instance_id}: {e}") from e
    ips = {i.get("PrivateIpAddress") for r in res for i in r["Instances"]}
    for h in hosts.list_hosts():
        iid = host_instance_id(h.name)
        if iid == instance_id or (iid is None and h.ip in ips):
            hosts.stop_host(h.name)


def region() -> Region:
    """The `Region` provision code uses for `--region sim`: the only sim switch there is."""
    st = _running_state()
    return Region(
        name=st.region_name,
        endpoint_url=st.endpoint,
        subnet_id=st.subnet_id,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        use_private_ip=True,
        default_user="root",
        ssh_cidr=SSH_CIDR,
    )
