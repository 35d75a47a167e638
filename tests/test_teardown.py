"""`down` against what EC2 holds, checked by the tests' own oracle (`oracle`), and the
oracle checked in turn: it must see every kind of resource a cluster can leave.

moto creates no spot-request object for a spot `RunInstances`, so with moto alone
"no open spot request is left" can never fail: the spot-request half of `down`
is pinned with botocore's Stubber instead (the simulated region does not model
spot requests yet either; when it does, its e2e tests will see them too).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from conftest import offline_aws_env
from moto import mock_aws
from oracle import KINDS, anything, assert_nothing_left, created_since, ec2_client, leftovers

from provision import lifecycle, state
from provision.cloud.aws import api
from provision.cloud.common import Region

CLUSTER = "c1"
TAGS = [{"Key": "provision:cluster", "Value": CLUSTER}, {"Key": "provision:created-by",
                                                         "Value": "provision"}]


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, moto_amis: None) -> Any:
    offline_aws_env(monkeypatch, tmp_path)
    with mock_aws():
        yield ec2_client()


def _tagged(kind: str) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": TAGS}]


def _one_of_each_kind(ec2: Any) -> None:
    """A tagged instance (with its root volume), a detached volume, a group, a key
    pair, an image and a snapshot: everything a cluster could leave but a spot
    request (see the module's docstring)."""
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="c5.large",
                      TagSpecifications=_tagged("instance") + _tagged("volume"))
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8,
                               TagSpecifications=_tagged("volume"))["VolumeId"]
    ec2.create_security_group(GroupName="c1", Description="c1",
                              TagSpecifications=_tagged("security-group"))
    ec2.create_key_pair(KeyName="c1", TagSpecifications=_tagged("key-pair"))
    ec2.create_snapshot(VolumeId=volume, TagSpecifications=_tagged("snapshot"))
    made = ec2.register_image(Name="c1-image", RootDeviceName="/dev/sda1")["ImageId"]
    ec2.create_tags(Resources=[made], Tags=TAGS)  # moto ignores RegisterImage's tag specs


def test_the_oracle_sees_every_kind_a_cluster_can_leave(ec2):
    before = anything(ec2)
    assert leftovers(ec2, CLUSTER) == {} and created_since(ec2, before) == {}
    _one_of_each_kind(ec2)
    left = leftovers(ec2, CLUSTER)
    assert set(left) == set(KINDS) - {"spot_requests"}, left
    assert len(left["volumes"]) == 2  # the instance's root volume and the detached one
    assert leftovers(ec2, "another") == {}
    new = created_since(ec2, before)  # also the snapshot RegisterImage made, untagged
    assert set(new) == set(left) and all(set(left[k]) <= set(new[k]) for k in left)


def test_down_removes_every_kind_the_oracle_sees_but_images_it_never_made(ec2):
    _one_of_each_kind(ec2)
    lifecycle.down(CLUSTER, region=Region("us-east-1"))
    # provision registers no images or snapshots: what the test made stays, and the
    # oracle says so; everything `up` can create is gone.
    assert set(leftovers(ec2, CLUSTER)) <= {"images", "snapshots"}
    assert state.load(CLUSTER) == {}


def _page(**body: Any) -> dict[str, Any]:
    return body


def test_down_cancels_an_open_spot_request_tagged_with_the_cluster(monkeypatch, tmp_path):
    """The spot-request half of teardown, on a stubbed EC2 that has one open request
    (and nothing else) tagged with the cluster."""
    offline_aws_env(monkeypatch, tmp_path)
    ec2 = ec2_client()
    tag = {"Name": "tag:provision:cluster", "Values": [CLUSTER]}
    request = {"SpotInstanceRequestId": "sir-12345678", "State": "open", "Tags": TAGS,
               "CreateTime": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    cancelled = {"SpotInstanceRequestId": "sir-12345678", "State": "cancelled"}
    open_filter = {"Filters": [tag, {"Name": "state", "Values": ["open", "active"]}]}
    stub = Stubber(ec2)
    for requests in ([request], []):  # the listing before teardown, and the check after
        stub.add_response("describe_instances", _page(Reservations=[]))
        stub.add_response("describe_spot_instance_requests",
                          _page(SpotInstanceRequests=requests), open_filter)
        stub.add_response("describe_volumes", _page(Volumes=[]))
        stub.add_response("describe_security_groups", _page(SecurityGroups=[]))
        stub.add_response("describe_key_pairs", _page(KeyPairs=[]))
        if requests:  # teardown itself: cancel, then volumes, groups and key pairs
            stub.add_response("cancel_spot_instance_requests",
                              _page(CancelledSpotInstanceRequests=[cancelled]),
                              {"SpotInstanceRequestIds": ["sir-12345678"]})
            stub.add_response("describe_volumes", _page(Volumes=[]), {"Filters": ANY})
            stub.add_response("describe_security_groups", _page(SecurityGroups=[]))
            stub.add_response("describe_key_pairs", _page(KeyPairs=[]))
    monkeypatch.setattr(api, "client", lambda service, region, **kw: ec2)
    with stub:
        removed = lifecycle.down(CLUSTER, region=Region("us-east-1"))
    stub.assert_no_pending_responses()
    assert removed["spot_requests"] == 1


def test_down_leaves_nothing_the_oracle_sees_after_up_launched_a_cluster(ec2, tmp_path):
    from test_cli import CONFIG, _launch_unit_cluster

    key = tmp_path / "id_ed25519"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(CONFIG.format(key=key))
    _launch_unit_cluster(cfg)
    assert set(leftovers(ec2, "unit")) == {"instances", "volumes", "security_groups",
                                          "key_pairs"}
    lifecycle.down("unit", region=Region("us-east-1"))
    assert_nothing_left(ec2, "unit")
