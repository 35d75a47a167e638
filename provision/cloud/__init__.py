"""The provider contract: what every cloud provider implements, written once.

Each function below is documented here and never runs its own body: `_route`
sends the call to the provider module the region names (`region.provider`, a
module of this package) and to its function of the same name
(``getattr(module, func.__name__)``), as SkyPilot's `sky/provision/__init__.py`
does. Provider modules say "See the contract" instead of repeating it.

What every provider promises:

- Stateless functions over `Region` and the dataclasses of `cloud.common`: each
  call asks the cloud afresh, with no provider object and no cache, because the
  cloud's tags (`CLUSTER_TAG`, `ROLE_TAG`) are the source of truth.
- Every resource it creates carries the cluster's tags, so `describe_cluster`
  and `terminate_cluster` find everything after any crash.
- Every wait is bounded, every `ensure_*` is idempotent, teardown works on a
  half-built cluster.
- Every error the user can act on is a `CloudError` with a one-line message;
  a failure of the API itself (credentials, throttling past retries) is a
  `CloudAPIError`. The provider's own exception stays chained for debugging.
- Nothing here opens SSH: node setup takes `ClusterInfo` and goes from there.

A second provider is a module (or package) ``provision/cloud/NAME`` that
implements these functions, plus NAME in `PROVIDERS`; nothing outside this
package changes.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import ParamSpec, TypeVar

from provision.cloud.common import (
    TEARDOWN_S,
    BakedImage,
    CloudError,
    ClusterInfo,
    Finding,
    ImageInfo,
    InstanceInfo,
    InstanceTypeInfo,
    LaunchPlan,
    LaunchRequest,
    NetworkInfo,
    OnStep,
    PriceSheet,
    Progress,
    Region,
    ZonePrice,
)

PROVIDERS = ("aws",)  # modules of this package that implement the contract
CONTRACT: list[str] = []  # names of the functions below, in order (filled by `_route`)

P = ParamSpec("P")
R = TypeVar("R")


def provider(name: str) -> ModuleType:
    """The module implementing the contract for provider `name`."""
    if name not in PROVIDERS:
        raise CloudError(f"unknown cloud provider {name!r} (known: {', '.join(PROVIDERS)})")
    return importlib.import_module(f"{__name__}.{name}")


def _route(func: Callable[P, R]) -> Callable[P, R]:
    """Call the implementation of `func` by the provider of its first argument, a Region."""
    CONTRACT.append(func.__name__)

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        region = args[0] if args else kwargs["region"]
        assert isinstance(region, Region), f"{func.__name__}: first argument must be a Region"
        impl: Callable[P, R] = getattr(provider(region.provider), func.__name__)
        return impl(*args, **kwargs)

    return call


def named_region(name: str, provider_name: str = "aws") -> Region:
    """The `Region` called `name` at `provider_name`, with the provider's defaults."""
    provider(provider_name)  # an unknown provider fails here, before anything runs
    return Region(name=name, provider=provider_name)


# --- instance types, prices, images --------------------------------------------------


@_route
def describe_instance_type(region: Region, instance_type: str) -> InstanceTypeInfo:
    """vCPUs, memory, architecture and approximate on-demand price of a type.

    `CloudError` naming the type and region when the region does not offer it.
    """
    raise NotImplementedError


@_route
def spot_price_history(
    region: Region, instance_type: str, *, days: float = 1.0, end: dt.datetime | None = None
) -> list[ZonePrice]:
    """Spot prices per zone over the `days` before `end` (default: now), cheapest
    current (at `end`) price first.

    Ties on the current price go to the lower average, then the zone name.
    `days=0` asks only for the price in effect now. An empty list when the
    region has no spot market for the type.
    """
    raise NotImplementedError


@_route
def resolve_image(region: Region, image_id: str | None, arch: str = "x86_64") -> str:
    """The configured image, checked to exist for `arch`, or else the provider's
    current default Linux image for `arch`. `CloudError` if there is none."""
    raise NotImplementedError


@_route
def describe_image(region: Region, image_id: str) -> ImageInfo:
    """The image's name, publisher and architecture, and its family's default SSH
    user (None when the family is unknown). `CloudError` if it does not exist."""
    raise NotImplementedError


@_route
def spot_price_series(
    region: Region, instance_type: str, zone: str, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, float]]:
    """Spot price changes of `instance_type` in `zone` that matter for [start, end],
    oldest first: the price in effect at `start` (with its older timestamp), then
    every change until `end`. Empty when there is no spot market there."""
    raise NotImplementedError


@_route
def price_sheet(region: Region, instance_type: str) -> PriceSheet:
    """What a node of `instance_type` costs per hour in `region`, part by part
    (compute on demand and on spot per zone, root storage, a public address).
    Never fails for want of a price list: unknown parts fall back to published
    list prices and `source` says so."""
    raise NotImplementedError


# --- baked images ---------------------------------------------------------------------


@_route
def create_image(
    region: Region, cluster: str, instance_id: str, name: str, *, digest: str,
    description: str = "",
) -> str:
    """Start baking the instance's disk into an image called `name`, without
    rebooting it; returns the image id at once (the image is still pending).

    The image and its snapshots carry the cluster's tag, the tool's tag and
    `digest` (the environment the node holds). `CloudError` when `name` is taken.
    """
    raise NotImplementedError


@_route
def wait_image(
    region: Region, image_id: str, *, timeout: float,
    on_progress: Callable[[float], None] | None = None,
) -> BakedImage:
    """Block until the image is available and its snapshots are tagged as its own;
    `CloudError` on timeout or when it fails. `on_progress(seconds)` hears each poll."""
    raise NotImplementedError


@_route
def list_images(region: Region, cluster: str | None = None) -> list[BakedImage]:
    """The images provision baked (of `cluster` only, when given), newest first."""
    raise NotImplementedError


@_route
def describe_baked(region: Region, image_id: str) -> BakedImage | None:
    """The image if provision baked it; None when it is another image or gone."""
    raise NotImplementedError


@_route
def find_image(region: Region, name: str) -> BakedImage | None:
    """The image provision baked under `name` (names are unique per account and
    region); None when there is none: another tool's image of that name is not it."""
    raise NotImplementedError


@_route
def delete_image(region: Region, image_id: str) -> list[str]:
    """Deregister a baked image and delete its snapshots (which would bill on);
    safe to repeat: returns the ids removed now, [] when nothing is left.
    `CloudError` for an image provision did not bake."""
    raise NotImplementedError


# --- before a launch -------------------------------------------------------------------


@_route
def caller_identity(region: Region) -> str:
    """Who the credentials are, in one line (account and principal).
    `CloudAPIError` when there are none or they are refused."""
    raise NotImplementedError


@_route
def preflight(region: Region, plan: LaunchPlan, *, fix: bool = False) -> list[Finding]:
    """Check that `plan` can launch, creating nothing: region, network, the type
    offered in the zone, spot prices against the bid, vCPU quotas against what
    runs already, the key pair, account prerequisites of spot (on AWS, the EC2
    Spot service-linked role). `fix` lets it create such a prerequisite (never a
    billable resource). One `Finding` per check, in that order."""
    raise NotImplementedError


@_route
def prerequisites(region: Region, plan: LaunchPlan, *, fix: bool = False) -> list[Finding]:
    """The last checks of `preflight`, on what `up` itself brings: the key pair
    (against `plan.public_key`, the key `up` imports) and the account
    prerequisites of spot (created with `fix`). `up` after a `check` that ran
    moments ago runs only these again: `check` may run before the local key
    exists, and creates nothing."""
    raise NotImplementedError


# --- network access and keys ---------------------------------------------------------


@_route
def resolve_network(region: Region, zone: str | None = None) -> NetworkInfo:
    """The VPC and, per zone (only `zone` when given), the subnet nodes launch into:
    `region.subnet_id`, else the subnets of `region.vpc_id`, else the provider's
    default network. `CloudError` naming the setting to change when there is none
    (e.g. an account without a default VPC)."""
    raise NotImplementedError


@_route
def caller_cidr(region: Region) -> str:
    """This machine's public address as a one-host CIDR, the default SSH source."""
    raise NotImplementedError


@_route
def ensure_security_group(region: Region, cluster: str, *, ssh_cidr: str) -> str:
    """Create or repair the cluster's network access rules, in the VPC of
    `resolve_network(region)`; returns their id.

    Inbound is exactly SSH from `ssh_cidr` plus everything between members
    (engines and controller use dynamic ports); any other inbound rule is
    removed, so a changed `ssh_cidr` replaces the old one.
    """
    raise NotImplementedError


@_route
def ensure_key_pair(region: Region, cluster: str, key_name: str, public_key: str) -> bool:
    """Register the user's public key as `key_name` unless already there.

    True if registered now. A pair of that name holding another key is a
    `CloudError`, never an overwrite.
    """
    raise NotImplementedError


# --- launch, wait, describe ------------------------------------------------------------


@_route
def launch(
    region: Region, req: LaunchRequest, *, on_launched: Callable[[list[str]], None] | None = None
) -> list[str]:
    """Launch `req.count` instances of one role in one request; returns sorted ids.

    Tagged with cluster and role at creation, then named (master, node001, ...:
    the lowest free numbers). Without `req.zone`, every zone offering the type
    is tried, cheapest spot price first, moving on after a capacity error; when
    all fail, the `CloudError` lists each zone with its error. A spot bid below
    the current price is logged as a warning, not refused. A public address
    exactly when `req.public_ip`. `on_launched(ids)` hears the ids as soon as the
    cloud returns them, before naming (so an interrupted caller still knows them).
    """
    raise NotImplementedError


@_route
def name_unnamed(region: Region, cluster: str) -> dict[str, str]:
    """Name live nodes that a failed launch left without a name; {instance_id: name}."""
    raise NotImplementedError


@_route
def wait_running(
    region: Region, instance_ids: list[str], *, timeout: float, on_progress: Progress | None = None
) -> None:
    """Block until every instance runs; `CloudError` on timeout or if one ends.

    `on_progress(running, total)` hears each poll. An empty list is a ValueError.
    """
    raise NotImplementedError


@_route
def describe_instances(region: Region, instance_ids: list[str]) -> list[InstanceInfo]:
    """The instances with these ids, sorted by id, waiting out the moment a new id is
    unknown to the cloud (filtered queries such as `describe_cluster` may not show
    an instance launched seconds ago; ask by id). Ids that stay unknown are left out."""
    raise NotImplementedError


@_route
def describe_cluster(region: Region, cluster: str) -> ClusterInfo:
    """Rebuild a cluster from tags alone (terminated instances included;
    `ClusterInfo.alive` filters), master first, then by name."""
    raise NotImplementedError


@_route
def list_clusters(region: Region) -> list[str]:
    """Names of the clusters with a live instance or leftover resources, sorted."""
    raise NotImplementedError


# --- teardown ----------------------------------------------------------------------------


@_route
def terminate_instances(
    region: Region,
    instance_ids: list[str],
    *,
    wait: bool = True,
    timeout: float = TEARDOWN_S,
    on_step: OnStep | None = None,
) -> None:
    """Terminate instances (ids already gone are skipped: safe to repeat; ids launched
    moments ago are found); with `wait`, until every one is terminated, whatever
    state it was in (pending included), or `timeout` seconds pass. `on_step(text)`
    hears what is still waited for, when that changes."""
    raise NotImplementedError


@_route
def terminate_cluster(
    region: Region,
    cluster: str,
    *,
    instance_ids: Sequence[str] = (),
    timeout: float = TEARDOWN_S,
    on_step: OnStep | None = None,
) -> dict[str, int]:
    """Remove everything of `cluster`, dependants first; safe to repeat.

    `instance_ids`: instances known to be the cluster's (launched moments ago,
    the cloud's tag queries may not show them yet). `on_step(text)` hears one
    line per kind of resource that has something to remove, and what it still
    waits for. Returns the count removed per kind (the keys of `leftovers`).
    Resources this tool did not create (the user's own key pair) are kept.
    """
    raise NotImplementedError


@_route
def leftovers(region: Region, cluster: str) -> dict[str, list[str]]:
    """Everything tagged with `cluster` that still exists or could still bill, by kind:
    instances, spot_requests, volumes, security_groups, key_pairs."""
    raise NotImplementedError
