"""Instance types and machine images on EC2. See the contract in `provision.cloud`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from provision.cloud.aws import api, prices
from provision.cloud.common import (
    CLUSTER_TAG,
    CREATED_BY_TAG,
    DIGEST_TAG,
    IMAGE_TAG,
    BakedImage,
    CloudError,
    ImageInfo,
    InstanceTypeInfo,
    Region,
)

# Public SSM parameters naming today's image per region and architecture.
UBUNTU_PARAM = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
)
AL2023_PARAM = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
ARCHES = ("x86_64", "arm64")
DEFAULT_ROOT_DEVICE = "/dev/sda1"

# Image families and their default SSH user, as AWS's "Connect to your Linux
# instance" lists them: (family, user, publisher account ids, Name pattern,
# Name/Description pattern). Recognised by publisher first, then by name, then
# by words in name and description (e.g. Deep Learning AMIs "... (Ubuntu 22.04)").
FAMILIES: tuple[tuple[str, str, frozenset[str], str, str], ...] = (
    ("ubuntu", "ubuntu", frozenset({"099720109477"}), r"^ubuntu[\w-]*/images/", r"\bubuntu\b"),
    ("amazon-linux", "ec2-user", frozenset({"137112412989"}), r"^(al20\d\d-ami|amzn2?-ami)",
     r"\bamazon linux\b"),
    ("debian", "admin", frozenset({"136693071363"}), r"^debian-\d", r"\bdebian\b"),
    ("rhel", "ec2-user", frozenset({"309956199498"}), r"^RHEL-", r"\bred hat\b|\brhel\b"),
    ("suse", "ec2-user", frozenset({"013907871322"}), r"^suse-sles", r"\bsuse\b"),
    ("fedora", "fedora", frozenset(), r"^Fedora-", r"\bfedora\b"),
    ("centos", "centos", frozenset(), r"^CentOS", r"\bcentos\b"),
    ("rocky", "rocky", frozenset(), r"^Rocky-", r"\brocky linux\b"),
)


@api.api_errors
def describe_instance_type(region: Region, instance_type: str) -> InstanceTypeInfo:
    """See the contract."""
    try:
        found = api.ec2_client(region).describe_instance_types(InstanceTypes=[instance_type])
    except ClientError as e:
        if api.code(e) != "InvalidInstanceType":
            raise
        found = {"InstanceTypes": []}
    if not found["InstanceTypes"]:
        raise CloudError(f"instance type {instance_type} is not offered in {region.name}")
    t = found["InstanceTypes"][0]
    archs = t["ProcessorInfo"]["SupportedArchitectures"]
    vcpus = t["VCpuInfo"]["DefaultVCpus"]
    return InstanceTypeInfo(
        name=instance_type,
        vcpus=vcpus,
        memory_mib=t["MemoryInfo"]["SizeInMiB"],
        arch="arm64" if "arm64" in archs else "x86_64",
        on_demand_price=prices.on_demand_estimate(instance_type, vcpus),
    )


def _image(region: Region, image_id: str) -> dict[str, Any]:
    """The image as DescribeImages reports it; `CloudError` if it does not exist."""
    try:
        images = api.ec2_client(region).describe_images(ImageIds=[image_id])["Images"]
    except ClientError as e:
        if not api.code(e).startswith("InvalidAMIID"):
            raise
        images = []
    if not images:
        raise CloudError(
            f"image {image_id} does not exist in {region.name} (or is not shared with you)"
        )
    return images[0]


def image_family(name: str, description: str, owner: str) -> tuple[str, str] | None:
    """(family, default SSH user) of an image from DescribeImages' Name, Description
    and OwnerId; None when it is none of `FAMILIES`."""
    for family, user, owners, _, _ in FAMILIES:
        if owner in owners:
            return family, user
    for family, user, _, pattern, _ in FAMILIES:
        if re.search(pattern, name):
            return family, user
    text = f"{name} {description}"
    for family, user, _, _, words in FAMILIES:
        if re.search(words, text, re.IGNORECASE):
            return family, user
    return None


@api.api_errors
def describe_image(region: Region, image_id: str) -> ImageInfo:
    """See the contract."""
    image = _image(region, image_id)
    name, description = image.get("Name") or "", image.get("Description") or ""
    owner = image.get("OwnerId") or ""
    family, user = image_family(name, description, owner) or ("", None)
    return ImageInfo(
        image_id=image_id,
        name=name,
        description=description,
        owner=owner,
        arch=image.get("Architecture") or "x86_64",
        root_device=image.get("RootDeviceName") or DEFAULT_ROOT_DEVICE,
        user=user,
        family=family,
    )


def root_device(region: Region, image_id: str) -> str:
    """The device name the image boots from: where the encrypted root volume goes."""
    return _image(region, image_id).get("RootDeviceName") or DEFAULT_ROOT_DEVICE


@api.api_errors
def resolve_image(region: Region, image_id: str | None, arch: str = "x86_64") -> str:
    """See the contract. The default is today's Ubuntu 24.04 LTS.

    Public SSM parameters name the latest image per region and architecture, so
    no AMI id goes stale in a config file. Amazon Linux 2023 is the fallback
    where Canonical's parameter is missing (some regions, the simulated one).
    """
    if arch not in ARCHES:
        raise ValueError(f"arch must be x86_64 or arm64, not {arch!r}")
    if image_id:
        image = _image(region, image_id)
        if image.get("Architecture", arch) != arch:
            raise CloudError(
                f"image {image_id} is {image['Architecture']}, the instance type needs {arch}"
            )
        return image_id
    ssm = api.ssm_client(region)
    names = [
        UBUNTU_PARAM.format(arch="amd64" if arch == "x86_64" else arch),
        AL2023_PARAM.format(arch=arch),
    ]
    for name in names:
        try:
            return ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as e:
            if api.code(e) != "ParameterNotFound":
                raise
    raise CloudError(
        f"no Ubuntu 24.04 or Amazon Linux 2023 image for {arch} in {region.name}; set image_id"
    )


# --- baked images: `provision image create/list/delete` ------------------------------


def _baked(image: dict[str, Any]) -> BakedImage:
    tags = api.tag_dict(image)
    snaps = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings") or []
             if (m.get("Ebs") or {}).get("SnapshotId")]
    return BakedImage(
        image_id=image["ImageId"], name=image.get("Name") or "",
        cluster=tags.get(CLUSTER_TAG, ""), digest=tags.get(DIGEST_TAG, ""),
        created=image.get("CreationDate") or "", state=image.get("State") or "",
        snapshots=tuple(sorted(snaps)),
    )


def _own_images(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The account's images this tool baked, matching `filters`."""
    mine = [api.by_tag(CREATED_BY_TAG, api.TOOL), *filters]
    return ec2.describe_images(Owners=["self"], Filters=mine)["Images"]


@api.api_errors
def create_image(
    region: Region, cluster: str, instance_id: str, name: str, *, digest: str,
    description: str = "",
) -> str:
    """See the contract. The snapshots get the same tags once they exist (`wait_image`)."""
    tags = {CLUSTER_TAG: cluster, CREATED_BY_TAG: api.TOOL, DIGEST_TAG: digest}
    try:
        return api.ec2_client(region).create_image(
            InstanceId=instance_id, Name=name, Description=description[:255], NoReboot=True,
            TagSpecifications=[{"ResourceType": "image", "Tags": api.tags(tags)}],
        )["ImageId"]
    except ClientError as e:
        if api.code(e) == "InvalidAMIName.Duplicate":
            raise CloudError(f"an image called {name!r} exists already: choose another "
                             "--name") from e
        raise


@api.api_errors
def wait_image(
    region: Region, image_id: str, *, timeout: float,
    on_progress: Callable[[float], None] | None = None,
) -> BakedImage:
    """See the contract. boto3's `image_available` waiter, one poll per call so that
    progress is heard and the deadline is ours; it fails at once on `failed`."""
    ec2 = api.ec2_client(region)
    waiter = ec2.get_waiter("image_available")
    start = time.monotonic()
    for delay in api.poll_delays():
        try:
            waiter.wait(ImageIds=[image_id], WaiterConfig={"Delay": 1, "MaxAttempts": 1})
            break
        except WaiterError as e:
            # Still pending, or (eventual consistency) not yet known: poll again.
            unknown = api.code(ClientError(e.last_response or {}, "DescribeImages"))
            if "Max attempts exceeded" not in str(e) and unknown != "InvalidAMIID.NotFound":
                raise CloudError(f"image {image_id} failed: {e}") from e
        if on_progress is not None:
            on_progress(time.monotonic() - start)
        if time.monotonic() - start + delay > timeout:
            raise CloudError(f"timed out after {timeout:g}s waiting for image {image_id}")
        time.sleep(delay)
    image = _baked(_image(region, image_id))
    if image.snapshots:  # so that a snapshot an image left behind is still found as ours
        ec2.create_tags(Resources=list(image.snapshots), Tags=api.tags({
            CLUSTER_TAG: image.cluster, CREATED_BY_TAG: api.TOOL, DIGEST_TAG: image.digest,
            IMAGE_TAG: image_id}))
    return image


@api.api_errors
def list_images(region: Region, cluster: str | None = None) -> list[BakedImage]:
    """See the contract."""
    filters = [api.by_tag(CLUSTER_TAG, cluster)] if cluster else []
    found = [_baked(i) for i in _own_images(api.ec2_client(region), filters)]
    return sorted(found, key=lambda b: (b.created, b.image_id), reverse=True)


@api.api_errors
def describe_baked(region: Region, image_id: str) -> BakedImage | None:
    """See the contract."""
    found = _own_images(api.ec2_client(region), [{"Name": "image-id", "Values": [image_id]}])
    return _baked(found[0]) if found else None


@api.api_errors
def find_image(region: Region, name: str) -> BakedImage | None:
    """See the contract."""
    found = _own_images(api.ec2_client(region), [{"Name": "name", "Values": [name]}])
    return _baked(found[0]) if found else None


@api.api_errors
def delete_image(region: Region, image_id: str) -> list[str]:
    """See the contract. Snapshots come from the image's BlockDeviceMappings and, for a
    repeat after a half-done delete, from their `IMAGE_TAG`; DeregisterImage first,
    since EC2 refuses to delete a snapshot an image still uses."""
    ec2 = api.ec2_client(region)
    removed: list[str] = []
    snaps: set[str] = set()
    try:
        image: dict[str, Any] | None = _image(region, image_id)
    except CloudError:
        image = None
    if image is not None:
        if api.tag_dict(image).get(CREATED_BY_TAG) != api.TOOL:
            raise CloudError(f"image {image_id} was not baked by provision; not deleting it")
        snaps.update(_baked(image).snapshots)
        ec2.deregister_image(ImageId=image_id)
        removed.append(image_id)
    tagged = [api.by_tag(IMAGE_TAG, image_id), api.by_tag(CREATED_BY_TAG, api.TOOL)]
    snaps.update(s["SnapshotId"] for s in
                 ec2.describe_snapshots(OwnerIds=["self"], Filters=tagged)["Snapshots"])
    for snap in sorted(snaps):
        try:
            ec2.delete_snapshot(SnapshotId=snap)
            removed.append(snap)
        except ClientError as e:
            if api.code(e) != "InvalidSnapshot.NotFound":
                raise
    return removed
