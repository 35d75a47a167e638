"""Teardown on EC2: everything tagged with a cluster, dependants first. See the
contract in `provision.cloud`."""

from __future__ import annotations

from provision.cloud.aws import api, network
from provision.cloud.aws.instances import terminate_instances
from provision.cloud.common import CLUSTER_TAG, TEARDOWN_S, OnStep, Region

# A security group whose nodes are gone is free within seconds; give up after this.
GROUP_DELETE_TIMEOUT_S = 300


@api.api_errors
def terminate_cluster(
    region: Region, cluster: str, *, timeout: float = TEARDOWN_S, on_step: OnStep | None = None
) -> dict[str, int]:
    """See the contract.

    Order: instances (waited for, so their ENIs release the group), open spot
    requests (else EC2 could relaunch), detached volumes, the security group,
    key pairs this tool imported (the user's own are kept).
    """
    step = on_step or (lambda text: None)
    ec2 = api.ec2_client(region)
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
    available = [api.by_tag(CLUSTER_TAG, cluster), {"Name": "status", "Values": ["available"]}]
    if ids := sorted(v["VolumeId"] for v in ec2.describe_volumes(Filters=available)["Volumes"]):
        step(f"deleting volume(s) {', '.join(ids)}")
        for vol in ids:
            ec2.delete_volume(VolumeId=vol)
    removed["volumes"] = ids
    groups = ec2.describe_security_groups(Filters=api.ours(cluster))["SecurityGroups"]
    if ids := sorted(g["GroupId"] for g in groups):
        step(f"deleting security group(s) {', '.join(ids)}")
    wait = min(timeout, GROUP_DELETE_TIMEOUT_S)
    removed["security_groups"] = [g for g in ids if network.delete_group(ec2, g, timeout=wait)]
    pairs = ec2.describe_key_pairs(Filters=api.ours(cluster))["KeyPairs"]
    if ids := sorted(k["KeyName"] for k in pairs):
        step(f"deleting key pair(s) {', '.join(ids)}")
        for key in ids:
            ec2.delete_key_pair(KeyName=key)
    removed["key_pairs"] = ids
    return {kind: len(ids) for kind, ids in removed.items()}


@api.api_errors
def leftovers(region: Region, cluster: str) -> dict[str, list[str]]:
    """See the contract."""
    ec2 = api.ec2_client(region)
    tag = [api.by_tag(CLUSTER_TAG, cluster)]
    live = api.instances(ec2, api.live(cluster))
    open_requests = [*tag, {"Name": "state", "Values": ["open", "active"]}]
    spot = ec2.describe_spot_instance_requests(Filters=open_requests)["SpotInstanceRequests"]
    return {
        "instances": sorted(i["InstanceId"] for i in live),
        "spot_requests": sorted(s["SpotInstanceRequestId"] for s in spot),
        "volumes": sorted(v["VolumeId"] for v in ec2.describe_volumes(Filters=tag)["Volumes"]),
        "security_groups": sorted(
            g["GroupId"] for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]
        ),
        "key_pairs": sorted(k["KeyName"] for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]),
    }
