"""Teardown on EC2: everything tagged with a cluster, dependants first. See the
contract in `provision.cloud`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from provision.cloud.aws import api, describe, network
from provision.cloud.common import CLUSTER_TAG, TEARDOWN_S, CloudError, OnStep, Region

# A security group whose nodes are gone is free within seconds; give up after this.
GROUP_DELETE_TIMEOUT_S = 300
# Instance ids the caller knows of but filters do not show: how long to wait for them
# to become known (launched moments ago) before taking them for long gone.
HINT_NOT_FOUND_S = 15


def _wait_terminated(ec2: Any, ids: list[str], timeout: float, on_step: OnStep | None) -> None:
    """Poll until every instance is `terminated`, saying what it still waits for.

    Not boto3's `instance_terminated` waiter: it fails at once on an instance that
    still reads `pending` (as one launched moments ago does, right after
    TerminateInstances), while EC2 takes such an instance through
    shutting-down to terminated like any other.
    """
    deadline = time.monotonic() + timeout
    said = ""
    for delay in api.poll_delays():
        states = {i["InstanceId"]: i["State"]["Name"] for i in describe.raw_by_ids(ec2, ids)}
        left = [f"{i} ({states[i]})" for i in ids if states.get(i, "terminated") != "terminated"]
        if not left:
            return
        if time.monotonic() + delay > deadline:
            raise CloudError(
                f"timed out after {timeout:g}s waiting for {', '.join(left)} to terminate"
            )
        text = f"waiting for {', '.join(left)} to terminate"
        if on_step is not None and text != said:
            on_step(text)
            said = text
        time.sleep(delay)


@api.api_errors
def terminate_instances(
    region: Region,
    instance_ids: list[str],
    *,
    wait: bool = True,
    timeout: float = TEARDOWN_S,
    on_step: OnStep | None = None,
) -> None:
    """See the contract. Instances are described by id (a new one is unknown to
    filters for a moment), terminated, then waited through pending and shutting-down."""
    if not instance_ids:
        return
    ec2 = api.ec2_client(region)
    known = describe.raw_by_ids(ec2, sorted(set(instance_ids)))
    live = sorted(i["InstanceId"] for i in known if i["State"]["Name"] in api.LIVE_STATES)
    if not live:
        return
    api.until_found(lambda: ec2.terminate_instances(InstanceIds=live))
    if wait:
        _wait_terminated(ec2, live, timeout, on_step)


@api.api_errors
def terminate_cluster(
    region: Region,
    cluster: str,
    *,
    instance_ids: Sequence[str] = (),
    timeout: float = TEARDOWN_S,
    on_step: OnStep | None = None,
) -> dict[str, int]:
    """See the contract.

    Order: instances (waited for, so their ENIs release the group), open spot
    requests (else EC2 could relaunch), detached volumes, the security group,
    key pairs this tool imported (the user's own are kept). `instance_ids` are
    looked up by id as well: launched moments ago, they may be missing from the
    tag-filtered answers for a while.
    """
    step = on_step or (lambda text: None)
    ec2 = api.ec2_client(region)
    left = leftovers(region, cluster)
    removed: dict[str, list[str]] = {}

    hinted = sorted(set(instance_ids) - set(left["instances"]))
    recent = describe.raw_by_ids(ec2, hinted, timeout=HINT_NOT_FOUND_S)
    live = {i["InstanceId"] for i in recent if i["State"]["Name"] in api.LIVE_STATES}
    if ids := sorted(set(left["instances"]) | live):
        step(f"terminating {len(ids)} instance(s): {', '.join(ids)}")
        terminate_instances(region, ids, timeout=timeout, on_step=step)
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
    removed["security_groups"] = [
        g for g in ids if network.delete_group(ec2, g, timeout=wait, on_step=step)
    ]
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
