"""Instance types and machine images on EC2. See the contract in `provision.cloud`."""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError

from provision.cloud.aws import api, prices
from provision.cloud.common import CloudError, ImageInfo, InstanceTypeInfo, Region

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
