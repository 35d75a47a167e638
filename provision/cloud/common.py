"""Typed records and errors shared by every provider and the rest of provision.

Input (`LaunchRequest`, `Region`) is kept apart from output (`InstanceInfo`,
`ClusterInfo`, `InstanceTypeInfo`, `ZonePrice`) as in SkyPilot's
`sky/provision/common.py`: the cloud layer takes plain data and gives plain
data back, so node setup and the orchestrator never touch a cloud SDK and
tests can build these records by hand. Nothing here names a provider's API.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from provision.errors import ProvisionError

CLUSTER_TAG = "provision:cluster"
ROLE_TAG = "provision:role"
CREATED_BY_TAG = "provision:created-by"  # marks key pairs / groups this tool made
DIGEST_TAG = "provision:env-digest"  # a baked image: the environment digest of its venv
IMAGE_TAG = "provision:image"  # a baked image's snapshot: the image it belongs to

MASTER = "master"
WORKER = "worker"
ALIVE_STATES = ("pending", "running")  # an instance that is, or is about to be, a node

Progress = Callable[[int, int], None]  # (instances running, instances waited for)
OnStep = Callable[[str], None]  # one line per step of a teardown
TEARDOWN_S = 600  # seconds for a teardown's instances to terminate


class CloudError(ProvisionError):
    """A failure the user can act on, with a one-line message."""


class CloudAPIError(CloudError):
    """The API itself failed (permissions, throttling past retries, outages), as
    opposed to a request the region cannot satisfy: not the user's input."""


@dataclass(frozen=True)
class Region:
    """Where a provider's API lives; `provider` picks the module that serves it.

    `endpoint_url` is None for the provider's public endpoint (on AWS, boto3
    then also honours AWS_ENDPOINT_URL_EC2); the simulated region fills it in
    together with its subnet, so the same code path serves both.
    """

    name: str
    provider: str = "aws"  # a module under provision/cloud/ (see provision.cloud.PROVIDERS)
    endpoint_url: str | None = None
    # Where nodes launch: a subnet (which pins the zone and the VPC), else the
    # subnets of a VPC, else the default VPC's default subnets (see `NetworkInfo`).
    subnet_id: str | None = None
    vpc_id: str | None = None
    # Explicit credentials (only the simulated region sets these; otherwise the
    # provider's standard credential chain is left untouched).
    access_key: str | None = None
    secret_key: str | None = None
    # CIDR allowed to SSH when the config leaves it unset; None = detect the
    # caller's public address.
    ssh_cidr: str | None = None


@dataclass(frozen=True)
class LaunchRequest:
    """What to launch for one role of one cluster."""

    cluster: str
    role: str  # MASTER or WORKER
    count: int
    instance_type: str
    image_id: str
    key_name: str
    security_group_id: str
    spot: bool = True
    max_price: float | None = None  # USD per hour; None = on-demand price cap
    volume_size: int = 30  # GiB, root volume, always encrypted
    zone: str | None = None  # None: every zone offering the type, cheapest first
    prefer_zone: str | None = None  # without `zone`: tried first (the master's), then the rest
    subnet_id: str | None = None
    # A public IPv4 address at launch (the master always needs one: this machine
    # reaches the cluster through it); without, a node is reached through the master.
    public_ip: bool = True
    user_data: str = ""
    # What a shutdown from the node's OS does: a disposable cluster terminates (the
    # autostop agent powers nodes off); "stop" would keep volumes and addresses billing.
    shutdown_behavior: str = "terminate"
    # Extra tags to put on instances and volumes, beyond cluster and role.
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceTypeInfo:
    """What an instance type offers, as far as sizing a node goes."""

    name: str
    vcpus: int  # one engine per vCPU
    memory_mib: int
    arch: str  # "x86_64" or "arm64": picks the image
    on_demand_price: float | None = None  # approximate list price, USD/hour; None = unknown


@dataclass(frozen=True)
class ImageInfo:
    """A machine image as the cloud describes it, and who logs in to its instances."""

    image_id: str
    name: str
    description: str
    owner: str
    arch: str  # "x86_64" or "arm64"
    root_device: str  # where the root volume goes
    # The image's default SSH user (ubuntu, ec2-user, admin, ...) from its family;
    # None when the family is unknown (the cluster file's `user` must say).
    user: str | None
    family: str = ""  # e.g. "ubuntu", "amazon-linux", "debian"; "" = unknown


@dataclass(frozen=True)
class BakedImage:
    """An image provision baked from a configured node (`provision image create`)."""

    image_id: str
    name: str
    cluster: str  # the cluster it was baked from
    digest: str  # the environment digest of its venv ("" = unknown)
    created: str  # ISO 8601 creation time, as the cloud reports it
    state: str  # pending, available, failed, ...
    snapshots: tuple[str, ...] = ()  # the snapshots it holds (deleted with it)


@dataclass(frozen=True)
class NetworkInfo:
    """Where nodes launch: one VPC and, per availability zone, the subnet to use."""

    vpc_id: str
    subnets: dict[str, str]  # zone -> subnet id


@dataclass(frozen=True)
class ZonePrice:
    """Spot price of one instance type in one availability zone, USD per hour."""

    zone: str
    current: float  # latest price: what a launch now pays
    average: float  # time-weighted over the window: what a long search pays
    maximum: float  # worst seen in the window: a bid above it was never interrupted by price
    samples: int  # price changes seen, a rough measure of volatility


@dataclass(frozen=True)
class InstanceInfo:
    """One instance as the cloud reports it."""

    instance_id: str
    role: str
    instance_type: str
    state: str  # pending | running | shutting-down | terminated | stopping | stopped
    zone: str
    lifecycle: str  # "spot" or "on-demand"
    private_ip: str | None
    public_ip: str | None
    launch_time: dt.datetime | None
    spot_request_id: str | None = None
    name: str = ""  # e.g. master, node001 (from the Name tag)
    state_reason: str = ""  # EC2's StateReason code, e.g. Client.InstanceInitiatedShutdown

    @property
    def label(self) -> str:
        """How messages and per-node results name it: its name, else its id (unnamed
        when a launch failed before naming it)."""
        return self.name or self.instance_id


@dataclass
class ClusterInfo:
    """A cluster as rebuilt from the cloud's tags: the source of truth."""

    name: str
    region: Region
    instances: list[InstanceInfo] = field(default_factory=list)
    security_group_id: str | None = None
    key_name: str | None = None

    @property
    def alive(self) -> list[InstanceInfo]:
        """Instances that are pending or running (not gone or going)."""
        return [i for i in self.instances if i.state in ALIVE_STATES]

    @property
    def master(self) -> InstanceInfo | None:
        for i in self.alive:
            if i.role == MASTER:
                return i
        return None

    @property
    def workers(self) -> list[InstanceInfo]:
        return sorted((i for i in self.alive if i.role == WORKER), key=lambda i: i.label)

    @property
    def nodes(self) -> list[InstanceInfo]:
        """Master first, then workers in name order."""
        master = self.master
        return ([master] if master else []) + self.workers

    def merge(self, instances: list[InstanceInfo]) -> None:
        """Put these (described by id, so newer) in place of the same instances, or add
        them: a tag query may not show an instance launched seconds ago."""
        ids = {i.instance_id for i in instances}
        self.instances = [i for i in self.instances if i.instance_id not in ids] + instances

    def find(self, ref: str) -> InstanceInfo | None:
        """Look a node up by instance id, name or IP address."""
        for i in self.alive:
            if ref in (i.instance_id, i.name, i.private_ip, i.public_ip):
                return i
        return None


# --- before a launch: what it needs, what it finds, what it costs ------------------

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class LaunchPlan:
    """What `up` would launch now (the shortfall), for `preflight` to check."""

    cluster: str
    instance_type: str
    vcpus: int  # per node
    on_demand: int  # nodes to launch on demand
    spot: int  # nodes to launch on spot
    spot_bid: float | None
    zone: str | None  # configured zone, or None for the cheapest
    key_name: str
    public_key: str  # "" when the local key does not exist yet: `up` creates it


@dataclass(frozen=True)
class Finding:
    """One line of `provision check`: what was checked, how it went, and why."""

    check: str  # e.g. "credentials", "vCPU quota (spot)"
    status: str  # OK | WARN | FAIL
    detail: str
    input: bool = True  # a FAIL the user fixes in the cluster file or the account (exit 2)


@dataclass(frozen=True)
class PriceSheet:
    """What one node of a type costs per hour in a region, by part."""

    on_demand: float | None  # USD/hour, None = unknown
    spot: dict[str, float]  # zone -> current spot price, USD/hour
    storage_gb_month: float  # root volume (gp3), USD per GB-month
    public_ip_hour: float  # one public IPv4 address, USD/hour
    source: str  # where the on-demand and storage prices came from


def price_integral(
    samples: list[tuple[dt.datetime, float]], start: dt.datetime, end: dt.datetime
) -> float:
    """USD over [start, end] of a price per hour that changes at `samples`
    ((time, price), oldest first), each price holding until the next change.

    A price with a timestamp before `start` is the one in effect at `start`
    (as EC2's spot price history reports it); spans are clipped to the window.
    """
    total = 0.0
    ends = [t for t, _ in samples[1:]] + [end] if samples else []
    for (t, price), until in zip(samples, ends, strict=True):
        hours = (min(until, end) - max(t, start)).total_seconds() / 3600
        if hours > 0:
            total += hours * price
    return total

