"""Instances on EC2: launch, name, wait, describe, terminate. See the contract in
`provision.cloud`.

Launch reconciles against tags: names come from the cluster's live instances,
capacity errors move on to the next zone (a zero-retry client, so that happens
at once), throttling is retried with the same ClientToken, so EC2 launches once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from provision.cloud.aws import account, api, images, network, prices
from provision.cloud.common import (
    CLUSTER_TAG,
    MASTER,
    ROLE_TAG,
    WORKER,
    CloudError,
    LaunchRequest,
    Progress,
    Region,
    ZonePrice,
)

log = logging.getLogger(__name__)

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
RUN_ATTEMPTS = 4
_NODE_NAME = re.compile(r"^node(\d+)$")


def _node_names(live: list[dict[str, Any]], count: int) -> list[str]:
    """The `count` lowest free worker names (node001, ...) beside the `live` instances,
    so names stay short after removenode/addnode."""
    used = {
        int(m.group(1)) for i in live if (m := _NODE_NAME.match(api.tag_dict(i).get("Name", "")))
    }
    free = (n for n in range(1, count + len(used) + 1) if n not in used)
    return [f"node{next(free):03d}" for _ in range(count)]


def _names(ec2: Any, req: LaunchRequest) -> list[str]:
    """Name tags for the new instances: "master", which refuses a second live one,
    or the lowest free worker names."""
    live = api.instances(ec2, api.live(req.cluster))
    if req.role == MASTER:
        masters = sorted(
            i["InstanceId"] for i in live if api.tag_dict(i).get(ROLE_TAG) == MASTER
        )
        if masters:
            raise CloudError(f"cluster {req.cluster} already has a master ({', '.join(masters)})")
        return [MASTER]
    return _node_names(live, req.count)


def _placements(
    ec2: Any, region: Region, req: LaunchRequest, prices: dict[str, ZonePrice]
) -> list[tuple[str, str]]:
    """(zone, subnet) pairs to try in order.

    The subnets `network.resolve_network` offers (one per zone; in `req.zone`
    only, when set): a configured subnet pins the zone, so there is nothing to
    fall back to; otherwise the zones that offer the type, `req.prefer_zone` (the
    master's) first, then cheapest spot price first.
    """
    where = dataclasses.replace(region, subnet_id=req.subnet_id) if req.subnet_id else region
    subnets = network.resolve_network(where, req.zone).subnets
    if len(subnets) == 1:
        return list(subnets.items())
    offers = ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": [req.instance_type]}],
    )["InstanceTypeOfferings"]
    offered = {o["Location"] for o in offers}
    zones = sorted(
        (z for z in subnets if z in offered),
        key=lambda z: (z != req.prefer_zone, z not in prices,
                       prices[z].current if z in prices else 0, z),
    )
    if not zones:
        raise CloudError(
            f"{req.instance_type} is not offered in {', '.join(subnets)} (the zones with a subnet)"
        )
    return [(z, subnets[z]) for z in zones]


def _run_params(req: LaunchRequest, root_device: str, subnet: str) -> dict[str, Any]:
    """RunInstances' parameters. The network interface is spelled out, so the public
    address is what `req.public_ip` says, never the subnet's MapPublicIpOnLaunch:
    a node without one must not be mistaken for a reachable one."""
    tags = api.tags({**req.tags, CLUSTER_TAG: req.cluster, ROLE_TAG: req.role})
    kinds = ["instance", "volume"] + (["spot-instances-request"] if req.spot else [])
    params: dict[str, Any] = {
        "ImageId": req.image_id,
        "InstanceType": req.instance_type,
        "MinCount": req.count,
        "MaxCount": req.count,
        "NetworkInterfaces": [
            {
                "DeviceIndex": 0,
                "SubnetId": subnet,
                "Groups": [req.security_group_id],
                "AssociatePublicIpAddress": req.public_ip,
                "DeleteOnTermination": True,
            }
        ],
        # IMDSv2 only: a process on a node cannot be tricked into leaking credentials by SSRF.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "InstanceInitiatedShutdownBehavior": req.shutdown_behavior,
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
    if req.spot:
        spot: dict[str, Any] = {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        }
        if req.max_price is not None:
            spot["MaxPrice"] = str(req.max_price)
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
    return params


def _run(ec2: Any, params: dict[str, Any]) -> dict[str, Any]:
    """run_instances on a zero-retry client, retrying (with the same ClientToken) only
    throttling and a group or key pair made moments ago that EC2 does not know yet."""
    deadline = time.monotonic() + api.NOT_FOUND_S
    attempt = 0
    while True:
        try:
            return ec2.run_instances(**params)
        except ClientError as e:
            attempt += 1
            throttled = api.code(e) in THROTTLE_ERRORS and attempt < RUN_ATTEMPTS
            not_yet = api.code(e) in api.NOT_FOUND_CODES and time.monotonic() < deadline
            if not (throttled or not_yet):
                raise
        time.sleep(api.backoff_delay(attempt))


def _name(ec2: Any, inst: dict[str, Any], name: str) -> None:
    """Put the Name tag on an instance and on the volumes and spot request it names
    (backing off while EC2 does not know the new ids yet)."""
    extra = [inst.get("SpotInstanceRequestId")] + [
        m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m
    ]
    resources = [inst["InstanceId"], *filter(None, extra)]
    api.until_found(lambda: ec2.create_tags(Resources=resources, Tags=api.tags({"Name": name})))


@api.api_errors
def launch(
    region: Region, req: LaunchRequest, *, on_launched: Callable[[list[str]], None] | None = None
) -> list[str]:
    """See the contract. The warning on an underbid is logged on this module's logger.

    Tags cluster, role and `req.tags` are set atomically on the instances, root
    volumes and spot requests. The Name tag (see `_names`) is set right after,
    per instance, on the instance and whatever volume and spot request the
    response already names.
    """
    if req.count < 1 or req.role not in (MASTER, WORKER) or (req.role == MASTER and req.count != 1):
        raise ValueError(f"need one master or >= 1 workers, got {req.count} x {req.role!r}")
    ec2 = api.ec2_client(region)
    names = _names(ec2, req)
    current: dict[str, ZonePrice] = {}
    try:  # on demand too: the master goes where the spot workers are cheapest
        current = {
            p.zone: p for p in prices.spot_price_history(region, req.instance_type, days=0)
        }
    except CloudError as e:  # prices only order zones and warn; never block a launch
        log.debug("no spot prices: %s", e)
    root = images.root_device(region, req.image_id)
    fast = api.ec2_client(region, fail_fast=True)
    tried = []
    for zone, subnet in _placements(ec2, region, req, current):
        price = current.get(zone)
        if req.spot and req.max_price is not None and price and req.max_price < price.current:
            log.warning(
                "spot bid %s is below the current %s price in %s (%s USD/h)",
                req.max_price,
                req.instance_type,
                zone,
                price.current,
            )
        try:
            found = _run(fast, _run_params(req, root, subnet))["Instances"]
        except ClientError as e:
            if api.code(e) not in CAPACITY_ERRORS:
                raise CloudError(
                    f"launching {req.count} x {req.instance_type} failed: {api.message(e)}"
                    + account.spot_role_hint(api.code(e))
                ) from e
            tried.append(f"{zone} ({api.code(e)})")
            continue
        if on_launched is not None:
            on_launched(sorted(i["InstanceId"] for i in found))
        for inst, name in zip(sorted(found, key=lambda i: i["AmiLaunchIndex"]), names, strict=True):
            _name(ec2, inst, name)
        return sorted(i["InstanceId"] for i in found)
    market = "spot" if req.spot else "on-demand"
    raise CloudError(
        f"no {market} capacity for {req.count} x {req.instance_type}; tried {', '.join(tried)}"
    )


@api.api_errors
def name_unnamed(region: Region, cluster: str) -> dict[str, str]:
    """See the contract.

    `launch` names nodes in a second call after RunInstances, so a failure in
    between leaves them unnamed; the next `up` calls this to finish the job,
    with the names `launch` would have given ("master", lowest free nodeNNN).
    """
    ec2 = api.ec2_client(region)
    live = api.instances(ec2, api.live(cluster))

    def launched(inst: dict[str, Any]) -> tuple[Any, ...]:
        return inst.get("LaunchTime"), inst.get("AmiLaunchIndex", 0), inst["InstanceId"]

    unnamed = [i for i in sorted(live, key=launched) if not api.tag_dict(i).get("Name")]
    workers = [i for i in unnamed if api.tag_dict(i).get(ROLE_TAG) != MASTER]
    names = dict(zip((i["InstanceId"] for i in workers), _node_names(live, len(workers)),
                     strict=True))
    named = {}
    for inst in unnamed:
        name = names.get(inst["InstanceId"], MASTER)
        _name(ec2, inst, name)
        named[inst["InstanceId"]] = name
    return named


@api.api_errors
def wait_running(
    region: Region,
    instance_ids: list[str],
    *,
    timeout: float,
    on_progress: Progress | None = None,
) -> None:
    """See the contract.

    The boto3 waiter is run one attempt at a time so its acceptors (running =
    done; terminated/stopping = failure; not-found-yet = retry) decide, while
    this loop reports progress and owns the overall deadline.
    """
    if not instance_ids:
        raise ValueError("wait_running needs at least one instance id")
    ids = sorted(set(instance_ids))
    waiter = api.ec2_client(region).get_waiter("instance_running")
    delays = api.poll_delays()
    deadline = time.monotonic() + timeout
    while True:
        delay = next(delays)
        try:
            waiter.wait(InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": 1})
        except WaiterError as e:
            found = [i for res in e.last_response.get("Reservations", []) for i in res["Instances"]]
            states = {i["InstanceId"]: i["State"]["Name"] for i in found}
            if "terminal failure" in str(e.kwargs.get("reason", "")):
                why = {i["InstanceId"]: _state_reason(i) for i in found}
                dead = [f"{i} ({s}{why[i]})" for i, s in sorted(states.items())
                        if s not in ("running", "pending")]
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


def _state_reason(inst: dict[str, Any]) -> str:
    """Why an instance left pending, as EC2 says (e.g. Client.InvalidKMSKey.InvalidState
    when the account's default EBS key is unusable): ": CODE: message", or ""."""
    reason = inst.get("StateReason") or {}
    code, text = reason.get("Code", ""), reason.get("Message", "")
    if not code and not text:
        return ""
    return f": {text}" if text.startswith(code) else f": {code}: {text}".rstrip(": ")
