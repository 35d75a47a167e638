"""The simulated region's API as AWS answers it: pending and NotFound windows, groups still
in use, spot prices, and the spot instance requests behind spot launches.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from simhelp import (
    Launch,
    describe,
    host_of,
    retry_not_found,
    spot_request,
    wait_state,
    wait_until,
)

from provision import sim
from provision.sim.state import PUBLIC_CIDR

pytestmark = pytest.mark.e2e


def test_new_instances_pend_unknown_to_the_api_for_a_moment_then_run_with_a_public_ip(
    sim_launch: Launch, sim_ec2: Any
) -> None:
    start = time.monotonic()
    insts = sim_launch(3, wait=False)
    ids = [i["InstanceId"] for i in insts]
    assert {i["State"]["Name"] for i in insts} == {"pending"}
    assert all(i["PrivateIpAddress"] and "PublicIpAddress" not in i for i in insts)
    codes = []
    for iid in ids:
        tag = [{"Key": "k", "Value": "v"}]
        for call, kw in ((sim_ec2.describe_instances, {"InstanceIds": [iid]}),
                         (sim_ec2.create_tags, {"Resources": [iid], "Tags": tag})):
            try:
                call(**kw)
            except ClientError as e:
                codes.append(e.response["Error"]["Code"])
    assert "InvalidInstanceID.NotFound" in codes  # 3 windows of 0-2 s: at least one still open
    pending = describe(sim_ec2, ids[0])
    assert pending["State"]["Name"] == "pending" and "PublicIpAddress" not in pending
    running = wait_state(sim_ec2, ids[0], "running")
    assert time.monotonic() - start >= 1.5  # pending lasts seconds (2-4 s by default)
    assert ipaddress.ip_address(running["PublicIpAddress"]) in ipaddress.ip_network(PUBLIC_CIDR)


def test_a_new_group_is_briefly_unknown_and_cannot_be_deleted_while_its_instance_shuts_down(
    sim_launch: Launch, sim_ec2: Any
) -> None:
    region = sim.region()
    vpc = sim_ec2.describe_subnets(SubnetIds=[region.subnet_id])["Subnets"][0]["VpcId"]
    groups = [sim_ec2.create_security_group(GroupName=f"t-{os.getpid()}-{time.monotonic_ns()}-{n}",
                                            Description="test", VpcId=vpc)["GroupId"]
              for n in range(3)]
    codes = []
    for gid in groups:
        try:
            sim_ec2.describe_security_groups(GroupIds=[gid])
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
    assert "InvalidGroup.NotFound" in codes
    for gid in groups[1:]:
        retry_not_found(lambda g=gid: sim_ec2.delete_security_group(GroupId=g))
    gid = groups[0]
    retry_not_found(lambda: sim_ec2.authorize_security_group_ingress(
        GroupId=gid, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                     "IpRanges": [{"CidrIp": region.ssh_cidr}]}]))
    (inst,) = sim_launch(groups=[gid])
    with pytest.raises(ClientError, match="DependencyViolation"):
        sim_ec2.delete_security_group(GroupId=gid)  # running
    sim_ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    assert describe(sim_ec2, inst["InstanceId"])["State"]["Name"] == "shutting-down"
    with pytest.raises(ClientError, match="DependencyViolation"):
        sim_ec2.delete_security_group(GroupId=gid)  # still shutting down
    wait_state(sim_ec2, inst["InstanceId"], "terminated")
    sim_ec2.delete_security_group(GroupId=gid)


def test_spot_prices_vary_by_zone_and_over_time_around_a_realistic_level(sim_ec2: Any) -> None:
    day = sim_ec2.describe_spot_price_history(
        InstanceTypes=["c5.large"], StartTime=time.time() - 86400
    )["SpotPriceHistory"]
    prices = [float(p["SpotPrice"]) for p in day]
    assert all(0.015 < p < 0.05 for p in prices)  # c5.large on demand: 0.085 USD/h
    by_zone: dict[str, set[float]] = {}
    for p in day:
        by_zone.setdefault(p["AvailabilityZone"], set()).add(float(p["SpotPrice"]))
    assert len(by_zone) >= 3 and all(len(v) >= 3 for v in by_zone.values())
    now = sim_ec2.describe_spot_price_history(InstanceTypes=["c5.large"], StartTime=time.time())
    assert len({p["SpotPrice"] for p in now["SpotPriceHistory"]}) > 1  # zones differ


# --- interruptions, termination ------------------------------------------------------------


# --- spot instance requests ---------------------------------------------------------------

SPOT_TAGS = [{"ResourceType": "spot-instances-request", "Tags": [{"Key": "cluster", "Value": "t"}]}]


def test_a_spot_launch_makes_an_active_fulfilled_request_named_by_the_instance(
    sim_launch: Launch, sim_ec2: Any
) -> None:
    insts = sim_launch(2, spot=True, wait=False, TagSpecifications=SPOT_TAGS)
    rids = [i["SpotInstanceRequestId"] for i in insts]
    assert all(r.startswith("sir-") for r in rids) and len(set(rids)) == 2
    codes = []
    for rid in rids:  # as any new id, unknown to the API for a moment
        try:
            sim_ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[rid])
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
    assert set(codes) <= {"InvalidSpotInstanceRequestID.NotFound"}
    for inst, rid in zip(insts, rids, strict=True):
        req = spot_request(sim_ec2, rid)
        assert (req["State"], req["Status"]["Code"], req["Type"]) == ("active", "fulfilled",
                                                                      "one-time")
        assert req["InstanceId"] == inst["InstanceId"]
        assert req["Tags"] == [{"Key": "cluster", "Value": "t"}]
        assert float(req["SpotPrice"]) == 0.085  # no MaxPrice: the on-demand price
        assert describe(sim_ec2, inst["InstanceId"])["SpotInstanceRequestId"] == rid
    tagged = sim_ec2.describe_spot_instance_requests(
        Filters=[{"Name": "tag:cluster", "Values": ["t"]},
                 {"Name": "state", "Values": ["open", "active"]}])["SpotInstanceRequests"]
    assert {r["SpotInstanceRequestId"] for r in tagged} >= set(rids)
    spots = sim_ec2.describe_instances(Filters=[{"Name": "instance-lifecycle", "Values": ["spot"]},
                                                {"Name": "spot-instance-request-id",
                                                 "Values": rids}])
    assert {i["InstanceId"] for r in spots["Reservations"] for i in r["Instances"]} == {
        i["InstanceId"] for i in insts}


def test_terminating_a_spot_instance_closes_its_request(sim_launch: Launch, sim_ec2: Any) -> None:
    (inst,) = sim_launch(spot=True)
    sim_ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    req = spot_request(sim_ec2, inst["SpotInstanceRequestId"])
    assert (req["State"], req["Status"]["Code"]) == ("closed", "instance-terminated-by-user")
    still = sim_ec2.describe_spot_instance_requests(
        Filters=[{"Name": "state", "Values": ["open", "active"]}])["SpotInstanceRequests"]
    assert inst["SpotInstanceRequestId"] not in {r["SpotInstanceRequestId"] for r in still}


def test_a_cancelled_request_is_kept_and_its_instance_runs_until_terminated(
    sim_launch: Launch, sim_ec2: Any
) -> None:
    (inst,) = sim_launch(spot=True)
    iid, rid = inst["InstanceId"], inst["SpotInstanceRequestId"]
    answer = sim_ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=[rid])
    assert answer["CancelledSpotInstanceRequests"] == [
        {"SpotInstanceRequestId": rid, "State": "cancelled"}]
    req = spot_request(sim_ec2, rid)
    assert (req["State"], req["Status"]["Code"]) == ("cancelled",
                                                     "request-canceled-and-instance-running")
    assert describe(sim_ec2, iid)["State"]["Name"] == "running"
    wait_until(lambda: host_of(iid), what="the host to boot")
    sim_ec2.terminate_instances(InstanceIds=[iid])
    req = spot_request(sim_ec2, rid)
    assert (req["State"], req["Status"]["Code"]) == ("cancelled", "instance-terminated-by-user")
    with pytest.raises(ClientError, match="InvalidSpotInstanceRequestID.NotFound"):
        sim_ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=["sir-00000000"])


def test_a_one_time_spot_instance_cannot_be_stopped(sim_launch: Launch, sim_ec2: Any) -> None:
    (inst,) = sim_launch(spot=True)
    with pytest.raises(ClientError, match="UnsupportedOperation"):
        sim_ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
    wait_state(sim_ec2, inst["InstanceId"], "running", timeout=1)
