"""The region's images: AWS's public SSM parameters resolving to AMIs like the real ones.

Code finds an image's family the way it must on AWS: from DescribeImages'
Name, Description and owner (nothing sim-only). The host booted from an image
has that family's default user, passwordless sudo, no root login, and the
image's Python:

| family | SSM parameters (amd64 and arm64)                                | user     | python3  |
| ubuntu | /aws/service/canonical/ubuntu/server/24.04/stable/current/...  | ubuntu   | 3.11 (1) |
| al2023 | /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-...     | ec2-user | none (2) |
| debian | /aws/service/debian/release/{12,bookworm}/latest/...           | admin    | 3.11     |

(1) Debian's /usr/bin/python3 (3.11) stands in for Ubuntu 24.04's 3.12: this
machine has no other interpreter offline. (2) AL2023's python3 is 3.9, which a
3.11 client cannot use either; the sim models "not usable" as "absent".

The API forbids writing under /aws ("reserved parameter name") and creating an
image owned by Canonical, Amazon or Debian, so `seed` writes into moto's
in-process backends, which the daemon's threaded server serves.

Baked images (`install`): CreateImage of a running or stopped instance registers
an AMI owned by the account (`Owners=["self"]`), `pending` until the watcher has
captured the instance's disk into its snapshot (see `disks`), then `available`;
by default the instance is rebooted for it, as on AWS (`NoReboot=True` captures
it live). The image keeps its source image's user and Python; its snapshot is
tagged by the `snapshot` TagSpecifications (moto refuses them) and encrypted if
the instance's root volume was. An instance launched from it starts with the
captured files. DeregisterImage leaves the snapshot (and its content) behind, as
on AWS; DeleteSnapshot, refused while an image uses it, removes both. RunInstances
of an unknown image is `InvalidAMIID.NotFound`, of a pending one
`InvalidAMIID.Unavailable`; a second image of the same name
`InvalidAMIName.Duplicate`.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provision.sim.hostfs import Login

_ARCH = {"amd64": "x86_64", "arm64": "arm64"}


@dataclass(frozen=True)
class Family:
    """One OS family's images: how they are named, published and logged into."""

    key: str
    owner: str  # the publisher's account id
    login: Login
    params: tuple[str, ...]  # SSM parameter templates, {arch} = amd64 | arm64 (AL2023: x86_64)
    name: str  # image Name template, {arch} as the publisher spells it
    description: str
    root_device: str


FAMILIES = (
    Family(
        "ubuntu", "099720109477", Login("ubuntu", groups=("adm", "sudo")),
        ("/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id",),
        "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-20250115",
        "Canonical, Ubuntu, 24.04, {arch} noble image", "/dev/sda1",
    ),
    Family(
        "al2023", "137112412989", Login("ec2-user", python=False, groups=("adm", "wheel")),
        ("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{march}",
         "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-{march}"),
        "al2023-ami-2023.6.20250115.0-kernel-6.1-{march}",
        "Amazon Linux 2023 AMI 2023.6.20250115.0 {march} HVM kernel-6.1", "/dev/xvda",
    ),
    Family(
        "debian", "136693071363", Login("admin", groups=("adm", "sudo")),
        ("/aws/service/debian/release/12/latest/{arch}",
         "/aws/service/debian/release/bookworm/latest/{arch}"),
        "debian-12-{arch}-20250112-1990", "Debian 12 (20250112-1990)", "/dev/xvda",
    ),
)
UBUNTU_PARAMS = {arch: FAMILIES[0].params[0].format(arch=arch) for arch in _ARCH}
DEFAULT_LOGIN = FAMILIES[0].login  # an image the sim does not know boots as Ubuntu
LOGINS: dict[str, Login] = {}  # AMI id -> who logs in to its hosts (daemon only)


@dataclass(frozen=True)
class Capture:
    """A CreateImage the watcher has yet to carry out."""

    image_id: str
    snapshot_id: str
    instance_id: str
    reboot: bool


# Filled by the API's threads, drained by the watcher.
CAPTURES: collections.deque[Capture] = collections.deque()


def login_for(image_id: str) -> Login:
    return LOGINS.get(image_id, DEFAULT_LOGIN)


def _fmt(template: str, arch: str) -> str:
    return template.format(arch=arch, march=_ARCH[arch])


def all_params() -> list[str]:
    return [_fmt(p, arch) for f in FAMILIES for arch in _ARCH for p in f.params]


def seed(region_name: str) -> dict[str, str]:
    """Register every family's AMIs and SSM parameters in moto, and their logins in `LOGINS`.

    Returns SSM parameter -> AMI id, for the state file.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami
    from moto.ec2.utils import random_ami_id
    from moto.ssm.models import Parameter, ssm_backends

    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region_name]
    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][region_name]
    params: dict[str, str] = {}
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for fam in FAMILIES:
        for arch, march in _ARCH.items():
            ami_id = random_ami_id()
            ec2.amis[ami_id] = Ami(
                ec2, ami_id,
                name=_fmt(fam.name, arch),
                description=_fmt(fam.description, arch),
                owner_id=fam.owner, public=True, virtualization_type="hvm",
                architecture=march, hypervisor="xen", root_device_type="ebs",
                root_device_name=fam.root_device, region_name=f"{region_name}a",
            )
            LOGINS[ami_id] = fam.login
            for template in fam.params:
                path = _fmt(template, arch)
                ssm._parameters[path].append(Parameter(
                    account_id=DEFAULT_ACCOUNT_ID, name=path, value=ami_id,
                    parameter_type="String", description=None, allowed_pattern=None,
                    keyid=None, last_modified_date=now,
                    version=len(ssm._parameters[path]) + 1, data_type="aws:ec2:image",
                ))
                params[path] = ami_id
    return params


def intact(region_name: str, params: dict[str, str]) -> bool:
    """Whether the images and parameters are still in moto (a reset wipes them)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import ssm_backends

    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region_name]
    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][region_name]
    return bool(params) and all(
        ami in ec2.amis and path in ssm._parameters for path, ami in params.items()
    )


def install() -> None:  # noqa: C901 - one place lists every patched call
    """Graft baked images onto moto's backend (once per process, after `model.install`)."""
    from moto.ec2 import exceptions as ex
    from moto.ec2.models import EC2Backend
    from moto.ec2.responses.amis import AmisResponse

    from provision.sim import model
    from provision.sim.model import patch

    model.keep_params(AmisResponse, "create_image", "NoReboot")

    @patch(EC2Backend, "run_instances")
    def run_instances(
        orig: Callable[..., Any], self: Any, image_id: str, *a: Any, **kw: Any
    ) -> Any:
        image = self.amis.get(image_id)
        if image is None:
            raise ex.InvalidAMIIdError(image_id)
        if image.state != "available":
            raise ex.EC2ClientError("InvalidAMIID.Unavailable",
                                    f"AMI '{image_id}' is {image.state}, and cannot be run")
        return orig(self, image_id, *a, **kw)

    @patch(EC2Backend, "create_image")
    def create_image(orig: Callable[..., Any], self: Any, instance_id: str, name: str,
                     description: str, tag_specifications: list[dict[str, Any]]) -> Any:
        inst = self.get_instance(instance_id)
        if inst.state not in ("running", "stopped"):
            raise ex.EC2ClientError("IncorrectInstanceState", f"The instance '{instance_id}' is "
                                    f"{inst.state}; it must be running or stopped to be imaged.")
        same = [a.id for a in self.amis.values()
                if a.name == name and a.owner_id == self.account_id]
        if same:
            raise ex.EC2ClientError("InvalidAMIName.Duplicate",
                                    f"AMI name {name} is already in use by AMI {same[0]}")
        specs = tag_specifications or []
        image = orig(self, instance_id, name, description,
                     [s for s in specs if s["ResourceType"] != "snapshot"])
        source = self.amis.get(inst.image_id)
        image.root_device_type, image.hypervisor = "ebs", "xen"
        image.root_device_name = source.root_device_name if source else inst.root_device_name
        snap = image.ebs_snapshot
        for spec in specs:
            if spec["ResourceType"] == "snapshot":
                snap.add_tags({t["Key"]: t["Value"] for t in spec["Tags"]})
        snap.encrypted = any(self.get_volume(d.volume_id).encrypted
                             for _, d in inst.get_block_device_mapping)
        image.state, snap.status = "pending", "pending"
        LOGINS[image.id] = login_for(inst.image_id)
        reboot = inst.state == "running" and str(model.request().get("NoReboot")).lower() != "true"
        CAPTURES.append(Capture(image.id, snap.id, inst.id, reboot))
        return image

    @patch(EC2Backend, "delete_snapshot")
    def delete_snapshot(orig: Callable[..., Any], self: Any, snapshot_id: str) -> Any:
        from provision.sim import disks

        snap = orig(self, snapshot_id)
        disks.snapshot_file(snapshot_id).unlink(missing_ok=True)
        return snap
