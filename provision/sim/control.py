"""Start, inspect, stop and disturb the simulated region from outside its daemon.

Everything here goes through the state file, the daemon's PID and the EC2 API;
nothing keeps state in memory between calls except the daemon's `Popen` when
this process started it, so `down` can reap it rather than leave a zombie
until PID 1 gets round to it (in containers that can be late or never).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

from provision.cloud.common import Region
from provision.sim import disks, faults, hosts, net
from provision.sim.hosts import SimError
from provision.sim.imds import notice_file
from provision.sim.state import (
    ACCESS_KEY,
    DAEMON_MODULE,
    INTERRUPTS,
    LOCK_FILE,
    LOG_FILE,
    SECRET_KEY,
    SSH_CIDR,
    STATE_ROOT,
    WAN_FILE,
    SimHost,
    SimState,
    Timing,
    client,
    host_instance_id,
    is_daemon,
    read_state,
    remove_state,
    running_state,
)

_children: dict[int, subprocess.Popen[bytes]] = {}  # daemons this process started


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialize up/down across processes (two `up`s must not start two daemons)."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


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
    return bool(hosts.list_hosts() or hosts.namespaces()) or any(
        Path(f"/sys/class/net/{b}").exists() for b in (hosts.BRIDGE, hosts.PUBLIC_BRIDGE)
    )


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
    while is_daemon(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _teardown(st: SimState | None) -> None:
    """Stop the daemon (it cleans up after itself), then sweep whatever a crash left."""
    if st is not None and is_daemon(st.pid):
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
    net.remove_planes()  # the bridges go, the blackholes stay
    WAN_FILE.unlink(missing_ok=True)
    shutil.rmtree(INTERRUPTS, ignore_errors=True)
    disks.remove_all()
    faults.remove_all()
    remove_state()


def _log_tail(offset: int, lines: int = 8) -> str:
    try:
        with open(LOG_FILE, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _timing_flags(timing: Timing) -> list[str]:
    if timing.is_instant:
        return ["--instant"]
    flags = []
    for name, (lo, hi) in asdict(timing).items():
        flags += [f"--{'ssh-delay' if name == 'ssh' else name.replace('_', '-')}", f"{lo}:{hi}"]
    return flags


def _start(timing: Timing, timeout: float) -> SimState:
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    offset = LOG_FILE.stat().st_size if LOG_FILE.exists() else 0
    with open(LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            # --state-dir names the region in `ps` (several may run); the daemon
            # inherits PROVISION_SIM_ID/PROVISION_SIM_DIR and checks they agree.
            [sys.executable, "-m", DAEMON_MODULE, *_timing_flags(timing),
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


def _hosts() -> tuple[SimHost, ...]:
    # sshd's liveness by its PID: the laptop has no route to a private-only host.
    return tuple(
        SimHost(
            instance_id=host_instance_id(h.name),
            ip=h.ip,
            hostname=h.hostname,
            netns=h.name,
            sshd_alive=h.sshd_pid is not None,
            public_ip=h.public_ip,
            user=h.user,
            halted=faults.halted(h),
            cut_until=faults.cut_until(host_instance_id(h.name) or ""),
        )
        for h in sorted(hosts.list_hosts(), key=lambda h: tuple(map(int, h.ip.split("."))))
    )


def _observed(st: SimState, **kw: object) -> SimState:
    wan = net.read_wan(WAN_FILE)
    return replace(st, hosts=_hosts(), uplink=wan.get("uplink", ""), rtt=wan.get("rtt", ""),
                   **kw)


# --- public API (re-exported by provision.sim) ---------------------------------------


def up(
    *,
    instant: bool | None = None,
    timing: Timing | None = None,
    uplink: str | None = None,
    rtt: str | None = None,
    timeout: float = 60,
) -> SimState:
    """Start the region in the background, or reuse it if it is already healthy.

    `instant` (or an explicit `timing`) chooses between AWS's delays and
    eventual consistency (the default for a new region) and the old, instant
    region; None reuses whatever runs. A running region is never switched
    silently: asking for the other timing is an error. `uplink`/`rtt` (e.g.
    "20mbit", "40ms"; "off" removes) shape the laptop-to-region path, on a new
    or a reused region; None leaves the shaping as it is.

    A stale region (daemon dead, endpoint silent, leftovers of a crash) is torn
    down first, so `up` after anything ends with one working region.
    """
    hosts.check_requirements()
    net.check_wan(uplink, rtt)
    want = timing if timing is not None else (
        None if instant is None else (Timing.instant() if instant else Timing())
    )
    with _lock():
        st = read_state()
        if st is not None and is_daemon(st.pid) and _answers(st):
            if want is not None and want != st.timings:
                raise SimError(
                    f"the simulated region is running with timing {st.timings.describe()}; "
                    "`provision sim down` first to start it with another"
                )
            st = replace(st, reused=True)
        else:
            if st is not None or _leftovers():
                _teardown(st)
            st = _start(want or Timing(), timeout)
        if uplink is not None or rtt is not None:
            net.shape_wan(uplink, rtt, WAN_FILE)
        return _observed(st)


def down() -> None:
    """Stop the region: daemon, moto, every host and whatever runs on it, the bridges.

    The blackhole routes for the region's ranges stay (and are made if missing).
    """
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
    return _observed(st, alive=is_daemon(st.pid))


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def interrupt(instance_id: str, notice: float = 0, timeout: float = 15) -> str:
    """Simulate a spot interruption: announce it on the instance's metadata, then terminate.

    The notice appears at once under /latest/meta-data/spot/instance-action on
    the host (as AWS's two-minute warning does); the daemon terminates the
    instance when `notice` seconds have passed. With notice 0 this returns once
    the host is gone, so work on it is dead, as when AWS reclaims the capacity;
    otherwise it returns at once. Returns the announced time (ISO 8601, UTC).
    """
    from botocore.exceptions import ClientError

    if notice < 0:
        raise SimError(f"--notice {notice:g}: must be 0 or more seconds")
    st = running_state()
    try:
        res = client("ec2", st.endpoint).describe_instances(InstanceIds=[instance_id])
    except ClientError as e:
        raise SimError(f"cannot interrupt {instance_id}: {e}") from e
    state = res["Reservations"][0]["Instances"][0]["State"]["Name"]
    if state != "running":
        raise SimError(f"cannot interrupt {instance_id}: it is {state}, not running")
    when = _iso(math.ceil(time.time() + notice))
    INTERRUPTS.mkdir(parents=True, exist_ok=True)
    path = notice_file(INTERRUPTS, instance_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"action": "terminate", "time": when}))
    os.replace(tmp, path)
    if notice == 0:
        deadline = time.monotonic() + timeout
        while path.exists() or any(
            host_instance_id(h.name) == instance_id for h in hosts.list_hosts()
        ):
            if time.monotonic() > deadline or not is_daemon(st.pid):
                raise SimError(f"{instance_id} was not interrupted within {timeout:.0f}s; "
                               f"see {LOG_FILE}")
            time.sleep(0.05)
    return when


def region() -> Region:
    """The `Region` provision code uses for `--region sim`: the only sim switch there is.

    Nothing here makes the sim kinder than AWS: addresses are public or private
    as the launch asked, the user comes from the image, SSH is opened to the
    laptop's public address.
    """
    st = running_state()
    return Region(
        name=st.region_name,
        endpoint_url=st.endpoint,
        subnet_id=st.subnet_id,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        ssh_cidr=SSH_CIDR,
    )
