"""What a running simulated region looks like from outside: the state file.

The daemon is the only writer (it alone knows its port, and it rewrites the file
if a moto reset makes it re-create the subnet); `up`, `status`, `region` and
`down` only read it. Writes are atomic (temp file + rename) so a reader never
sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from provision.sim.hosts import STATE_ROOT, SimError, host_dir
from provision.sim.net import (
    GATEWAY,
    PREFIXLEN,
    PUBLIC_CIDR,
    PUBLIC_GATEWAY,
    SUBNET_CIDR,
    VPC_CIDR,
)

REGION_NAME = "us-east-1"  # the name moto answers to; the sim has one region
ZONE = f"{REGION_NAME}a"  # the sim subnet's zone
# The laptop's address as the region sees it (what a "what is my IP" service
# would say): SSH rules open to this /32, as provision opens them to the caller.
SSH_CIDR = f"{PUBLIC_GATEWAY}/32"
SIM_TAG = "provision:sim"  # on the VPC and subnet the daemon made
ACCESS_KEY = SECRET_KEY = "testing"

STATE_FILE = STATE_ROOT / "state.json"
LOG_FILE = STATE_ROOT / "daemon.log"
LOCK_FILE = STATE_ROOT / "lock"
WAN_FILE = STATE_ROOT / "wan.json"  # the uplink shaping `up` applied (tc), for `status`
INTERRUPTS = STATE_ROOT / "interrupts"  # <instance id>.json: spot notices the daemon enacts

__all__ = ["GATEWAY", "PREFIXLEN", "PUBLIC_CIDR", "PUBLIC_GATEWAY", "SUBNET_CIDR", "VPC_CIDR"]


@dataclass(frozen=True)
class Timing:
    """How slowly and inconsistently the region answers, as (low, high) seconds ranges.

    Each delay is drawn uniformly per resource. The defaults keep AWS's order of
    magnitude (pending and shutting-down last seconds, SSH answers seconds after
    `running`, a new id is unknown to the API for up to a couple of seconds) yet
    stay small enough for tests; `instant()` is the old, kind region.
    """

    pending: tuple[float, float] = (2.0, 4.0)  # pending -> running
    ssh: tuple[float, float] = (2.0, 5.0)  # running -> sshd answers
    shutting_down: tuple[float, float] = (2.0, 4.0)  # shutting-down -> terminated
    not_found: tuple[float, float] = (0.0, 2.0)  # a new id is invisible to the API

    @classmethod
    def instant(cls) -> Timing:
        return cls((0, 0), (0, 0), (0, 0), (0, 0))

    @property
    def is_instant(self) -> bool:
        return all(hi == 0 for _, hi in asdict(self).values())

    def describe(self) -> str:
        if self.is_instant:
            return "instant (no AWS delays, consistent API)"
        return ", ".join(
            f"{k.replace('_', '-')} {lo:g}-{hi:g}s" for k, (lo, hi) in asdict(self).items()
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timing:
        return cls(**{k: (float(v[0]), float(v[1])) for k, v in d.items()})


def client(service: str, endpoint: str) -> Any:
    """A boto3 client for the sim endpoint, failing fast: the server is local or it is down."""
    import boto3  # lazy: `import provision.sim` stays cheap for the CLI
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION_NAME,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}),
    )


@dataclass(frozen=True)
class SimHost:
    """One namespace host, as `status` shows it."""

    instance_id: str | None  # None if the host outlived its record (crash leftover)
    ip: str  # private
    hostname: str
    netns: str
    sshd_alive: bool
    public_ip: str | None = None
    user: str = "root"  # the image's login user
    halted: bool = False  # `halt` ran on it: the instance runs, the host is dead
    cut_until: float | None = None  # its laptop link is cut until then (inf: until healed)


@dataclass(frozen=True)
class SimState:
    """The running region: what the daemon wrote, plus what `status` observed."""

    endpoint: str  # http://127.0.0.1:PORT
    pid: int  # the daemon
    vpc_id: str
    subnet_id: str
    region_name: str
    started_at: float
    timing: dict[str, list[float]] = field(default_factory=dict)  # Timing as a dict
    images: dict[str, str] = field(default_factory=dict)  # SSM parameter -> AMI id
    cidr: str = SUBNET_CIDR  # the private plane (hosts only)
    public_cidr: str = PUBLIC_CIDR  # the public plane (laptop and hosts with a public IP)
    public_gateway: str = PUBLIC_GATEWAY  # the laptop's side: "the internet" for hosts
    log: str = str(LOG_FILE)
    # Observed, never stored:
    alive: bool = True  # the daemon process exists
    reused: bool = False  # `up` found it already running
    hosts: tuple[SimHost, ...] = ()
    uplink: str = ""  # the laptop -> region shaping in force ("" = none)
    rtt: str = ""

    @property
    def boot_delay(self) -> float:
        """Mean seconds from `running` to SSH (what benchmarks record)."""
        lo, hi = self.timings.ssh
        return (lo + hi) / 2

    @property
    def timings(self) -> Timing:
        return Timing.from_dict(self.timing) if self.timing else Timing()

    def to_json(self) -> str:
        d = asdict(self)
        for k in ("alive", "reused", "hosts", "uplink", "rtt"):
            d.pop(k)
        return json.dumps(d, indent=2, sort_keys=True)


def read_state() -> SimState | None:
    """The stored state, or None if there is none (or it is unreadable)."""
    try:
        d = json.loads(STATE_FILE.read_text())
        known = {f.name for f in fields(SimState)}  # tolerate a file from another version
        return SimState(**{k: v for k, v in d.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def write_state(state: SimState) -> None:
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=STATE_ROOT, prefix=".state-")
    with os.fdopen(fd, "w") as f:
        f.write(state.to_json())
    os.replace(tmp, STATE_FILE)


def remove_state(pid: int | None = None) -> None:
    """Remove the state file; with `pid`, only if it still belongs to that daemon."""
    st = read_state()
    if pid is not None and st is not None and st.pid != pid:
        return
    Path(STATE_FILE).unlink(missing_ok=True)


def host_instance_id(netns: str) -> str | None:
    """The instance a host stands for (the watcher records it next to the host)."""
    try:
        return (host_dir(netns) / "instance_id").read_text().strip() or None
    except OSError:
        return None


def set_host_instance_id(netns: str, instance_id: str) -> None:
    (host_dir(netns) / "instance_id").write_text(instance_id)


NOT_RUNNING = "the simulated region is not running: start it with `provision sim up`"
DAEMON_MODULE = "provision.sim.daemon"


def is_daemon(pid: int) -> bool:
    """Whether `pid` is a live sim daemon (not a zombie, not a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return DAEMON_MODULE.encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def running_state() -> SimState:
    """The state of the running region, or SimError saying how to start it."""
    st = read_state()
    if st is None or not is_daemon(st.pid):
        raise SimError(NOT_RUNNING)
    return st
