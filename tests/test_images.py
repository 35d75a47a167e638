"""Baked images on moto: create/list/delete through the cloud contract, the tags the
image and its snapshot carry, snapshot clean-up, and what `up` says about one.

What EC2 then holds is asked with plain boto3 (`oracle`), not through the code
under test.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import test_cli
from botocore.stub import Stubber
from oracle import anything, created_since, files_under, leftovers
from test_cli import invoke

from provision import cloud, context, imaging
from provision.cloud.aws import api
from provision.cloud.common import CloudError, Region
from provision.config import load_config
from provision.progress import Reporter

aws, cfg_file = test_cli.aws, test_cli.cfg_file  # moto; a cluster file of cluster "unit"
REGION = Region(name="us-east-1")
DIGEST = "0123456789abcdef"


def _instance(ec2, cluster: str = "c1") -> str:
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"ResourceType": "instance",
             "Tags": [{"Key": "provision:cluster", "Value": cluster}]}]
    return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                             TagSpecifications=tags)["Instances"][0]["InstanceId"]


def _bake(ec2, cluster: str = "c1", name: str = "baked-one") -> str:
    # The description names the source image, as `image create` writes it: the login user.
    image_id = cloud.create_image(REGION, cluster, _instance(ec2, cluster), name, digest=DIGEST,
                                  description="from al2023-ami-2023.6 Amazon Linux 2023")
    cloud.wait_image(REGION, image_id, timeout=30)
    return image_id


def _images_left(ec2, cluster: str) -> dict[str, list[str]]:
    """Images and snapshots tagged with `cluster` (its instance is not the question here)."""
    return {k: v for k, v in leftovers(ec2, cluster).items() if k in ("images", "snapshots")}


def _tags(resource) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def test_a_baked_image_and_its_snapshot_carry_the_cluster_tool_and_digest(aws):
    image_id = _bake(aws)
    (image,) = aws.describe_images(ImageIds=[image_id])["Images"]
    want = {"provision:cluster": "c1", "provision:created-by": "provision",
            "provision:env-digest": DIGEST}
    assert want.items() <= _tags(image).items()
    (snap_id,) = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    (snap,) = aws.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"]
    assert (want | {"provision:image": image_id}).items() <= _tags(snap).items()
    assert _images_left(aws, "c1") == {"images": [image_id], "snapshots": [snap_id]}


def test_waiting_for_an_image_reports_progress_and_returns_it_available(aws):
    image_id = cloud.create_image(REGION, "c1", _instance(aws), "waited", digest=DIGEST)
    baked = cloud.wait_image(REGION, image_id, timeout=30, on_progress=lambda s: None)
    assert (baked.image_id, baked.state, baked.cluster, baked.digest) == (
        image_id, "available", "c1", DIGEST)
    assert len(baked.snapshots) == 1


def test_a_second_image_of_the_same_name_is_refused_in_one_line(monkeypatch):
    # moto accepts duplicate names; EC2 (and the simulated region) do not: a Stubber.
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    stub = Stubber(ec2)
    stub.add_client_error("create_image", "InvalidAMIName.Duplicate",
                          "AMI name same-name is already in use by AMI ami-12345678")
    monkeypatch.setattr(api, "ec2_client", lambda region, **kw: ec2)
    with stub, pytest.raises(CloudError, match="'same-name' exists already"):
        cloud.create_image(REGION, "c1", "i-0123456789abcdef0", "same-name", digest=DIGEST)


def test_list_shows_only_images_provision_baked_newest_first_and_by_cluster(aws):
    theirs = aws.create_image(InstanceId=_instance(aws), Name="not-ours")["ImageId"]
    first, second = _bake(aws, "c1", "one"), _bake(aws, "c2", "two")
    listed = cloud.list_images(REGION)
    assert {b.image_id for b in listed} == {first, second} and theirs not in listed
    assert [b.image_id for b in cloud.list_images(REGION, "c2")] == [second]
    assert cloud.describe_baked(REGION, theirs) is None
    assert cloud.describe_baked(REGION, first).digest == DIGEST


def test_delete_deregisters_the_image_and_deletes_its_snapshot(aws):
    image_id = _bake(aws)
    removed = cloud.delete_image(REGION, image_id)
    assert removed[0] == image_id and len(removed) == 2
    assert _images_left(aws, "c1") == {}
    assert cloud.delete_image(REGION, image_id) == []  # again: nothing, no error


def test_delete_after_a_half_done_delete_still_finds_the_snapshot(aws):
    image_id = _bake(aws)
    aws.deregister_image(ImageId=image_id)  # as if interrupted before the snapshot went
    assert _images_left(aws, "c1").keys() == {"snapshots"}
    assert len(cloud.delete_image(REGION, image_id)) == 1
    assert _images_left(aws, "c1") == {}


def test_delete_refuses_an_image_provision_did_not_bake(aws):
    theirs = aws.create_image(InstanceId=_instance(aws), Name="not-ours")["ImageId"]
    with pytest.raises(CloudError, match="not baked by provision"):
        cloud.delete_image(REGION, theirs)
    assert aws.describe_images(ImageIds=[theirs])["Images"]


def test_image_commands_list_and_delete_by_name(aws, cfg_file):
    image_id = _bake(aws, "unit", "by-name")
    listed = invoke("image", "list", "--config", str(cfg_file))
    assert listed.exit_code == 0 and image_id in listed.output and DIGEST in listed.output
    gone = invoke("image", "delete", "by-name", "--config", str(cfg_file))
    assert gone.exit_code == 0 and f"{image_id}: removed" in gone.output
    assert _images_left(aws, "unit") == {}
    again = invoke("image", "delete", image_id, "--config", str(cfg_file))
    assert again.exit_code == 0 and "nothing left" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("delete", "no-such-image"), "IMAGE: no image called 'no-such-image'"),
        (("create", "unit"), "NAME: no running cluster 'unit'"),
        (("create", "unit", "--name", "x"), "--name: 'x' is not an image name"),
    ],
)
def test_bad_image_input_exits_2_with_one_line(aws, cfg_file, args, message):
    result = invoke("image", *args, "--config", str(cfg_file))
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_deleting_someone_elses_image_exits_2(aws, cfg_file):
    theirs = aws.create_image(InstanceId=_instance(aws), Name="not-ours")["ImageId"]
    result = invoke("image", "delete", theirs, "--config", str(cfg_file))
    assert result.exit_code == 2 and "not baked by provision" in result.output


class _Heard(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(text)


def _ctx(image_id: str, digest: str) -> SimpleNamespace:
    return SimpleNamespace(region=REGION, image_id=image_id, reporter=_Heard(),
                           env_spec=lambda: SimpleNamespace(digest=digest))


def test_up_on_a_baked_image_says_the_install_is_skipped_when_the_digest_matches(aws):
    ctx = _ctx(_bake(aws), DIGEST)
    assert imaging.announce(ctx) is True
    assert "install skipped" in ctx.reporter.lines[0]


def test_up_on_a_baked_image_of_another_environment_says_it_installs(aws):
    ctx = _ctx(_bake(aws), "fedcba9876543210")
    assert imaging.announce(ctx) is False
    assert "installing" in ctx.reporter.lines[0] and DIGEST in ctx.reporter.lines[0]


def test_up_on_a_stock_image_says_nothing_about_baking(aws):
    ctx = _ctx(aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"], DIGEST)
    assert imaging.announce(ctx) is None and ctx.reporter.lines == []


# --- `image: NAME` in the cluster file --------------------------------------------------


def _naming(cfg_file, line: str):
    """The cluster file with `line` added to its template (`image: ...` and the like)."""
    cfg_file.write_text(cfg_file.read_text() + f"    {line}\n")
    return cfg_file


def _nothing_created_since(aws, before: dict[str, list[str]]) -> None:
    """Nothing in EC2 that was not there `before` (the baked image's source instance
    was), and no local state."""
    assert created_since(aws, before) == {}
    assert files_under(Path(os.environ["PROVISION_STATE_DIR"])) == []


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_a_cluster_file_names_a_baked_image_and_up_resolves_it_to_the_ami(aws, cfg_file):
    image_id = _bake(aws, "unit", "sklearn-1.5 (digits)")
    cfg = load_config(_naming(cfg_file, "image: sklearn-1.5 (digits)"))
    assert context.prepare(cfg, need_key=False).image_id == image_id
    before = anything(aws)
    result = invoke("up", "--config", str(cfg_file), "--dry-run")
    assert result.exit_code == 0 and image_id in result.output, result.output
    assert "sklearn-1.5 (digits)" in result.output
    _nothing_created_since(aws, before)


def test_image_and_image_id_together_exit_2_naming_both_fields(aws, cfg_file):
    image_id = _bake(aws, "unit", "both-set")
    _naming(cfg_file, f"image_id: {image_id}\n    image: both-set")
    before = anything(aws)
    for command in ("up", "check"):
        line = _one_line(invoke(command, "--config", str(cfg_file)))
        assert "clusters.aws.image:" in line and "image_id" in line and "not both" in line
    _nothing_created_since(aws, before)


@pytest.mark.parametrize("named", ["no-such-image", "not-ours"])
def test_an_unknown_image_name_exits_2_pointing_at_image_list(aws, cfg_file, named):
    aws.create_image(InstanceId=_instance(aws), Name="not-ours")  # another tool's: not ours
    _bake(aws, "unit", "ours")
    before = anything(aws)
    line = _one_line(invoke("up", "--config", str(_naming(cfg_file, f"image: {named}"))))
    assert f"image: no image called {named!r} baked by provision in us-east-1" in line
    assert "provision image list" in line
    _nothing_created_since(aws, before)


@pytest.mark.parametrize(
    ("value", "message"),
    [("ami-0123456789abcdef0", "is an image id: set image_id"), ("x", "must be an image name")],
)
def test_an_image_value_that_is_no_image_name_exits_2(aws, cfg_file, value, message):
    before = anything(aws)
    line = _one_line(invoke("up", "--config", str(_naming(cfg_file, f"image: {value}"))))
    assert "clusters.aws.image:" in line and message in line
    _nothing_created_since(aws, before)


def test_a_cluster_whose_baked_image_was_deleted_is_still_reached_by_name(aws, cfg_file):
    """`image delete` while a cluster of that image runs: its commands by name (ssh,
    put-data, run, status) still get its context, from what its `up` recorded."""
    from provision import lifecycle
    from provision.errors import BadInput

    image_id = _bake(aws, "unit", "gone-later")
    cfg = load_config(_naming(cfg_file, "image: gone-later"))
    ctx = context.prepare(cfg, need_key=False)
    lifecycle._remember(ctx)  # as `up` does
    aws.deregister_image(ImageId=image_id)
    with pytest.raises(BadInput, match="no image called 'gone-later'"):
        context.prepare(cfg, need_key=False)
    warned: list[str] = []
    got = context.context_for(ctx.name, reporter=SimpleNamespace(warn=warned.append),
                              need_key=False)
    assert (got.image_id, got.user) == (image_id, ctx.user)
    assert warned and image_id in warned[0], warned
    with pytest.raises(BadInput, match="no image called"):  # a new config is not rescued
        context.context_for(cfg, need_key=False)
