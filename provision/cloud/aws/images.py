"""Instance types and machine images on EC2. See the contract in `provision.cloud`."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from provision.cloud.aws import api, prices
from provision.cloud.common import CloudError, InstanceTypeInfo, Region

# Public SSM parameters naming today's image per region and architecture.
UBUNTU_PARAM = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
)
AL2023_PARAM = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
ARCHES = ("x86_64", "arm64")
DEFAULT_ROOT_DEVICE = "/dev/sda1"


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


def describe_image(region: Region, image_id: str) -> dict[str, Any]:
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


def root_device(region: Region, image_id: str) -> str:
    """The device name the image boots from: where the encrypted root volume goes."""
    return describe_image(region, image_id).get("RootDeviceName") or DEFAULT_ROOT_DEVICE


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
        image = describe_image(region, image_id)
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
