"""Instances on EC2 as the cluster's tags and ids find them. See the contract in
`provision.cloud`.

Tag queries are eventually consistent on AWS (an instance launched seconds ago
may be missing), so new nodes are described by id, backing off while EC2 does not
know the id yet.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from provision.cloud.aws import api
from provision.cloud.common import (
    CLUSTER_TAG,
    MASTER,
    ROLE_TAG,
    WORKER,
    ClusterInfo,
    InstanceInfo,
    Region,
)


def info(inst: dict[str, Any]) -> InstanceInfo:
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
        state_reason=(inst.get("StateReason") or {}).get("Code", ""),
    )


@api.api_errors
def describe_cluster(region: Region, cluster: str) -> ClusterInfo:
    """See the contract."""
    ec2 = api.ec2_client(region)
    tagged = [api.by_tag(CLUSTER_TAG, cluster)]
    raw = api.instances(ec2, tagged)
    instances = sorted(
        map(info, raw), key=lambda i: (i.role != MASTER, i.name or "~", i.instance_id)
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


def _by_ids(ec2: Any, ids: list[str]) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
    return [i for page in pages for res in page["Reservations"] for i in res["Instances"]]


def raw_by_ids(
    ec2: Any, ids: list[str], timeout: float = api.NOT_FOUND_S
) -> list[dict[str, Any]]:
    """Instances by id, backing off while a new id is unknown to EC2 (filtered
    answers leave such an instance out, so new nodes are described by id).
    An id still unknown after `timeout` is left out: it is long gone, or was never one."""
    if not ids:
        return []
    try:
        return api.until_found(lambda: _by_ids(ec2, ids), timeout=timeout)
    except ClientError as e:
        if api.code(e) != "InvalidInstanceID.NotFound":
            raise
    found = []
    for iid in ids:  # one unknown id fails the whole call: keep the others
        try:
            found += _by_ids(ec2, [iid])
        except ClientError as e:
            if api.code(e) != "InvalidInstanceID.NotFound":
                raise
    return found


@api.api_errors
def describe_instances(region: Region, instance_ids: list[str]) -> list[InstanceInfo]:
    """See the contract."""
    raw = raw_by_ids(api.ec2_client(region), sorted(set(instance_ids)))
    return sorted(map(info, raw), key=lambda i: i.instance_id)
