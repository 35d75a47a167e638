"""The settings of one cluster, validated with pydantic: what every step reads.

`ClusterConfig` says what a valid cluster is, field by field; `provision.config`
says where the settings come from (a YAML file rendered through Jinja2, with
templates that extend one another, then flags) and turns a validation error
into one line naming the field as the user wrote it.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import ConfigDict, Field, field_validator

from provision.cloud import PROVIDERS
from provision.durations import parse_duration, show_duration

# Compute-optimised (c-family) types only: model selection is CPU-bound, so the m,
# r and t families pay for memory or burst credits a search does not use.
INSTANCE_TYPE_RE = re.compile(r"^c\d+[a-z]*(-flex)?\.[0-9a-z]+$")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")
VPC_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # a POSIX login name
# An AMI name: 3-128 characters of letters, digits and ()[] ./-'@_ (EC2's rule).
IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
IMAGE_ID_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
SHAPES = {  # field -> (pattern, what the value must look like)
    "subnet_id": (SUBNET_RE, "a subnet id like subnet-0123456789abcdef0"),
    "vpc_id": (VPC_RE, "a VPC id like vpc-0123456789abcdef0"),
    "user": (USER_RE, "a login name like ubuntu or ec2-user"),
}
MAX_HOURS = 24 * 366  # a lifetime cap beyond a year is a typo
MAX_SPOT_BID_USD = 100  # per node-hour: anything above is a typo, not a bid
SIM_REGION = "sim"  # the region name that means "the simulated region on this machine"
DEFAULT_KEY_PATH = Path("~/.ssh/provision_ed25519")


class ClusterConfig(pydantic.BaseModel):
    """Everything needed to launch one cluster; ``None`` means "resolved elsewhere".

    Fields left ``None`` (zone, image, user, CIDR, engines) depend on the cloud or the
    client machine, so the cloud layer and orchestrator fill them in at launch time rather
    than this module guessing offline.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "provision"  # cluster name, used in tags and the key pair name
    provider: str = "aws"  # cloud provider: a module of provision.cloud
    region: str = "sim"  # "sim" = the embedded simulated region; else an AWS region
    zone: str | None = None  # availability zone; None = cheapest for the type
    # Where workers go: "master" = the master's zone (no cross-zone traffic, which
    # AWS bills both ways), "cheapest" = any zone, cheapest spot price first.
    worker_zone: Literal["master", "cheapest"] = "master"
    subnet_id: str | None = None  # launch here (pins VPC and zone); None = vpc_id or default VPC
    vpc_id: str | None = None  # its subnets (one per zone); None = the default VPC
    public_ip: bool = True  # workers get a public IPv4; false: reached through the master
    instance_type: str = "c5.large"  # compute-optimised (c-family) only
    image_id: str | None = None  # None = latest Ubuntu LTS via public SSM parameter
    # Or a baked image by its name (`provision image create --name`), resolved to
    # its id at `up`/`check`: the file outlives a re-bake, an id would not.
    image: str | None = None
    user: str | None = None  # SSH user; None = the image's default (ubuntu, ec2-user, ...)
    cluster_size: int = Field(2, ge=1, le=100)  # total nodes including the master
    spot_bid: float | None = None  # USD/hour max price; None = on-demand
    spot_master: bool = False  # default: on-demand master (survives), spot workers
    volume_size: int = Field(30, ge=8, le=16384)  # root volume, GiB
    key_name: str | None = None  # EC2 key pair; None = f"provision-{name}"
    key_path: Path = Field(DEFAULT_KEY_PATH, validate_default=True)  # private key
    ssh_cidr: str | None = None  # who may SSH in; None = the caller's address /32
    packages: list[str] = []  # extra pip requirements for the nodes
    engines_per_node: int | None = Field(None, ge=1)  # None = one per vCPU
    master_engines: bool = True  # the master runs engines too
    remote_root: str = "/srv/provision"  # working directory on the nodes
    ssh_timeout: float = Field(300, gt=0)  # seconds to wait for SSH, per node
    # Where nodes whose image lacks the client's Python minor download one (uv's
    # managed Python); both None = uv's default source, which needs outbound internet.
    python_install_mirror: str | None = None  # UV_PYTHON_INSTALL_MIRROR
    python_downloads_json_url: str | None = None  # uv's --python-downloads-json-url
    launch_timeout: float = Field(600, gt=0)  # seconds to wait for "running"
    # `up` asks before launching more than this many USD/hour (None: never asks).
    confirm_above: float | None = Field(None, ge=0)
    # The cluster stops itself (an agent on the master, so with the laptop closed):
    # after this long idle (`30m`, `40s`, `1.5h`; a number is minutes), ...
    autostop: str | None = None
    max_hours: float | None = Field(None, gt=0, le=MAX_HOURS)  # ... after this long, busy or not
    budget: float | None = Field(None, gt=0)  # ... or once it has cost this many USD

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                f"must be 1-40 of a-z, 0-9 and '-', starting with a letter (got {v!r})"
            )
        return v

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str) -> str:
        if v not in PROVIDERS:
            raise ValueError(f"must be one of {', '.join(PROVIDERS)} (got {v!r})")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if v != SIM_REGION and not REGION_RE.match(v):
            raise ValueError(f"must be 'sim' or an AWS region like us-east-1 (got {v!r})")
        return v

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str | None, info: pydantic.ValidationInfo) -> str | None:
        region = info.data.get("region")
        if v is not None and region not in (None, SIM_REGION) and not v.startswith(region):
            raise ValueError(f"must be a zone of region {region} (got {v!r})")
        return v

    @field_validator("subnet_id", "vpc_id", "user")
    @classmethod
    def _shaped(cls, v: str | None, info: pydantic.ValidationInfo) -> str | None:
        regex, example = SHAPES[info.field_name or ""]
        if v is not None and not regex.match(v):
            raise ValueError(f"must be {example} (got {v!r})")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None, info: pydantic.ValidationInfo) -> str | None:
        """A baked image's name, never alongside `image_id` (which one would win is a
        guess; a template that extends one with `image_id` unsets it with `image_id: null`)."""
        if v is None:
            return None
        if info.data.get("image_id") is not None:
            raise ValueError(
                f"set image (a baked image's name) or image_id (an AMI id), not both "
                f"(got image {v!r} and image_id {info.data['image_id']!r})"
            )
        if IMAGE_ID_RE.match(v):
            raise ValueError(f"is an image id: set image_id: {v} instead (got {v!r})")
        if not IMAGE_NAME_RE.match(v):
            raise ValueError(f"must be an image name: 3-128 letters, digits, spaces and "
                             f"()[]./-'@_ (got {v!r})")
        return v

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, v: str) -> str:
        if not INSTANCE_TYPE_RE.match(v):
            raise ValueError(f"must be a compute-optimised c-family type like c5.large (got {v!r})")
        return v

    @field_validator("spot_bid")
    @classmethod
    def _spot_bid(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"must be a positive number (got {v:g})")
        if v is not None and v >= MAX_SPOT_BID_USD:
            raise ValueError(f"must be below {MAX_SPOT_BID_USD} USD/hour (got {v:g})")
        return v

    @field_validator("autostop", mode="before")
    @classmethod
    def _autostop(cls, v: object) -> str | None:
        """A duration, kept in one spelling (``40s``, ``30m``) so the saved record reads back
        the same: a bare number saved as such would mean minutes again."""
        if v is None:
            return None
        return show_duration(parse_duration(v))  # type: ignore[arg-type]

    @property
    def autostop_s(self) -> float | None:
        """The idle period in seconds (None: no autostop)."""
        return None if self.autostop is None else parse_duration(self.autostop)

    @field_validator("key_path")
    @classmethod
    def _key_path(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("ssh_cidr")
    @classmethod
    def _ssh_cidr(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ValueError(f"must be a CIDR like 203.0.113.7/32 (got {v!r})") from None

    @field_validator("python_install_mirror", "python_downloads_json_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(https?|file)://\S+$", v):
            raise ValueError(f"must be an http(s):// or file:// URL (got {v!r})")
        return v

    @field_validator("remote_root")
    @classmethod
    def _remote_root(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must be an absolute path (got {v!r})")
        return v

    @property
    def pair_name(self) -> str:
        """The EC2 key pair name: explicit, or derived from the cluster name."""
        return self.key_name or f"provision-{self.name}"

    @property
    def public_key_path(self) -> Path:
        """The public half, expected next to the private key as ``<key_path>.pub``."""
        return self.key_path.with_name(self.key_path.name + ".pub")
