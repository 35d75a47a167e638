"""EC2 as a handful of stateless functions (SkyPilot's `sky/provision` style).

Every function takes a `Region` plus plain values and asks EC2 afresh: there is
no provider object and no cache, because the cloud's tags are the source of
truth (`provision:cluster`, `provision:role`). Every wait is bounded, every
`ensure_*` is idempotent, and teardown can run on a half-built cluster.

Every public function raises `CloudError` with a one-line message, including
for API failures (no credentials, access denied, throttled past retries): the
CLI prints it as is, and the botocore error stays chained for debugging.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import math
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from provision.cloud import pricing
from provision.cloud.common import (
    CLUSTER_TAG,
    CREATED_BY_TAG,
    MASTER,
    ROLE_TAG,
    WORKER,
    ClusterInfo,
    InstanceInfo,
    LaunchRequest,
    Region,
)
from provision.cloud.pricing import ZonePrice
from provision.errors import ProvisionError

log = logging.getLogger(__name__)

TOOL = "provision"  # value of CREATED_BY_TAG
CHECKIP_URL = "https://checkip.amazonaws.com"
UBUNTU_PARAM = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
AL2023_PARAM = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"

# Codes after which another zone may succeed where this one cannot.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "SpotMaxPriceTooLow",
        "Unsupported",  # instance type not offered in this zone
        "InsufficientFreeAddressesInSubnet",
    }
)
# Retried by hand around run_instances, whose client has botocore retries off.
THROTTLE_ERRORS = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
_NODE_NAME = re.compile(r"^node(\d+)$")
_C_FAMILY = re.compile(r"^c\d+[a-z]*$")

Progress = Callable[[int, int], None]
P = ParamSpec("P")
R = TypeVar("R")


class CloudError(ProvisionError):
    """A failure the user can act on, with a one-line message."""


class CloudAPIError(CloudError):
    """The API itself failed (permissions, throttling past retries, outages), as
    opposed to a request the region cannot satisfy: not the user's input."""


def _api(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn botocore failures escaping a public function into a one-line CloudError."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            raise CloudAPIError(f"EC2 {e.operation_name} failed: {_message(e)} ({_code(e)})") from e
        except BotoCoreError as e:
            raise CloudAPIError(f"EC2 call failed: {e}") from e

    return wrapper


@dataclass(frozen=True)
class InstanceTypeInfo:
    name: str
    vcpus: int  # one ipengine per vCPU
    memory_mib: int
    arch: str  # "x86_64" or "arm64": picks the image
    on_demand_price: float | None = None  # approximate list price (pricing.on_demand_estimate)


# --- clients ----------------------------------------------------------------

_client_lock = threading.Lock()  # boto3's default session is not thread-safe to build clients


def _client(service: str, region: Region, fail_fast: bool) -> Any:
    # adaptive: client-side rate limiting smooths bursts of describe calls;
    # max_attempts counts retries. fail_fast makes exactly one attempt so a
    # capacity error moves launch on to the next zone at once.
    retries = (
        {"mode": "standard", "total_max_attempts": 1}
        if fail_fast
        else {"mode": "adaptive", "max_attempts": 8}
    )
    kwargs: dict[str, Any] = {"region_name": region.name, "config": Config(retries=retries)}
    if region.endpoint_url:
        kwargs["endpoint_url"] = region.endpoint_url
    if region.access_key and region.secret_key:
        kwargs["aws_access_key_id"] = region.access_key
        kwargs["aws_secret_access_key"] = region.secret_key
    with _client_lock:
        return boto3.client(service, **kwargs)


def ec2_client(region: Region, *, fail_fast: bool = False) -> Any:
    """An EC2 client; without explicit endpoint/keys boto3's own chain applies
    (including AWS_ENDPOINT_URL_EC2 and AWS_PROFILE)."""
    return _client("ec2", region, fail_fast)


def ssm_client(region: Region) -> Any:
    """An SSM client (image lookup); the simulated region serves it on the same endpoint."""
    return _client("ssm", region, False)


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _message(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Message", str(exc))


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _tag_dict(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def _by_tag(key: str, value: str) -> dict[str, Any]:
    return {"Name": f"tag:{key}", "Values": [value]}


def _ours(cluster: str) -> list[dict[str, Any]]:
    """Filters for resources this tool created for `cluster` (never the user's own)."""
    return [_by_tag(CLUSTER_TAG, cluster), _by_tag(CREATED_BY_TAG, TOOL)]


def _waiter_config(timeout: float, delay: float | None = None) -> dict[str, Any]:
    delay = delay or min(5.0, max(0.2, timeout / 60))
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout / delay))}


# --- instance types, prices, images ------------------------------------------


@_api
def describe_instance_type(region: Region, instance_type: str) -> InstanceTypeInfo:
    """Size a node, refusing non-compute-optimized types: model selection is
    CPU-bound, so m/r/t families pay for memory or burst credits it does not use."""
    family = instance_type.split(".", 1)[0]
    if not _C_FAMILY.match(family):
        raise CloudError(
            f"instance type {instance_type} is not compute-optimized; use a c-family type such as c5.xlarge"
        )
    try:
        found = ec2_client(region).describe_instance_types(InstanceTypes=[instance_type])
    except ClientError as e:
        if _code(e) != "InvalidInstanceType":
            raise
        found = {"InstanceTypes": []}
    if not found["InstanceTypes"]:
        raise CloudError(f"instance type {instance_type} is not offered in {region.name}")
    t = found["InstanceTypes"][0]
    archs = t["ProcessorInfo"]["SupportedArchitectures"]
    return InstanceTypeInfo(
        name=instance_type,
        vcpus=t["VCpuInfo"]["DefaultVCpus"],
        memory_mib=t["MemoryInfo"]["SizeInMiB"],
        arch="arm64" if "arm64" in archs else "x86_64",
        on_demand_price=pricing.on_demand_estimate(instance_type, t["VCpuInfo"]["DefaultVCpus"]),
    )


@_api
def spot_price_history(
    region: Region,
    instance_type: str,
    *,
    days: float = 1.0,
    product: str = "Linux/UNIX",
    now: dt.datetime | None = None,
) -> list[ZonePrice]:
    """Spot prices per zone over the last `days`, cheapest current price first.

    `days=0` asks only for the price in effect now. `now` (timezone-aware) is
    there so tests and recorded responses give stable windows.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(days=days)
    pages = (
        ec2_client(region)
        .get_paginator("describe_spot_price_history")
        .paginate(
            InstanceTypes=[instance_type],
            ProductDescriptions=[product],
            StartTime=start,
            EndTime=now,
        )
    )
    records = [rec for page in pages for rec in page["SpotPriceHistory"]]
    return pricing.summarize(records, start=start, now=now)


@_api
def cheapest_zone(
    region: Region, instance_type: str, *, days: float = 1.0, now: dt.datetime | None = None
) -> str:
    """The zone with the lowest current spot price (ties: lower average over `days`)."""
    prices = spot_price_history(region, instance_type, days=days, now=now)
    if not prices:
        raise CloudError(f"no spot price history for {instance_type} in {region.name}")
    return prices[0].zone


def _describe_image(region: Region, image_id: str) -> dict[str, Any]:
    try:
        images = ec2_client(region).describe_images(ImageIds=[image_id])["Images"]
    except ClientError as e:
        if not _code(e).startswith("InvalidAMIID"):
            raise
        images = []
    if not images:
        raise CloudError(
            f"image {image_id} does not exist in {region.name} (or is not shared with you)"
        )
    return images[0]


@_api
def resolve_image(region: Region, image_id: str | None, arch: str = "x86_64") -> str:
    """The configured image, checked, or else today's Ubuntu 24.04 LTS.

    Public SSM parameters name the latest image per region and architecture, so
    no AMI id goes stale in a config file. Amazon Linux 2023 is the fallback
    where Canonical's parameter is missing (some regions, the simulated one).
    """
    if arch not in ("x86_64", "arm64"):
        raise ValueError(f"arch must be x86_64 or arm64, not {arch!r}")
    if image_id:
        image = _describe_image(region, image_id)
        if image.get("Architecture", arch) != arch:
            raise CloudError(
                f"image {image_id} is {image['Architecture']}, the instance type needs {arch}"
            )
        return image_id
    ssm = ssm_client(region)
    names = [
        UBUNTU_PARAM.format(arch="amd64" if arch == "x86_64" else arch),
        AL2023_PARAM.format(arch=arch),
    ]
    for name in names:
        try:
            return ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as e:
            if _code(e) != "ParameterNotFound":
                raise
    raise CloudError(
        f"no Ubuntu 24.04 or Amazon Linux 2023 image for {arch} in {region.name}; set image_id"
    )


# --- network access and keys ---------------------------------------------------


def caller_cidr(timeout: float = 3.0) -> str:
    """This machine's public address as a one-host CIDR, the default SSH source."""
    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=timeout) as resp:
            ip = ipaddress.ip_address(resp.read(64).decode().strip())
    except (OSError, ValueError) as e:
        raise CloudError(
            f"could not learn this machine's public IP from {CHECKIP_URL} ({e}); set ssh_cidr in the cluster file"
        ) from e
    return f"{ip}/{ip.max_prefixlen}"


def _vpc_for(region: Region, ec2: Any) -> str:
    if region.subnet_id:
        return ec2.describe_subnets(SubnetIds=[region.subnet_id])["Subnets"][0]["VpcId"]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise CloudError(f"{region.name} has no default VPC; set subnet_id in the cluster file")
    return vpcs[0]["VpcId"]


def _flatten(permissions: Iterable[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """IpPermissions as atomic (protocol, from, to, kind, source) rules, so a
    reconcile is a set difference."""
    rules = set()
    for p in permissions:
        proto = p["IpProtocol"]
        ports = (None, None) if proto == "-1" else (p.get("FromPort"), p.get("ToPort"))
        sources = (
            [("cidr", r["CidrIp"]) for r in p.get("IpRanges", [])]
            + [("cidr6", r["CidrIpv6"]) for r in p.get("Ipv6Ranges", [])]
            + [("group", g["GroupId"]) for g in p.get("UserIdGroupPairs", [])]
            + [("prefix", r["PrefixListId"]) for r in p.get("PrefixListIds", [])]
        )
        rules.update((proto, *ports, kind, src) for kind, src in sources)
    return rules


def _permission(rule: tuple[Any, ...]) -> dict[str, Any]:
    proto, lo, hi, kind, src = rule
    perm: dict[str, Any] = {"IpProtocol": proto}
    if lo is not None:
        perm.update(FromPort=lo, ToPort=hi)
    field, key = {
        "cidr": ("IpRanges", "CidrIp"),
        "cidr6": ("Ipv6Ranges", "CidrIpv6"),
        "group": ("UserIdGroupPairs", "GroupId"),
        "prefix": ("PrefixListIds", "PrefixListId"),
    }[kind]
    perm[field] = [{key: src}]
    return perm


@_api
def ensure_security_group(
    region: Region, cluster: str, *, ssh_cidr: str, vpc_id: str | None = None
) -> str:
    """Create or repair the cluster's group; returns its id.

    Inbound is exactly SSH from `ssh_cidr` plus everything between members
    (ipyparallel's ZMQ ports are dynamic, so nodes must reach each other freely).
    Any other inbound rule is revoked, so a changed `ssh_cidr` replaces the old
    one instead of piling up. Outbound keeps EC2's default (all).
    """
    try:
        net = ipaddress.ip_network(ssh_cidr, strict=False)
    except ValueError as e:
        raise CloudError(f"ssh_cidr {ssh_cidr!r} is not a CIDR such as 203.0.113.7/32") from e
    ec2 = ec2_client(region)
    vpc_id = vpc_id or _vpc_for(region, ec2)
    name = f"provision-{cluster}"
    tags = {CLUSTER_TAG: cluster, CREATED_BY_TAG: TOOL}
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
    )["SecurityGroups"]
    if found:
        group = found[0]
        group_id = group["GroupId"]
        if any(_tag_dict(group).get(k) != v for k, v in tags.items()):
            ec2.create_tags(Resources=[group_id], Tags=_tags(tags))
        have = _flatten(group.get("IpPermissions", []))
    else:
        group_id = ec2.create_security_group(
            GroupName=name,
            Description=f"provision cluster {cluster}: SSH from the client, all traffic between nodes",
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(tags)}],
        )["GroupId"]
        have = set()
    kind = "cidr6" if net.version == 6 else "cidr"
    want = {("tcp", 22, 22, kind, str(net)), ("-1", None, None, "group", group_id)}
    if extra := sorted(have - want, key=str):
        ec2.revoke_security_group_ingress(
            GroupId=group_id, IpPermissions=[_permission(r) for r in extra]
        )
    if missing := sorted(want - have, key=str):
        ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[_permission(r) for r in missing]
        )
    return group_id


def _key_body(public_key: str) -> tuple[str, ...]:
    """Key type and base64 blob: the comment is not part of the key."""
    return tuple(public_key.split()[:2])


@_api
def ensure_key_pair(region: Region, cluster: str, key_name: str, public_key: str) -> bool:
    """Import the user's public key under `key_name` unless already there.

    Returns True if imported now (so a rollback knows to delete it). An existing
    pair holding another key is an error, not an overwrite: nodes launched with
    it would refuse the user's private key, and the pair may be someone else's.
    """
    ec2 = ec2_client(region)
    try:
        pair = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"][0]
    except ClientError as e:
        if _code(e) != "InvalidKeyPair.NotFound":
            raise
        ec2.import_key_pair(
            KeyName=key_name,
            PublicKeyMaterial=public_key.encode(),
            TagSpecifications=[
                {
                    "ResourceType": "key-pair",
                    "Tags": _tags({CLUSTER_TAG: cluster, CREATED_BY_TAG: TOOL}),
                }
            ],
        )
        return True
    # Compare key material, not fingerprints: EC2 fingerprints imported RSA keys
    # (MD5 of DER), ed25519 keys (SHA-256) and created keys differently.
    if pair.get("PublicKey") and _key_body(pair["PublicKey"]) != _key_body(public_key):
        raise CloudError(
            f"key pair {key_name} in {region.name} holds a different key "
            f"(fingerprint {pair.get('KeyFingerprint')}); delete it or choose another key_name"
        )
    return False


# --- launch -------------------------------------------------------------------


def _instances(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for res in page["Reservations"] for i in res["Instances"]]


def _names(ec2: Any, req: LaunchRequest) -> list[str]:
    """Name tags for the new instances.

    The master is "master" and refuses a second live one. Workers take the
    lowest free numbers among the cluster's live (not terminated) workers:
    node001, node002, ... so names stay short after removenode/addnode.
    """
    live = _instances(
        ec2,
        [_by_tag(CLUSTER_TAG, req.cluster), {"Name": "instance-state-name", "Values": LIVE_STATES}],
    )
    if req.role == MASTER:
        masters = sorted(i["InstanceId"] for i in live if _tag_dict(i).get(ROLE_TAG) == MASTER)
        if masters:
            raise CloudError(f"cluster {req.cluster} already has a master ({', '.join(masters)})")
        return [MASTER]
    used = {int(m.group(1)) for i in live if (m := _NODE_NAME.match(_tag_dict(i).get("Name", "")))}
    free = (n for n in range(1, req.count + len(used) + 1) if n not in used)
    return [f"node{next(free):03d}" for _ in range(req.count)]


def _placements(
    ec2: Any,
    region: Region,
    req: LaunchRequest,
    zones: list[str] | None,
    prices: dict[str, ZonePrice],
) -> list[tuple[str | None, str | None]]:
    """(zone, subnet) pairs to try in order.

    A configured subnet pins the zone, so there is nothing to fall back to.
    Otherwise: the given zones, else `req.zone`, else every zone offering the
    type, cheapest spot price first; each in the zone's default subnet.
    """
    subnet = req.subnet_id or region.subnet_id
    if subnet:
        zone = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["AvailabilityZone"]
        return [(zone, subnet)]
    if not zones:
        if req.zone:
            zones = [req.zone]
        else:
            offers = ec2.describe_instance_type_offerings(
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": [req.instance_type]}],
            )["InstanceTypeOfferings"]
            zones = sorted(
                {o["Location"] for o in offers},
                key=lambda z: (z not in prices, prices[z].current if z in prices else 0, z),
            )
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])[
        "Subnets"
    ]
    default = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
    return [(z, default.get(z)) for z in zones]


def _run_params(
    req: LaunchRequest, root_device: str, zone: str | None, subnet: str | None
) -> dict[str, Any]:
    tags = _tags({**req.tags, CLUSTER_TAG: req.cluster, ROLE_TAG: req.role})
    kinds = ["instance", "volume"] + (["spot-instances-request"] if req.spot else [])
    params: dict[str, Any] = {
        "ImageId": req.image_id,
        "InstanceType": req.instance_type,
        "MinCount": req.count,
        "MaxCount": req.count,
        "SecurityGroupIds": [req.security_group_id],
        # IMDSv2 only: a process on a node cannot be tricked into leaking credentials by SSRF.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [
            {
                "DeviceName": root_device,
                "Ebs": {
                    "VolumeSize": req.volume_size,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [{"ResourceType": k, "Tags": tags} for k in kinds],
        # Same token on a retried call: EC2 launches once, not twice.
        "ClientToken": uuid.uuid4().hex,
    }
    if req.key_name:
        params["KeyName"] = req.key_name
    if req.user_data:
        params["UserData"] = req.user_data
    if zone:
        params["Placement"] = {"AvailabilityZone": zone}
    if subnet:
        params["SubnetId"] = subnet
    if req.spot:
        spot: dict[str, Any] = {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        }
        if req.max_price is not None:
            spot["MaxPrice"] = str(req.max_price)
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
    return params


def _run(ec2: Any, params: dict[str, Any], attempts: int = 4) -> dict[str, Any]:
    """run_instances on a zero-retry client, retrying only throttling (with the same ClientToken)."""
    for attempt in range(attempts):
        try:
            return ec2.run_instances(**params)
        except ClientError as e:
            if _code(e) not in THROTTLE_ERRORS or attempt == attempts - 1:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


@_api
def launch(region: Region, req: LaunchRequest, *, zones: list[str] | None = None) -> list[str]:
    """Launch `req.count` instances of one role in one call; returns sorted ids.

    On a capacity error the next zone is tried; when all fail, the CloudError
    lists each zone with its error. A spot bid below the current price is
    logged as a warning (on `provision.cloud.ec2`), not refused: prices move,
    and EC2 itself answers SpotMaxPriceTooLow if the bid cannot be met.

    Tags cluster, role and `req.tags` are set atomically on the instances, root
    volumes and spot requests. The Name tag (see `_names`) is set right after,
    per instance, on the instance and whatever volume and spot request the
    response already names.
    """
    if req.count < 1 or req.role not in (MASTER, WORKER) or (req.role == MASTER and req.count != 1):
        raise ValueError(f"need one master or >= 1 workers, got {req.count} x {req.role!r}")
    ec2 = ec2_client(region)
    names = _names(ec2, req)
    prices: dict[str, ZonePrice] = {}
    if req.spot:
        try:
            prices = {p.zone: p for p in spot_price_history(region, req.instance_type, days=0)}
        except CloudError as e:  # prices only order zones and warn; never block a launch
            log.debug("no spot prices: %s", e)
    root = _describe_image(region, req.image_id).get("RootDeviceName") or "/dev/sda1"
    fast = ec2_client(region, fail_fast=True)
    tried = []
    for zone, subnet in _placements(ec2, region, req, zones, prices):
        price = prices.get(zone) if zone else None
        if req.spot and req.max_price is not None and price and req.max_price < price.current:
            log.warning(
                "spot bid %s is below the current %s price in %s (%s USD/h)",
                req.max_price,
                req.instance_type,
                zone,
                price.current,
            )
        try:
            found = _run(fast, _run_params(req, root, zone, subnet))["Instances"]
        except ClientError as e:
            if _code(e) not in CAPACITY_ERRORS:
                raise CloudError(
                    f"launching {req.count} x {req.instance_type} failed: {_message(e)}"
                ) from e
            tried.append(f"{zone or 'any zone'} ({_code(e)})")
            continue
        for inst, name in zip(sorted(found, key=lambda i: i["AmiLaunchIndex"]), names, strict=True):
            extra = [inst.get("SpotInstanceRequestId")] + [
                m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m
            ]
            ec2.create_tags(
                Resources=[inst["InstanceId"], *filter(None, extra)], Tags=_tags({"Name": name})
            )
        return sorted(i["InstanceId"] for i in found)
    market = "spot" if req.spot else "on-demand"
    raise CloudError(
        f"no {market} capacity for {req.count} x {req.instance_type}; tried {', '.join(tried)}"
    )


@_api
def name_unnamed(region: Region, cluster: str) -> dict[str, str]:
    """Name live nodes that have no Name tag; returns {instance_id: name}.

    `launch` names nodes in a second call after RunInstances, so a failure in
    between leaves them unnamed; the next `up` calls this to finish the job,
    with the names `launch` would have given ("master", lowest free nodeNNN).
    """
    ec2 = ec2_client(region)
    live = _instances(
        ec2, [_by_tag(CLUSTER_TAG, cluster), {"Name": "instance-state-name", "Values": LIVE_STATES}]
    )
    used = {int(m.group(1)) for i in live if (m := _NODE_NAME.match(_tag_dict(i).get("Name", "")))}
    free = (n for n in range(1, len(live) + len(used) + 1) if n not in used)
    named = {}
    def launched(inst: dict[str, Any]) -> tuple[Any, ...]:
        return inst.get("LaunchTime"), inst.get("AmiLaunchIndex", 0), inst["InstanceId"]

    for inst in sorted(live, key=launched):
        if _tag_dict(inst).get("Name"):
            continue
        name = MASTER if _tag_dict(inst).get(ROLE_TAG) == MASTER else f"node{next(free):03d}"
        extra = [inst.get("SpotInstanceRequestId")] + [
            m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m
        ]
        ec2.create_tags(
            Resources=[inst["InstanceId"], *filter(None, extra)], Tags=_tags({"Name": name})
        )
        named[inst["InstanceId"]] = name
    return named


# --- wait, describe, terminate ------------------------------------------------


@_api
def wait_running(
    region: Region,
    instance_ids: list[str],
    *,
    timeout: float,
    on_progress: Progress | None = None,
    delay: float | None = None,
) -> None:
    """Block until every instance is running; CloudError on timeout or if one dies.

    The boto3 waiter is run one attempt at a time so its acceptors (running =
    done; terminated/stopping = failure; not-found-yet = retry) decide, while
    this loop reports progress and owns the overall deadline.
    """
    if not instance_ids:
        raise ValueError("wait_running needs at least one instance id")
    ids = sorted(set(instance_ids))
    ec2 = ec2_client(region)
    waiter = ec2.get_waiter("instance_running")
    delay = delay or min(5.0, max(0.2, timeout / 60))
    deadline = time.monotonic() + timeout
    while True:
        try:
            waiter.wait(InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": 1})
        except WaiterError as e:
            found = [i for res in e.last_response.get("Reservations", []) for i in res["Instances"]]
            states = {i["InstanceId"]: i["State"]["Name"] for i in found}
            if "terminal failure" in str(e.kwargs.get("reason", "")):
                dead = [
                    f"{i} ({s})"
                    for i, s in sorted(states.items())
                    if s != "running" and s != "pending"
                ]
                raise CloudError(f"instances ended before running: {', '.join(dead)}") from e
            if on_progress:
                on_progress(sum(s == "running" for s in states.values()), len(ids))
            if time.monotonic() + delay > deadline:
                late = [
                    f"{i} ({states.get(i, 'not found')})" for i in ids if states.get(i) != "running"
                ]
                raise CloudError(
                    f"timed out after {timeout:g}s waiting for {', '.join(late)} to run"
                ) from e
            time.sleep(delay)
            continue
        if on_progress:
            on_progress(len(ids), len(ids))
        return


def _info(inst: dict[str, Any]) -> InstanceInfo:
    tags = _tag_dict(inst)
    return InstanceInfo(
        instance_id=inst["InstanceId"],
        role=tags.get(ROLE_TAG, WORKER),
        instance_type=inst["InstanceType"],
        state=inst["State"]["Name"],
        zone=inst.get("Placement", {}).get("AvailabilityZone", ""),
        lifecycle=inst.get("InstanceLifecycle") or "on-demand",
        private_ip=inst.get("PrivateIpAddress"),
        public_ip=inst.get("PublicIpAddress"),
        launch_time=inst.get("LaunchTime"),
        spot_request_id=inst.get("SpotInstanceRequestId"),
        name=tags.get("Name", ""),
    )


@_api
def describe_cluster(region: Region, cluster: str) -> ClusterInfo:
    """Rebuild a cluster from tags alone (terminated instances included;
    `ClusterInfo.alive` filters), master first, then by name."""
    ec2 = ec2_client(region)
    raw = _instances(ec2, [_by_tag(CLUSTER_TAG, cluster)])
    instances = sorted(
        map(_info, raw), key=lambda i: (i.role != MASTER, i.name or "~", i.instance_id)
    )
    groups = ec2.describe_security_groups(Filters=[_by_tag(CLUSTER_TAG, cluster)])["SecurityGroups"]
    keys = [
        k["KeyName"]
        for k in ec2.describe_key_pairs(Filters=[_by_tag(CLUSTER_TAG, cluster)])["KeyPairs"]
    ]
    # The user's own key pair carries no tag of ours: then the nodes name it.
    keys += [i["KeyName"] for i in raw if i.get("KeyName")]
    return ClusterInfo(
        name=cluster,
        region=region,
        instances=instances,
        security_group_id=groups[0]["GroupId"] if groups else None,
        key_name=keys[0] if keys else None,
    )


@_api
def list_clusters(region: Region) -> list[str]:
    """Clusters with a live instance or a leftover security group, sorted."""
    ec2 = ec2_client(region)
    has_tag = {"Name": "tag-key", "Values": [CLUSTER_TAG]}
    live = _instances(ec2, [has_tag, {"Name": "instance-state-name", "Values": LIVE_STATES}])
    groups = ec2.describe_security_groups(Filters=[has_tag])["SecurityGroups"]
    return sorted({_tag_dict(r)[CLUSTER_TAG] for r in [*live, *groups]})


@_api
def terminate_instances(
    region: Region, instance_ids: list[str], *, wait: bool = True, timeout: float = 600
) -> None:
    """Terminate (ids already gone are skipped, so this is safe to repeat)."""
    if not instance_ids:
        return
    ec2 = ec2_client(region)
    live = [
        i["InstanceId"]
        for i in _instances(
            ec2,
            [
                {"Name": "instance-id", "Values": list(instance_ids)},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ],
        )
    ]
    if not live:
        return
    ec2.terminate_instances(InstanceIds=sorted(live))
    if wait:
        try:
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=sorted(live), WaiterConfig=_waiter_config(timeout)
            )
        except WaiterError as e:
            raise CloudError(
                f"timed out after {timeout:g}s waiting for {', '.join(sorted(live))} to terminate"
            ) from e


def _delete_group(ec2: Any, group_id: str, *, timeout: float, delay: float = 5.0) -> bool:
    """Delete a group, retrying while ENIs of terminating nodes still hold it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return True
        except ClientError as e:
            if _code(e) == "InvalidGroup.NotFound":
                return False
            if _code(e) != "DependencyViolation" or time.monotonic() + delay > deadline:
                raise CloudError(
                    f"could not delete security group {group_id}: {_message(e)}"
                ) from e
        time.sleep(delay)


@_api
def terminate_cluster(
    region: Region,
    cluster: str,
    *,
    timeout: float = 600,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Remove everything of `cluster`, dependants first; safe to repeat.

    Order: instances (waited for, so their ENIs release the group), open spot
    requests (else EC2 could relaunch), detached volumes, the security group,
    key pairs this tool imported (the user's own are kept). `on_step(text)`
    hears one line per kind that has something to remove. Returns the count
    removed per kind: instances, spot_requests, volumes, security_groups,
    key_pairs.
    """
    step = on_step or (lambda text: None)
    ec2 = ec2_client(region)
    left = leftovers(region, cluster)
    removed: dict[str, list[str]] = {}

    if ids := left["instances"]:
        step(f"terminating {len(ids)} instance(s): {', '.join(ids)}")
        terminate_instances(region, ids, timeout=timeout)
    removed["instances"] = ids
    if ids := left["spot_requests"]:
        step(f"cancelling spot request(s) {', '.join(ids)}")
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=ids)
    removed["spot_requests"] = ids
    # Root volumes go with their instance; what remains was detached or kept.
    vols = ec2.describe_volumes(
        Filters=[_by_tag(CLUSTER_TAG, cluster), {"Name": "status", "Values": ["available"]}]
    )["Volumes"]
    if ids := sorted(v["VolumeId"] for v in vols):
        step(f"deleting volume(s) {', '.join(ids)}")
        for vol in ids:
            ec2.delete_volume(VolumeId=vol)
    removed["volumes"] = ids
    groups = sorted(
        g["GroupId"] for g in ec2.describe_security_groups(Filters=_ours(cluster))["SecurityGroups"]
    )
    if groups:
        step(f"deleting security group(s) {', '.join(groups)}")
    removed["security_groups"] = [
        g for g in groups if _delete_group(ec2, g, timeout=min(timeout, 300))
    ]
    if ids := sorted(
        k["KeyName"] for k in ec2.describe_key_pairs(Filters=_ours(cluster))["KeyPairs"]
    ):
        step(f"deleting key pair(s) {', '.join(ids)}")
        for key in ids:
            ec2.delete_key_pair(KeyName=key)
    removed["key_pairs"] = ids
    return {kind: len(ids) for kind, ids in removed.items()}


@_api
def leftovers(region: Region, cluster: str) -> dict[str, list[str]]:
    """Everything tagged with `cluster` that still exists or could still bill."""
    ec2 = ec2_client(region)
    tag = [_by_tag(CLUSTER_TAG, cluster)]
    live = _instances(ec2, [*tag, {"Name": "instance-state-name", "Values": LIVE_STATES}])
    spot = ec2.describe_spot_instance_requests(
        Filters=[*tag, {"Name": "state", "Values": ["open", "active"]}]
    )
    return {
        "instances": sorted(i["InstanceId"] for i in live),
        "spot_requests": sorted(s["SpotInstanceRequestId"] for s in spot["SpotInstanceRequests"]),
        "volumes": sorted(v["VolumeId"] for v in ec2.describe_volumes(Filters=tag)["Volumes"]),
        "security_groups": sorted(
            g["GroupId"] for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]
        ),
        "key_pairs": sorted(k["KeyName"] for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]),
    }
