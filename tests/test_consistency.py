"""EC2's eventual consistency, where moto is kinder than AWS: a hook on every EC2
client (botocore's before-call / after-call events) and botocore's Stubber.

AWS ("Eventual consistency in the Amazon EC2 API"): an id a create has just
returned may be unknown to the next calls (`*.NotFound`), and tag-filtered
describes may leave a new instance out; instances go pending -> running and
shutting-down -> terminated over seconds; a security group stays in use
(`DependencyViolation`) until its instances are terminated. moto does none of
this, so these tests make it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.retries.standard
import pytest
import test_cli
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from conftest import offline_aws_env
from moto import mock_aws

from provision import cloud, context, lifecycle
from provision.cloud.aws import api
from provision.cloud.common import CLUSTER_TAG, CloudError, Region
from provision.config import load_config
from provision.progress import Reporter

REGION = Region("us-east-1")
# What a create returns, and the code AWS answers while the new id is unknown.
CREATES = {
    "RunInstances": (lambda r: [i["InstanceId"] for i in r["Instances"]],
                     "InvalidInstanceID.NotFound"),
    "CreateSecurityGroup": (lambda r: [r["GroupId"]], "InvalidGroup.NotFound"),
    "ImportKeyPair": (lambda r: [r["KeyName"]], "InvalidKeyPair.NotFound"),
}


def _named(request: dict[str, Any]) -> list[str]:
    """The values a request names (its query body), except filter values: a filtered
    describe leaves an unknown resource out instead of failing."""
    body = request.get("body") or {}
    return [v for k, v in body.items() if isinstance(v, str) and not k.startswith("Filter.")]


class Eventual:
    """Each id a create returns is unknown (NotFound) to the first call naming it;
    with `hide`, tag-filtered DescribeInstances leave out the instances launched."""

    def __init__(self) -> None:
        self.fresh: dict[str, str] = {}  # new id -> the NotFound code it still gets
        self.injected: list[tuple[str, str, str]] = []  # (operation, id, code)
        self.hide = False
        self.hidden: set[str] = set()
        self.answers: dict[str, list[str]] = {}  # operation -> error codes to answer, in turn

    def before(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        body = params.get("body") or {}
        context["by_id"] = any(k.startswith("InstanceId.") for k in body)
        if queued := self.answers.get(model.name):
            return _error(queued.pop(0), f"{model.name} refused (test)")
        for rid in _named(params):
            if rid in self.fresh:
                code = self.fresh.pop(rid)
                self.injected.append((model.name, rid, code))
                return _error(code, f"The ID '{rid}' does not exist")
        return None

    def after(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "Error" in parsed:
            return
        if model.name in CREATES:
            ids_of, code = CREATES[model.name]
            for rid in ids_of(parsed):
                self.fresh[rid] = code
                if model.name == "RunInstances" and self.hide:
                    self.hidden.add(rid)
        if model.name == "DescribeInstances" and not context.get("by_id"):
            for res in parsed.get("Reservations", []):  # asked by id, EC2 does answer
                res["Instances"] = [
                    i for i in res["Instances"] if i["InstanceId"] not in self.hidden
                ]


def _error(code: str, message: str) -> tuple[AWSResponse, dict[str, Any]]:
    body = {"Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": 400}}
    return AWSResponse("https://ec2.us-east-1.amazonaws.com/", 400, {}, None), body


@pytest.fixture
def eventual(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[Eventual]:
    """moto's EC2 behind the AWS provider's clients, made eventually consistent."""
    offline_aws_env(monkeypatch, tmp_path)
    model = Eventual()
    make = api.client

    def client(service: str, region: Region, *, fail_fast: bool = False) -> Any:
        c = make(service, region, fail_fast=fail_fast)
        if service == "ec2":
            c.meta.events.register("before-call.ec2", model.before)
            c.meta.events.register("after-call.ec2", model.after)
        return c

    monkeypatch.setattr(api, "client", client)
    # No real waits: botocore's backoff (until_found's too), and polls of a state.
    monkeypatch.setattr(
        botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0.01
    )
    monkeypatch.setattr(api, "FIRST_POLL_S", 0.01)
    with mock_aws():
        yield model


cfg = test_cli.cfg_file  # a cluster file of 1 + 2 spot nodes and its key (moto's CLI tests)


def _live(name: str) -> list[str]:
    """Live instances of the cluster, asked of EC2 with a plain client (no hook)."""
    ec2 = boto3.client("ec2", region_name=REGION.name)
    found = ec2.describe_instances(Filters=[
        {"Name": f"tag:{CLUSTER_TAG}", "Values": [name]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "shutting-down"]},
    ])["Reservations"]
    return [i["InstanceId"] for r in found for i in r["Instances"]]


def test_notfound_once_after_each_create_is_survived_by_up_and_down(eventual, cfg):
    ctx = context.prepare(load_config(cfg))
    info = lifecycle.ensure_instances(ctx)  # up's cloud phase

    codes = {code for _, _, code in eventual.injected}
    assert codes == {"InvalidGroup.NotFound", "InvalidKeyPair.NotFound",
                     "InvalidInstanceID.NotFound"}, eventual.injected
    calls = {op for op, _, _ in eventual.injected}
    assert {"AuthorizeSecurityGroupIngress", "RunInstances", "CreateTags"} <= calls
    assert sorted(i.name for i in info.alive) == ["master", "node001", "node002"]
    lifecycle.down("unit", region=REGION)
    assert _live("unit") == []


def test_up_sees_and_down_removes_nodes_that_tag_queries_do_not_show_yet(eventual, cfg):
    eventual.hide = True
    ctx = context.prepare(load_config(cfg))
    info = lifecycle.ensure_instances(ctx)
    assert len(info.alive) == 3, "new nodes come from describing the ids RunInstances returned"
    eventual.hidden |= {i.instance_id for i in info.alive}  # still not in filtered answers
    assert cloud.leftovers(REGION, "unit")["instances"] == []  # as a tag query sees it

    lifecycle.down("unit", region=REGION)  # the local record names what was just launched

    assert _live("unit") == []


def test_a_security_group_still_in_use_is_deleted_once_its_instances_are_gone(eventual, cfg):
    ctx = context.prepare(load_config(cfg))
    lifecycle.ensure_instances(ctx)
    eventual.answers["DeleteSecurityGroup"] = ["DependencyViolation"] * 3
    heard: list[str] = []

    class Ears(Reporter):
        def note(self, text: str) -> None:
            heard.append(text)

    removed = lifecycle.down("unit", region=REGION, reporter=Ears())

    assert removed["security_groups"] == 1
    assert eventual.answers["DeleteSecurityGroup"] == []  # all three were answered
    assert any(t.startswith("waiting for sg-") and "refused" in t for t in heard), heard


# --- the terminate wait, stubbed: states moto never shows -----------------------------


def _described(iid: str, state: str) -> dict[str, Any]:
    code = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}[state]
    inst = {"InstanceId": iid, "State": {"Name": state, "Code": code}, "InstanceType": "c5.large",
            "LaunchTime": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    return {"Reservations": [{"Instances": [inst]}]}


def _stubbed(monkeypatch: pytest.MonkeyPatch, script: list[tuple[str, Any]]) -> Stubber:
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    stub = Stubber(ec2)
    for op, answer in script:
        if isinstance(answer, str):
            stub.add_client_error(op, service_error_code=answer, http_status_code=400)
        else:
            stub.add_response(op, answer)
    stub.activate()
    monkeypatch.setattr(api, "ec2_client", lambda region, **_: ec2)
    monkeypatch.setattr(api, "FIRST_POLL_S", 0.01)
    monkeypatch.setattr(
        botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0.01
    )
    return stub


def test_a_terminate_wait_goes_through_pending_and_shutting_down(monkeypatch):
    """boto3's instance_terminated waiter fails at once on an instance still `pending`,
    as one launched moments ago reads right after TerminateInstances."""
    iid = "i-0123456789abcdef0"
    stub = _stubbed(monkeypatch, [
        ("describe_instances", "InvalidInstanceID.NotFound"),  # launched moments ago
        ("describe_instances", _described(iid, "pending")),
        ("terminate_instances", {"TerminatingInstances": []}),
        ("describe_instances", _described(iid, "pending")),
        ("describe_instances", _described(iid, "shutting-down")),
        ("describe_instances", _described(iid, "terminated")),
    ])
    heard: list[str] = []

    cloud.terminate_instances(REGION, [iid], timeout=30, on_step=heard.append)

    stub.assert_no_pending_responses()
    assert heard == [f"waiting for {iid} (pending) to terminate",
                     f"waiting for {iid} (shutting-down) to terminate"]


def test_a_terminate_wait_that_times_out_names_each_instance_and_its_state(monkeypatch):
    iid = "i-0123456789abcdef0"
    _stubbed(monkeypatch, [
        ("describe_instances", _described(iid, "running")),
        ("terminate_instances", {"TerminatingInstances": []}),
        *[("describe_instances", _described(iid, "shutting-down"))] * 50,
    ])

    with pytest.raises(CloudError, match=rf"waiting for {iid} \(shutting-down\) to terminate"):
        cloud.terminate_instances(REGION, [iid], timeout=0.05)
