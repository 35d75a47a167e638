"""Instances on EC2: launch, name, wait, describe, terminate. See the contract in
`provision.cloud`.

Launch reconciles against tags: names come from the cluster's live instances,
capacity errors move on to the next zone (a zero-retry client, so that happens
at once), throttling is retried with the same ClientToken, so EC2 launches once.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from provision.cloud.aws import account, api, images, prices
from provision.cloud.common import (
    CLUSTER_TAG,
    MASTER,
    ROLE_TAG,
    TEARDOWN_S,
    WORKER,
    CloudError,
    ClusterInfo,
    InstanceInfo,
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
) -> list[tuple[str | None, str | None]]:
    """(zone, subnet) pairs to try in order.

    A configured subnet pins the zone, so there is nothing to fall back to.
    Otherwise `req.zone`, else every zone offering the type, cheapest spot
    price first; each in the zone's default subnet.
    """
    subnet = req.subnet_id or region.subnet_id
    if subnet:
        zone = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["AvailabilityZone"]
        return [(zone, subnet)]
    if req.zone:
        zones = [req.zone]
    else:
        offers = ec2.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [req.instance_type]}],
        )["InstanceTypeOfferings"]
        zones = sorted(
            {o["Location"] for o in offers},
            key=lambda z: (z != req.prefer_zone, z not in prices,
                           prices[z].current if z in prices else 0, z),
        )
    default_for_az = [{"Name": "default-for-az", "Values": ["true"]}]
    subnets = ec2.describe_subnets(Filters=default_for_az)["Subnets"]
    default = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
    return [(z, default.get(z)) for z in zones]


def _run_params(
    req: LaunchRequest, root_device: str, zone: str | None, subnet: str | None
) -> dict[str, Any]:
    tags = api.tags({**req.tags, CLUSTER_TAG: req.cluster, ROLE_TAG: req.role})
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


def _run(ec2: Any, params: dict[str, Any]) -> dict[str, Any]:
    """run_instances on a zero-retry client, retrying only throttling (same ClientToken)."""
    for attempt in range(1, RUN_ATTEMPTS + 1):
        try:
            return ec2.run_instances(**params)
        except ClientError as e:
            if api.code(e) not in THROTTLE_ERRORS or attempt == RUN_ATTEMPTS:
                raise
            time.sleep(api.backoff_delay(attempt))
    raise AssertionError("unreachable")


def _name(ec2: Any, inst: dict[str, Any], name: str) -> None:
    """Put the Name tag on an instance and on the volumes and spot request it names."""
    extra = [inst.get("SpotInstanceRequestId")] + [
        m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m
    ]
    ec2.create_tags(
        Resources=[inst["InstanceId"], *filter(None, extra)], Tags=api.tags({"Name": name})
    )


@api.api_errors
def launch(region: Region, req: LaunchRequest) -> list[str]:
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
        price = current.get(zone) if zone else None
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
            if api.code(e) not in CAPACITY_ERRORS:
                raise CloudError(
                    f"launching {req.count} x {req.instance_type} failed: {api.message(e)}"
                    + account.spot_role_hint(api.code(e))
                ) from e
            tried.append(f"{zone or 'any zone'} ({api.code(e)})")
            continue
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
    delay = api.poll_delay(timeout)
    deadline = time.monotonic() + timeout
    while True:
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


def _info(inst: dict[str, Any]) -> InstanceInfo:
    tags = api.tag_dict(inst)
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


@api.api_errors
def describe_cluster(region: Region, cluster: str) -> ClusterInfo:
    """See the contract."""
    ec2 = api.ec2_client(region)
    tagged = [api.by_tag(CLUSTER_TAG, cluster)]
    raw = api.instances(ec2, tagged)
    instances = sorted(
        map(_info, raw), key=lambda i: (i.role != MASTER, i.name or "~", i.instance_id)
    )
    groups = ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]
    keys = [k["KeyName"] for k in ec2.describe_key_pairs(Filters=tagged)["KeyPairs"]]
    # The user's own key pair carries no tag of ours: then the nodes name it.
    keys += [i["KeyName"] for i in raw if i.get("KeyName")]
    return ClusterInfo(
        name=cluster,
        region=region,
        instances=instances,
        security_group_id=groups[0]["GroupId"] if groups else None,
        key_name=keys[0] if keys else None,
    )


@api.api_errors
def list_clusters(region: Region) -> list[str]:
    """See the contract: a live instance or a leftover security group."""
    ec2 = api.ec2_client(region)
    has_tag = {"Name": "tag-key", "Values": [CLUSTER_TAG]}
    live = api.instances(ec2, [has_tag, {"Name": "instance-state-name", "Values": api.LIVE_STATES}])
    groups = ec2.describe_security_groups(Filters=[has_tag])["SecurityGroups"]
    return sorted({api.tag_dict(r)[CLUSTER_TAG] for r in [*live, *groups]})


@api.api_errors
def terminate_instances(
    region: Region, instance_ids: list[str], *, wait: bool = True, timeout: float = TEARDOWN_S
) -> None:
    """See the contract."""
    if not instance_ids:
        return
    ec2 = api.ec2_client(region)
    wanted = [
        {"Name": "instance-id", "Values": list(instance_ids)},
        {"Name": "instance-state-name", "Values": api.LIVE_STATES},
    ]
    live = sorted(i["InstanceId"] for i in api.instances(ec2, wanted))
    if not live:
        return
    ec2.terminate_instances(InstanceIds=live)
    if wait:
        try:
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=live, WaiterConfig=api.waiter_config(timeout)
            )
        except WaiterError as e:
            raise CloudError(
                f"timed out after {timeout:g}s waiting for {', '.join(live)} to terminate"
            ) from e
