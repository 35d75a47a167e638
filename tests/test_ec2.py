"""The AWS provider, through the contract in provision.cloud, against moto's EC2:
assert on what EC2 then reports.

Spot prices are moto's fakes (0.00001 everywhere), so price arithmetic lives in
test_pricing.py with botocore's Stubber. moto does not create a spot request for
`run_instances` with spot market options, so the bid itself is checked on the
request parameters.
"""

from __future__ import annotations

import logging

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from moto import mock_aws

from provision import cloud
from provision.cloud.aws import api, instances, network
from provision.cloud.common import (
    CLUSTER_TAG,
    CREATED_BY_TAG,
    MASTER,
    ROLE_TAG,
    WORKER,
    CloudError,
    LaunchRequest,
    Region,
)

CIDR = "203.0.113.7/32"
IMAGE = "ami-760aaa0f"  # in moto's default images: Amazon Linux, x86_64, root /dev/xvda
ARM_IMAGE = "ami-0e9271c829888680e"  # in moto's default images: arm64


@pytest.fixture
def region(monkeypatch, tmp_path, moto_amis):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_SSM", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with mock_aws():
        yield Region("us-east-1")


@pytest.fixture
def client(region):
    return boto3.client("ec2", region_name=region.name)


def public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest.fixture
def base(region):
    """A security group, an imported key and an image for cluster c1."""
    group = cloud.ensure_security_group(region, "c1", ssh_cidr=CIDR)
    cloud.ensure_key_pair(region, "c1", "c1-key", public_key())
    return {"security_group_id": group, "key_name": "c1-key", "image_id": IMAGE}


def request(base, **kw) -> LaunchRequest:
    fields = {"cluster": "c1", "role": WORKER, "count": 1, "instance_type": "c5.xlarge", **base}
    return LaunchRequest(**{**fields, **kw})


def described(client, ids) -> dict[str, dict]:
    found = client.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i for r in found for i in r["Instances"]}


def tags(resource) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def refuse_zones(monkeypatch, full: set[str]) -> None:
    """Make run_instances answer InsufficientInstanceCapacity in `full` zones."""
    real = api.ec2_client
    subnets = boto3.client("ec2", region_name="us-east-1").describe_subnets()["Subnets"]
    zone_of = {s["SubnetId"]: s["AvailabilityZone"] for s in subnets}

    def refuse(params, **_):
        zone = zone_of.get(params["NetworkInterfaces"][0]["SubnetId"])
        if zone in full:
            error = {"Code": "InsufficientInstanceCapacity", "Message": f"no capacity in {zone}"}
            raise ClientError({"Error": error}, "RunInstances")

    def flaky(region, *, fail_fast=False):
        c = real(region, fail_fast=fail_fast)
        c.meta.events.register("before-parameter-build.ec2.RunInstances", refuse)
        return c

    monkeypatch.setattr(api, "ec2_client", flaky)


# --- launch -------------------------------------------------------------------


def test_spot_workers_are_spot_c_family_imdsv2_with_encrypted_tagged_volumes(region, base, client):
    ids = cloud.launch(
        region, request(base, count=2, max_price=0.1, volume_size=40, tags={"project": "svm"})
    )

    instances = described(client, ids)
    assert sorted(instances) == ids
    for inst in instances.values():
        assert inst["InstanceLifecycle"] == "spot"
        assert inst["InstanceType"] == "c5.xlarge"
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        # AWS lists the primary interface's groups in SecurityGroups too; moto only here.
        nic = inst["NetworkInterfaces"][0]
        assert [g["GroupId"] for g in nic["Groups"]] == [base["security_group_id"]]
        assert inst["KeyName"] == "c1-key"
        assert {CLUSTER_TAG: "c1", ROLE_TAG: WORKER, "project": "svm"}.items() <= tags(inst).items()
    assert sorted(tags(i)["Name"] for i in instances.values()) == ["node001", "node002"]
    volumes = client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": ids}])
    assert len(volumes["Volumes"]) == 2
    for vol in volumes["Volumes"]:
        assert vol["Encrypted"] and vol["VolumeType"] == "gp3" and vol["Size"] == 40
        assert {CLUSTER_TAG: "c1", ROLE_TAG: WORKER}.items() <= tags(vol).items()


def test_spot_requests_carry_a_one_time_max_price_that_terminates_on_interruption():
    params = instances._run_params(
        LaunchRequest("c1", WORKER, 2, "c5.xlarge", "ami-1", "k", "sg-1", max_price=0.1),
        "/dev/xvda",
        "subnet-1",
    )

    assert params["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "MaxPrice": "0.1",
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        },
    }
    kinds = {spec["ResourceType"] for spec in params["TagSpecifications"]}
    assert kinds == {"instance", "volume", "spot-instances-request"}


def test_the_master_is_on_demand_and_named_master(region, base, client):
    [master] = cloud.launch(region, request(base, role=MASTER, spot=False))

    inst = described(client, [master])[master]
    assert "InstanceLifecycle" not in inst
    assert tags(inst)[ROLE_TAG] == MASTER and tags(inst)["Name"] == MASTER


def test_a_second_master_is_refused(region, base):
    cloud.launch(region, request(base, role=MASTER, spot=False))

    with pytest.raises(CloudError, match="cluster c1 already has a master"):
        cloud.launch(region, request(base, role=MASTER, spot=False))


def test_new_workers_take_the_lowest_free_node_numbers(region, base):
    cloud.launch(region, request(base, count=3))
    node002 = next(i for i in cloud.describe_cluster(region, "c1").alive if i.name == "node002")
    cloud.terminate_instances(region, [node002.instance_id])

    cloud.launch(region, request(base, count=2))

    names = sorted(i.name for i in cloud.describe_cluster(region, "c1").alive)
    assert names == ["node001", "node002", "node003", "node004"]


def offering_zones(client, instance_type: str = "c5.xlarge") -> list[str]:
    offers = client.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": [instance_type]}],
    )["InstanceTypeOfferings"]
    return sorted({o["Location"] for o in offers})


def test_launch_moves_to_the_next_zone_when_one_has_no_capacity(region, base, client, monkeypatch):
    first, second, third = offering_zones(client)[:3]  # equal prices: tried in name order
    refuse_zones(monkeypatch, {first, second})

    [iid] = cloud.launch(region, request(base))

    inst = described(client, [iid])[iid]
    assert inst["Placement"]["AvailabilityZone"] == third
    subnet = client.describe_subnets(SubnetIds=[inst["SubnetId"]])["Subnets"][0]
    assert subnet["AvailabilityZone"] == third and subnet["DefaultForAz"]


def test_launch_names_every_zone_tried_when_none_has_capacity(region, base, client, monkeypatch):
    zones = offering_zones(client)
    refuse_zones(monkeypatch, set(zones))

    with pytest.raises(CloudError) as err:
        cloud.launch(region, request(base, count=2))

    tried = ", ".join(f"{z} (InsufficientInstanceCapacity)" for z in zones)
    assert str(err.value) == f"no spot capacity for 2 x c5.xlarge; tried {tried}"
    assert cloud.leftovers(region, "c1")["instances"] == []


def test_a_bid_below_the_current_spot_price_is_warned_about(region, base, caplog):
    with caplog.at_level(logging.WARNING, logger="provision.cloud.aws.instances"):
        cloud.launch(region, request(base, max_price=0.000001, zone="us-east-1a"))

    assert "spot bid 1e-06 is below the current c5.xlarge price in us-east-1a" in caplog.text


def test_launch_into_the_region_subnet_uses_that_subnet(region, client):
    vpc = client.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(
        VpcId=vpc, CidrBlock="10.77.0.0/24", AvailabilityZone="us-east-1d"
    )
    sim = Region("us-east-1", subnet_id=subnet["Subnet"]["SubnetId"])
    group = cloud.ensure_security_group(sim, "c1", ssh_cidr=CIDR)
    base = {"security_group_id": group, "key_name": "", "image_id": IMAGE}

    [iid] = cloud.launch(sim, request(base))

    inst = described(client, [iid])[iid]
    assert inst["SubnetId"] == sim.subnet_id and inst["PrivateIpAddress"].startswith("10.77.0.")
    assert client.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["VpcId"] == vpc


# --- security group and key pair ------------------------------------------------


def rules(client, group_id) -> set[tuple]:
    group = client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return network._flatten(group["IpPermissions"])


def test_security_group_admits_ssh_from_the_cidr_and_all_traffic_between_members_only(
    region, client
):
    group = cloud.ensure_security_group(region, "c1", ssh_cidr=CIDR)

    assert rules(client, group) == {
        ("tcp", 22, 22, "cidr", CIDR),
        ("-1", None, None, "group", group),
    }
    described_group = client.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
    assert described_group["GroupName"] == "provision-c1"
    assert tags(described_group) == {CLUSTER_TAG: "c1", CREATED_BY_TAG: "provision"}


def test_ensure_security_group_is_idempotent_and_follows_a_new_ssh_cidr(region, client):
    group = cloud.ensure_security_group(region, "c1", ssh_cidr=CIDR)
    stray = {
        "IpProtocol": "tcp",
        "FromPort": 8888,
        "ToPort": 8888,
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
    }
    client.authorize_security_group_ingress(GroupId=group, IpPermissions=[stray])

    assert cloud.ensure_security_group(region, "c1", ssh_cidr=CIDR) == group
    assert rules(client, group) == {
        ("tcp", 22, 22, "cidr", CIDR),
        ("-1", None, None, "group", group),
    }

    assert cloud.ensure_security_group(region, "c1", ssh_cidr="198.51.100.9") == group
    assert rules(client, group) == {
        ("tcp", 22, 22, "cidr", "198.51.100.9/32"),
        ("-1", None, None, "group", group),
    }


def test_a_malformed_ssh_cidr_is_refused(region):
    with pytest.raises(CloudError, match="not a CIDR"):
        cloud.ensure_security_group(region, "c1", ssh_cidr="my laptop")


def test_ensure_key_pair_imports_once_and_tags_it(region, client):
    key = public_key()

    assert cloud.ensure_key_pair(region, "c1", "c1-key", key) is True
    assert (
        cloud.ensure_key_pair(region, "c1", "c1-key", key.split()[0] + " " + key.split()[1])
        is False
    )

    [pair] = client.describe_key_pairs(KeyNames=["c1-key"])["KeyPairs"]
    assert tags(pair) == {CLUSTER_TAG: "c1", CREATED_BY_TAG: "provision"}


def test_a_key_pair_holding_another_key_is_an_error(region):
    cloud.ensure_key_pair(region, "c1", "c1-key", public_key())

    with pytest.raises(CloudError, match="key pair c1-key in us-east-1 holds a different key"):
        cloud.ensure_key_pair(region, "c1", "c1-key", public_key())


# --- images and instance types ---------------------------------------------------


def test_resolve_image_prefers_ubuntu_lts_from_ssm(region, monkeypatch):
    # moto refuses put_parameter under /aws (reserved), so answer the SSM call from a stub.
    ssm = boto3.client("ssm", region_name=region.name)
    stub = Stubber(ssm)
    name = "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
    stub.add_response(
        "get_parameter", {"Parameter": {"Name": name, "Value": "ami-ubuntu"}}, {"Name": name}
    )
    monkeypatch.setattr(api, "ssm_client", lambda region: ssm)

    with stub:
        assert cloud.resolve_image(region, None, arch="arm64") == "ami-ubuntu"


def test_resolve_image_falls_back_to_amazon_linux(region, client):
    image = cloud.resolve_image(region, None, arch="arm64")

    assert client.describe_images(ImageIds=[image])["Images"][0]["Architecture"] == "arm64"


def test_a_configured_image_must_exist_and_match_the_architecture(region):
    assert cloud.resolve_image(region, ARM_IMAGE, arch="arm64") == ARM_IMAGE
    with pytest.raises(CloudError, match="image ami-0123456789abcdef0 does not exist in us-east-1"):
        cloud.resolve_image(region, "ami-0123456789abcdef0")
    with pytest.raises(CloudError, match="is arm64, the instance type needs x86_64"):
        cloud.resolve_image(region, ARM_IMAGE, arch="x86_64")


def test_describe_instance_type_reports_size_and_architecture(region):
    c5 = cloud.describe_instance_type(region, "c5.xlarge")
    c7g = cloud.describe_instance_type(region, "c7g.large")

    assert (c5.vcpus, c5.memory_mib, c5.arch) == (4, 8192, "x86_64")
    assert c7g.arch == "arm64"


def test_an_unknown_instance_type_is_named_in_the_error(region):
    with pytest.raises(CloudError, match=r"^instance type c5\.hug is not offered in us-east-1$"):
        cloud.describe_instance_type(region, "c5.hug")


# --- wait, describe, list ------------------------------------------------------


def test_wait_running_reports_progress_until_all_run(region, base):
    ids = cloud.launch(region, request(base, count=2))
    seen = []

    cloud.wait_running(region, ids, timeout=5, on_progress=lambda n, total: seen.append((n, total)))

    assert seen[-1] == (2, 2)


def test_wait_running_times_out_naming_the_instances_not_running(region, base, client):
    [iid] = cloud.launch(region, request(base, spot=False))
    client.stop_instances(InstanceIds=[iid])

    with pytest.raises(CloudError, match=rf"timed out after 0\.3s waiting for {iid} \(stopped\)"):
        cloud.wait_running(region, [iid], timeout=0.3)


def test_wait_running_fails_at_once_when_an_instance_is_terminated(region, base, client):
    ids = cloud.launch(region, request(base, count=2))
    client.terminate_instances(InstanceIds=ids[:1])

    with pytest.raises(CloudError, match=rf"ended before running: {ids[0]} \(terminated: "):
        cloud.wait_running(region, ids, timeout=60)


def test_wait_running_refuses_an_empty_list(region):
    with pytest.raises(ValueError):
        cloud.wait_running(region, [], timeout=1)


def test_describe_cluster_rebuilds_roles_names_group_and_key_from_tags(region, base):
    [master] = cloud.launch(region, request(base, role=MASTER, spot=False))
    workers = cloud.launch(region, request(base, count=2))
    cloud.launch(region, request(base, cluster="other"))

    info = cloud.describe_cluster(region, "c1")

    assert info.master.instance_id == master and info.master.lifecycle == "on-demand"
    assert len(info.instances) == 3
    assert sorted(w.instance_id for w in info.workers) == workers
    assert [n.name for n in info.nodes] == ["master", "node001", "node002"]
    assert {w.lifecycle for w in info.workers} == {"spot"}
    assert info.security_group_id == base["security_group_id"]
    assert info.key_name == "c1-key"
    assert all(n.private_ip and n.zone for n in info.nodes)


def test_list_clusters_names_clusters_with_live_instances_or_groups(region, base):
    cloud.launch(region, request(base))
    cloud.launch(region, request(base, cluster="gone"))
    cloud.ensure_security_group(region, "only-group", ssh_cidr=CIDR)
    cloud.terminate_cluster(region, "gone")

    assert cloud.list_clusters(region) == ["c1", "only-group"]


# --- teardown -------------------------------------------------------------------


def test_terminate_cluster_leaves_nothing_and_a_second_call_is_a_no_op(region, base, client):
    cloud.launch(region, request(base, role=MASTER, spot=False))
    cloud.launch(region, request(base, count=2))
    cluster_tags = [{"Key": CLUSTER_TAG, "Value": "c1"}]
    client.request_spot_instances(
        InstanceCount=1,
        LaunchSpecification={"ImageId": base["image_id"], "InstanceType": "c5.large"},
        TagSpecifications=[{"ResourceType": "spot-instances-request", "Tags": cluster_tags}],
    )
    client.create_volume(
        AvailabilityZone="us-east-1a",
        Size=1,
        TagSpecifications=[{"ResourceType": "volume", "Tags": cluster_tags}],
    )
    client.import_key_pair(KeyName="users-own", PublicKeyMaterial=public_key().encode())
    assert len(cloud.leftovers(region, "c1")["instances"]) == 3

    removed = cloud.terminate_cluster(region, "c1")

    assert removed == {
        "instances": 3,
        "spot_requests": 1,
        "volumes": 1,
        "security_groups": 1,
        "key_pairs": 1,
    }
    assert cloud.leftovers(region, "c1") == {
        "instances": [],
        "spot_requests": [],
        "volumes": [],
        "security_groups": [],
        "key_pairs": [],
    }
    assert client.describe_key_pairs(KeyNames=["users-own"])["KeyPairs"]
    assert set(cloud.terminate_cluster(region, "c1").values()) == {0}


def test_terminate_cluster_reports_each_step_with_something_to_remove(region, base):
    [iid] = cloud.launch(region, request(base))
    steps = []

    cloud.terminate_cluster(region, "c1", on_step=steps.append)

    assert steps == [
        f"terminating 1 instance(s): {iid}",
        f"deleting security group(s) {base['security_group_id']}",
        "deleting key pair(s) c1-key",
    ]


def test_a_security_group_still_in_use_is_retried_until_free():
    client = boto3.client(
        "ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stub = Stubber(client)
    busy = "resource sg-1 has a dependent object"
    stub.add_client_error(
        "delete_security_group", "DependencyViolation", busy, expected_params={"GroupId": "sg-1"}
    )
    stub.add_response("delete_security_group", {}, {"GroupId": "sg-1"})
    stub.add_client_error(
        "delete_security_group", "DependencyViolation", busy, expected_params={"GroupId": "sg-2"}
    )

    with stub:
        assert network.delete_group(client, "sg-1", timeout=1) is True
        with pytest.raises(CloudError, match="could not delete security group sg-2"):
            network.delete_group(client, "sg-2", timeout=0)


def test_api_failures_surface_as_one_line_cloud_errors(monkeypatch):
    client = boto3.client(
        "ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    monkeypatch.setattr(api, "ec2_client", lambda region, **kw: client)
    denied = "You are not authorized to perform this operation."
    with Stubber(client) as stub:
        stub.add_client_error("describe_instances", "UnauthorizedOperation", denied)

        with pytest.raises(CloudError) as err:
            cloud.describe_cluster(Region("us-east-1"), "c1")

    assert str(err.value) == f"EC2 DescribeInstances failed: {denied} (UnauthorizedOperation)"


# --- caller address ------------------------------------------------------------


class _Reply:
    def __init__(self, body: bytes):
        self.body = body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, n):
        return self.body[:n]


def test_caller_cidr_is_the_public_ip_as_a_single_host(monkeypatch):
    monkeypatch.setattr(
        network.urllib.request, "urlopen", lambda url, timeout, context: _Reply(b"198.51.100.4\n")
    )

    assert cloud.caller_cidr(Region("us-east-1")) == "198.51.100.4/32"


def test_caller_cidr_failure_suggests_setting_ssh_cidr(monkeypatch):
    def offline(url, timeout, context):
        raise OSError("network is unreachable")

    monkeypatch.setattr(network.urllib.request, "urlopen", offline)

    with pytest.raises(CloudError, match="set ssh_cidr in the cluster file"):
        cloud.caller_cidr(Region("us-east-1"))


# --- the contract -----------------------------------------------------------------


def test_every_provider_implements_the_whole_contract_with_its_signatures():
    import inspect

    assert cloud.CONTRACT and len(set(cloud.CONTRACT)) == len(cloud.CONTRACT)
    for name in cloud.PROVIDERS:
        module = cloud.provider(name)
        for func in cloud.CONTRACT:
            impl = getattr(module, func, None)
            assert callable(impl), f"provider {name} lacks {func}"
            assert inspect.signature(impl) == inspect.signature(getattr(cloud, func)), func


def test_an_unknown_provider_is_a_one_line_error():
    with pytest.raises(CloudError, match="unknown cloud provider 'nimbus' \\(known: aws\\)"):
        cloud.describe_cluster(Region("us-east-1", provider="nimbus"), "c1")
