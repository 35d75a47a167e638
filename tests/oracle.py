"""What a cluster left behind, asked with plain boto3: the tests' own oracle.

`down` checks itself with the provider's `leftovers()`; a test that asked the
same function would pass whatever `down` forgot, as long as `leftovers` forgot it
too. This module shares nothing with provision's cloud code: it spells the tag
key out, builds its own client and lists every kind of resource that can bill or
linger, in every state that counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3

CLUSTER_TAG = "provision:cluster"  # spelled out: a changed tag key must fail the tests
KINDS = ("instances", "spot_requests", "volumes", "security_groups", "key_pairs", "images",
         "snapshots")


def ec2_client(region: Any = None) -> Any:
    """A plain boto3 EC2 client: for `region` (a provision Region: its endpoint and
    keys, e.g. the simulated region's), or moto's default us-east-1."""
    if region is None:
        return boto3.client("ec2", region_name="us-east-1")
    kwargs: dict[str, Any] = {"region_name": region.name}
    if region.endpoint_url:
        kwargs["endpoint_url"] = region.endpoint_url
    if region.access_key:
        kwargs["aws_access_key_id"] = region.access_key
        kwargs["aws_secret_access_key"] = region.secret_key
    return boto3.client("ec2", **kwargs)


def _listing(ec2: Any, filters: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every resource matching `filters` (tags), by kind, in the states that count."""
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    instances = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
    open_states = [{"Name": "state", "Values": ["open", "active"]}]
    spot = ec2.describe_spot_instance_requests(Filters=filters + open_states)
    return {
        "instances": sorted(
            i["InstanceId"] for i in instances if i["State"]["Name"] != "terminated"
        ),
        "spot_requests": sorted(
            s["SpotInstanceRequestId"] for s in spot["SpotInstanceRequests"]
        ),
        "volumes": sorted(v["VolumeId"] for v in ec2.describe_volumes(Filters=filters)["Volumes"]),
        "security_groups": sorted(
            g["GroupId"]
            for g in ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
            if g["GroupName"] != "default"
        ),
        "key_pairs": sorted(
            k["KeyName"] for k in ec2.describe_key_pairs(Filters=filters)["KeyPairs"]
        ),
        "images": sorted(
            i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
        ),
        "snapshots": sorted(
            s["SnapshotId"]
            for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]
        ),
    }


def leftovers(ec2: Any, cluster: str) -> dict[str, list[str]]:
    """Everything tagged with `cluster` that still exists, by kind (see `KINDS`);
    only the kinds with something in them."""
    found = _listing(ec2, [{"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]}])
    return {kind: ids for kind, ids in found.items() if ids}


def anything(ec2: Any) -> dict[str, list[str]]:
    """Everything in the region, tagged or not (the default security group aside),
    by kind. moto starts with snapshots of its own images: compare with a listing
    from before (`created_since`)."""
    return _listing(ec2, [])


def created_since(ec2: Any, before: dict[str, list[str]]) -> dict[str, list[str]]:
    """What exists now that was not in `before` (an `anything` listing), by kind;
    only the kinds with something new."""
    now = anything(ec2)
    new = {kind: sorted(set(now[kind]) - set(before.get(kind, []))) for kind in now}
    return {kind: ids for kind, ids in new.items() if ids}


def files_under(root: Path) -> list[str]:
    """Every file under `root` (local state, caches), relative; [] when it does not exist."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_nothing_left(ec2: Any, cluster: str) -> None:
    left = leftovers(ec2, cluster)
    assert left == {}, f"cluster {cluster!r} left {left}"
