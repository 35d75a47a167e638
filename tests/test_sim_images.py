"""Baked images as EC2 makes them: CreateImage snapshots a configured node's disk (rebooting
it unless NoReboot), the AMI is `pending` until then, new instances start with its files and
its user, and DeregisterImage leaves the snapshot billing until DeleteSnapshot.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from simhelp import (
    AL2023,
    Launch,
    background,
    booted,
    pid_gone,
    ssh,
    wait_ssh,
    wait_state,
    wait_until,
)

from provision.sim.disks import snapshot_file

pytestmark = pytest.mark.e2e


def _image(ec2: Any, image_id: str) -> dict[str, Any]:
    return dict(ec2.describe_images(ImageIds=[image_id])["Images"][0])


def _available(ec2: Any, image_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (i := _image(ec2, image_id))["State"] == "available" and i,
                      timeout, f"{image_id} to be available")


def _name() -> str:
    return f"baked-{uuid.uuid4().hex[:8]}"


def _tags(kind: str, value: str) -> dict[str, Any]:
    return {"ResourceType": kind, "Tags": [{"Key": "cluster", "Value": value}]}


def test_create_image_bakes_the_disk_into_an_ami_new_instances_start_with(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1])
    setup = ("sudo mkdir -p /srv/provision && sudo dd if=/dev/urandom of=/srv/provision/blob"
             " bs=1M count=300 status=none && md5sum /srv/provision/blob && echo k > ~/mine")
    digest = ssh(pub, sim_key[1], setup, timeout=120).stdout.split()[0]
    job = background(pub, sim_key[1])
    t = time.monotonic()

    image_id = sim_ec2.create_image(
        InstanceId=iid, Name=_name(), Description="a configured node",
        TagSpecifications=[_tags("image", "c1"), _tags("snapshot", "c1-snap")])["ImageId"]

    assert _image(sim_ec2, image_id)["State"] == "pending"
    image = _available(sim_ec2, image_id)
    print(f"CreateImage of a 300 MB /srv: available after {time.monotonic() - t:.2f}s")
    assert image_id in {i["ImageId"] for i in sim_ec2.describe_images(Owners=["self"])["Images"]}
    assert image["Tags"] == [{"Key": "cluster", "Value": "c1"}]
    assert (image["RootDeviceType"], image["RootDeviceName"]) == ("ebs", "/dev/sda1")
    snap_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    (snap,) = sim_ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"]
    assert snap["Tags"] == [{"Key": "cluster", "Value": "c1-snap"}]
    assert snap["State"] == "completed"
    wait_until(lambda: pid_gone(job), 5, "the reboot CreateImage does by default")
    wait_until(lambda: ssh(pub, sim_key[1], "cat ~/mine").stdout == "k\n", 30, "it to be back")

    (baked,) = sim_launch(image=image_id)

    wait_ssh(baked["PublicIpAddress"], sim_key[1])  # its user and key, as the source's
    got = ssh(baked["PublicIpAddress"], sim_key[1], "md5sum /srv/provision/blob; cat ~/mine")
    assert got.stdout.split()[::2] == [digest, "k"]


def test_no_reboot_captures_live_and_a_pending_image_cannot_be_run(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    (inst,) = sim_launch()
    iid, pub = inst["InstanceId"], inst["PublicIpAddress"]
    # Its sshd has not booted yet: nothing to capture, the image stays pending meanwhile.
    early = sim_ec2.create_image(InstanceId=iid, Name=_name(), NoReboot=True)["ImageId"]
    with pytest.raises(ClientError, match="InvalidAMIID.Unavailable"):
        sim_launch(image=early, wait=False)
    _available(sim_ec2, early)
    wait_ssh(pub, sim_key[1])
    job = background(pub, sim_key[1])

    live = sim_ec2.create_image(InstanceId=iid, Name=_name(), NoReboot=True)["ImageId"]

    _available(sim_ec2, live)
    assert not pid_gone(job)  # NoReboot: the instance kept running throughout
    with pytest.raises(ClientError, match="InvalidAMIID.NotFound"):
        sim_launch(image="ami-0123456789abcdef0", wait=False)


def test_an_image_of_a_stopped_instance_keeps_its_files_user_and_python(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, pub = booted(sim_launch, sim_key[1], "ec2-user", image=AL2023)
    ssh(pub, sim_key[1], "echo stopped | sudo tee /srv/f >/dev/null", user="ec2-user")
    sim_ec2.stop_instances(InstanceIds=[iid])
    wait_state(sim_ec2, iid, "stopped")

    image_id = sim_ec2.create_image(InstanceId=iid, Name=_name())["ImageId"]

    _available(sim_ec2, image_id)
    (baked,) = sim_launch(image=image_id)
    wait_ssh(baked["PublicIpAddress"], sim_key[1], user="ec2-user")
    got = ssh(baked["PublicIpAddress"], sim_key[1], "cat /srv/f; command -v python3 || echo none",
              user="ec2-user")
    assert got.stdout.split() == ["stopped", "none"]  # AL2023's user, and no usable python3


def test_deregistering_keeps_the_snapshot_until_it_is_deleted(
    sim_launch: Launch, sim_ec2: Any, sim_key: tuple[str, Path]
) -> None:
    iid, _ = booted(sim_launch, sim_key[1])
    name = _name()
    image_id = sim_ec2.create_image(InstanceId=iid, Name=name, NoReboot=True)["ImageId"]
    with pytest.raises(ClientError, match="InvalidAMIName.Duplicate"):
        sim_ec2.create_image(InstanceId=iid, Name=name, NoReboot=True)
    snap_id = _available(sim_ec2, image_id)["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    with pytest.raises(ClientError, match="InvalidSnapshot.InUse"):
        sim_ec2.delete_snapshot(SnapshotId=snap_id)

    sim_ec2.deregister_image(ImageId=image_id)

    mine = sim_ec2.describe_images(Owners=["self"])["Images"]
    assert image_id not in {i["ImageId"] for i in mine}
    snaps = sim_ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert snap_id in {s["SnapshotId"] for s in snaps}  # still there, still billing
    assert snapshot_file(snap_id).exists()
    sim_ec2.delete_snapshot(SnapshotId=snap_id)
    assert not snapshot_file(snap_id).exists()
    with pytest.raises(ClientError, match="InvalidSnapshot.NotFound"):
        sim_ec2.describe_snapshots(SnapshotIds=[snap_id])
