"""Smaller things a first session on AWS trips over: c7i-flex, the caller's address
(asked only where an SSH rule is made, through boto3's CA bundle), addnode from a
new network, the zone of master and workers, and why an instance never ran."""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
import pytest
import test_cli
from botocore.httpsession import where
from botocore.stub import Stubber
from test_iam_policy import Ready, _Client

import provision.cloud.aws
from provision import cloud, configure, context, lifecycle
from provision.cloud.aws import api, network, prices
from provision.cloud.common import CloudError, Region, ZonePrice
from provision.config import load_config
from provision.schema import ClusterConfig

aws, cfg_file = test_cli.aws, test_cli.cfg_file
REGION = Region("us-east-1")


def test_c7i_flex_types_are_c_family_and_accepted():
    assert ClusterConfig(instance_type="c7i-flex.large").instance_type == "c7i-flex.large"
    with pytest.raises(ValueError, match="c-family"):
        ClusterConfig(instance_type="m7i-flex.large")


class _Reply:
    def __init__(self, body: bytes):
        self.body = body

    def __enter__(self) -> _Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self, n: int) -> bytes:
        return self.body[:n]


@pytest.fixture
def checkip(monkeypatch) -> list[Any]:
    """The caller's address service, answering 198.51.100.4; the TLS context of each ask."""
    seen: list[Any] = []

    def urlopen(url: str, timeout: float, context: Any) -> _Reply:
        seen.append(context)
        return _Reply(b"198.51.100.4\n")

    monkeypatch.setattr(network.urllib.request, "urlopen", urlopen)
    return seen


def test_the_callers_address_is_asked_with_boto3s_ca_bundle(checkip, monkeypatch):
    cafiles = []
    real = network.ssl.create_default_context
    monkeypatch.setattr(network.ssl, "create_default_context",
                        lambda cafile=None: cafiles.append(cafile) or real(cafile=cafile))
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)

    assert cloud.caller_cidr(REGION) == "198.51.100.4/32"
    monkeypatch.setenv("AWS_CA_BUNDLE", where())
    cloud.caller_cidr(REGION)

    assert cafiles == [where(), where()]  # certifi's, not an empty system store


def _no_cidr(cfg_file) -> ClusterConfig:
    return load_config(cfg_file).model_copy(update={"ssh_cidr": None})


def test_connecting_or_reading_never_asks_for_the_callers_address(aws, cfg_file, checkip):
    ctx = context.context_for(_no_cidr(cfg_file), need_key=False)
    assert checkip == []  # a context, as connect() and status build it, asks nothing
    assert ctx.ssh_cidr == "198.51.100.4/32" and len(checkip) == 1
    assert ctx.ssh_cidr == "198.51.100.4/32" and len(checkip) == 1  # asked once


def ssh_sources(name: str) -> set[str]:
    group = cloud.describe_cluster(REGION, name).security_group_id
    ec2 = boto3.client("ec2", region_name="us-east-1")
    perms = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    return {r["CidrIp"] for p in perms if p.get("FromPort") == 22 for r in p["IpRanges"]}


def test_addnode_from_a_new_network_moves_the_ssh_rule_there(aws, cfg_file, monkeypatch):
    address = ["198.51.100.4/32"]
    monkeypatch.setattr(provision.cloud.aws, "caller_cidr", lambda region: address[0])
    monkeypatch.setattr(lifecycle, "connect_client", lambda *a, **kw: _Client())
    monkeypatch.setitem(configure.STRATEGIES, "fabric", Ready)
    cfg = _no_cidr(cfg_file)
    lifecycle.up(cfg, configure_with=Ready())
    assert ssh_sources("unit") == {"198.51.100.4/32"}

    address[0] = "192.0.2.77/32"  # the laptop moved to another network
    for path in context.context_for(cfg).connection_files:
        path.write_text("{}")
    lifecycle.addnode("unit", 1, config=cfg)

    assert ssh_sources("unit") == {"192.0.2.77/32"}


def test_the_master_goes_where_spot_is_cheapest_and_the_workers_follow_it(
    aws, cfg_file, monkeypatch
):
    cheapest_c = [ZonePrice(z, p, p, p, 1) for z, p in
                  (("us-east-1c", 0.02), ("us-east-1a", 0.03), ("us-east-1b", 0.05))]
    monkeypatch.setattr(prices, "spot_price_history", lambda *a, **kw: cheapest_c)

    lifecycle.ensure_instances(context.prepare(load_config(cfg_file)))

    info = cloud.describe_cluster(REGION, "unit")
    assert info.master is not None and info.master.lifecycle == "on-demand"
    assert {i.zone for i in info.alive} == {"us-east-1c"}  # not the first zone alphabetically


def test_an_instance_that_never_ran_says_why(monkeypatch):
    client = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stub = Stubber(client)
    reason = {"Code": "Client.InvalidKMSKey.InvalidState",
              "Message": "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an "
                         "incorrect state"}
    gone = {"InstanceId": "i-0abc", "State": {"Code": 48, "Name": "terminated"},
            "StateReason": reason, "LaunchTime": dt.datetime(2026, 3, 1)}
    stub.add_response("describe_instances", {"Reservations": [{"Instances": [gone]}]})
    stub.activate()
    monkeypatch.setattr(api, "ec2_client", lambda region, fail_fast=False: client)

    with pytest.raises(CloudError) as err:
        cloud.wait_running(REGION, ["i-0abc"], timeout=5)

    assert "i-0abc (terminated: Client.InvalidKMSKey.InvalidState: The KMS key" in str(err.value)
