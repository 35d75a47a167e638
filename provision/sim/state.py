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

from provision.sim.hosts import SIM_ID, STATE_ROOT, host_dir

REGION_NAME = "us-east-1"  # the name moto answers to; the sim has one region
_NET = f"10.{77 + SIM_ID}"  # 10.77.x.x for region 0, 10.78.x.x for region 1, ...
SUBNET_CIDR = f"{_NET}.0.0/24"
VPC_CIDR = f"{_NET}.0.0/16"
GATEWAY = f"{_NET}.0.1"  # the bridge's address: the only way into the subnet
PREFIXLEN = 24
SSH_CIDR = f"{GATEWAY}/32"  # SSH comes from the bridge, never from elsewhere
SIM_TAG = "provision:sim"  # on the VPC and subnet the daemon made
ACCESS_KEY = SECRET_KEY = "testing"

STATE_FILE = STATE_ROOT / "state.json"
LOG_FILE = STATE_ROOT / "daemon.log"
LOCK_FILE = STATE_ROOT / "lock"


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
    ip: str
    hostname: str
    netns: str
    sshd_alive: bool


@dataclass(frozen=True)
class SimState:
    """The running region: what the daemon wrote, plus what `status` observed."""

    endpoint: str  # http://127.0.0.1:PORT
    pid: int  # the daemon
    vpc_id: str
    subnet_id: str
    region_name: str
    boot_delay: float
    started_at: float
    images: dict[str, str] = field(default_factory=dict)  # arch -> AMI id behind the SSM path
    cidr: str = SUBNET_CIDR
    gateway: str = GATEWAY
    log: str = str(LOG_FILE)
    # Observed, never stored:
    alive: bool = True  # the daemon process exists
    reused: bool = False  # `up` found it already running
    hosts: tuple[SimHost, ...] = ()

    def to_json(self) -> str:
        d = asdict(self)
        for k in ("alive", "reused", "hosts"):
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
