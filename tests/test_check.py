"""`provision check`, `up --dry-run` and the checks `up` runs first.

On moto: what a user sees, and that nothing is created. With botocore's Stubber
where moto is kinder or different than AWS: Service Quotas (moto knows only
VPC's quotas; conftest answers EC2's), the EC2 Spot service-linked role (moto
names it wrongly), access denied.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess

import boto3
import pytest
import test_cli
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from test_cli import invoke, nothing_created

from provision.cloud.aws import account, api, instances, prices, quotas
from provision.cloud.common import FAIL, OK, WARN, CloudError, LaunchPlan, Region, ZonePrice

aws, cfg_file = test_cli.aws, test_cli.cfg_file  # moto, and a cluster file of 1 + 2 spot
REGION = Region("us-east-1")
SPOT_ROLE_ARN = "arn:aws:iam::123456789012:role/aws-service-role/spot.amazonaws.com/" + (
    account.SPOT_ROLE
)


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_check_reports_every_check_and_the_plan_and_creates_nothing(aws, cfg_file):
    result = invoke("check", "--config", str(cfg_file))

    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for expected in ("credentials", "account 123456789012", "region", "network", "default VPC",
                     "instance type", "c5.large offered in", "image", "login user ec2-user",
                     "spot price", "vCPU quota (on-demand)", "L-1216C47A", "vCPU quota (spot)",
                     "L-34B43A08", "key pair", "is new in us-east-1", account.SPOT_ROLE,
                     "1 master", "on-demand", "2 workers", "spot", "total"):
        assert expected in text, f"{expected!r} missing from:\n{result.output}"
    nothing_created(aws)
    iam = boto3.client("iam", region_name="us-east-1")
    assert not [r for r in iam.list_roles()["Roles"] if "spot" in r["Arn"]]  # check creates nothing


def test_a_vcpu_quota_too_small_stops_up_before_anything_is_created(aws, cfg_file, ec2_vcpu_quotas):
    ec2_vcpu_quotas["L-34B43A08"] = 2.0  # two spot workers of 2 vCPUs need 4

    result = invoke("up", "--config", str(cfg_file))

    assert result.exit_code == 2, result.output
    (line,) = lines(result.output)
    assert "L-34B43A08" in line and "is 2 vCPUs" in line and "this up adds 4" in line, line
    assert "nothing was launched" in line
    nothing_created(aws)


def test_up_dry_run_checks_and_plans_but_launches_nothing(aws, cfg_file):
    result = invoke("up", "--config", str(cfg_file), "--dry-run", "-n", "5")

    assert result.exit_code == 0, result.output
    assert "4 workers" in result.output and "what `up` would launch" in result.output
    nothing_created(aws)


def test_the_plan_prices_the_autostop_window_and_the_lifetime(aws, cfg_file):
    limited = invoke("up", "--config", str(cfg_file), "--dry-run", "--autostop", "30m",
                     "--max-hours", "2")
    forgotten = invoke("up", "--config", str(cfg_file), "--dry-run")

    assert limited.exit_code == 0 and forgotten.exit_code == 0, limited.output + forgotten.output
    text = " ".join(limited.output.split())
    hourly = float(re.search(r"total[│ ]*(\d+\.\d{4})", text)[1])
    window = float(re.search(r"the autostop window \(30m idle\) costs \$(\d+\.\d+)", text)[1])
    cap = float(re.search(r"max_hours 2 caps it at \$(\d+\.\d+)", text)[1])
    assert window == pytest.approx(hourly / 2, abs=1e-4) and cap == pytest.approx(2 * hourly)
    day = re.search(r"no autostop: a day forgotten costs \$(\d+\.\d+)", " ".join(
        forgotten.output.split()))
    assert day and float(day[1]) == pytest.approx(24 * hourly, abs=0.01), forgotten.output
    nothing_created(aws)


def test_check_without_credentials_says_so_first_and_exits_1(monkeypatch, tmp_path, cfg_file):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata lookup
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)

    result = invoke("check", "--config", str(cfg_file))

    assert result.exit_code == 1, result.output
    assert "no usable AWS credentials" in result.output and "aws configure" in result.output


def test_a_bid_below_every_zone_s_price_is_a_warning(aws, cfg_file, monkeypatch):
    now = [ZonePrice("us-east-1a", 0.2, 0.2, 0.2, 1), ZonePrice("us-east-1b", 0.3, 0.3, 0.3, 1)]
    monkeypatch.setattr(prices, "spot_price_history", lambda *a, **kw: now)

    result = invoke("check", "--config", str(cfg_file))

    assert result.exit_code == 0, result.output
    assert "bid 0.1 USD/h is below the price in every zone" in " ".join(result.output.split())


@pytest.mark.parametrize("via", ["cli", "api"])
def test_up_runs_the_checks_once_and_still_creates_the_spot_role(aws, cfg_file, monkeypatch, via):
    """The CLI checks and shows the plan before `lifecycle.up`, which then does not check
    again (it only creates the spot role the check reported); a notebook's `up` checks."""
    from provision import check, cloud, lifecycle
    from provision.config import load_config
    from provision.errors import ProvisionError

    counts, role_fixes = {"check.preflight": 0, "cloud.preflight": 0}, []

    def counted(name: str, real):
        def call(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        return call

    def stop(ctx):
        raise ProvisionError("stopped after the checks")

    real_role = account.spot_role
    monkeypatch.setattr(check, "preflight", counted("check.preflight", check.preflight))
    monkeypatch.setattr(cloud, "preflight", counted("cloud.preflight", cloud.preflight))
    monkeypatch.setattr(account, "spot_role",
                        lambda region, fix: role_fixes.append(fix) or real_role(region, fix=fix))
    monkeypatch.setattr(lifecycle.imaging, "announce", stop)  # the step after the checks

    if via == "cli":
        result = invoke("up", "--config", str(cfg_file))
        assert result.exit_code == 1 and "stopped after the checks" in result.output, result.output
    else:
        with pytest.raises(ProvisionError, match="stopped after the checks"):
            lifecycle.up(load_config(cfg_file))

    assert counts == {"check.preflight": 1, "cloud.preflight": 1}
    assert role_fixes == ([False, True] if via == "cli" else [True])  # `up` creates it


def test_up_with_no_local_key_yet_refuses_a_key_pair_holding_another_before_creating_anything(
    aws, tmp_path, monkeypatch
):
    """`check` runs before `up` makes the local key, so it cannot compare the pair's key:
    `up` compares it with the key it made, and stops before anything is created."""
    from oracle import anything

    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    aws.import_key_pair(KeyName="provision-unit", PublicKeyMaterial=(
        tmp_path / "other.pub").read_bytes())
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(test_cli.CONFIG.replace("    key_path: {key}\n", ""))  # the default key
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where it does not exist yet

    result = invoke("up", "--config", str(cfg))

    assert result.exit_code == 2, result.output
    assert "provision-unit in us-east-1 holds another key" in " ".join(result.output.split())
    assert "nothing was launched" in result.output
    assert {k: v for k, v in anything(aws).items() if v and k not in ("images", "snapshots")} == {
        "key_pairs": ["provision-unit"]}


# --- where moto differs from AWS: Stubber --------------------------------------------


PLAN = LaunchPlan(cluster="c", instance_type="c5.large", vcpus=2, on_demand=1, spot=2,
                  spot_bid=0.1, zone=None, key_name="k", public_key="")


@pytest.fixture
def stubbed(monkeypatch):
    """api.client hands out stubbed clients, one per service; yields the Stubbers."""
    stubs: dict[str, Stubber] = {}

    def client(service: str, region: Region, *, fail_fast: bool = False):
        if service not in stubs:
            c = boto3.client(service, region_name="us-east-1", aws_access_key_id="x",
                             aws_secret_access_key="x")
            stubs[service] = Stubber(c)
            stubs[service].activate()
        return stubs[service].client

    monkeypatch.setattr(api, "client", client)
    monkeypatch.setattr(quotas, "vcpus_running", lambda region: {False: 4, True: 0})
    yield lambda service: (client(service, REGION), stubs[service])[1]


def quota_reply(code: str, value: float) -> dict:
    return {"Quota": {"ServiceCode": "ec2", "QuotaCode": code, "Value": value}}


def test_a_quota_without_an_applied_value_falls_back_to_the_default(stubbed):
    sq = stubbed("service-quotas")
    sq.add_client_error("get_service_quota", "NoSuchResourceException")
    sq.add_response("get_aws_default_service_quota", quota_reply("L-1216C47A", 6.0))
    sq.add_response("get_service_quota", quota_reply("L-34B43A08", 5.0))

    on_demand, spot = quotas.check(REGION, PLAN)

    assert on_demand.status == OK and "is 6 vCPUs" in on_demand.detail  # 4 run + 2 = 6
    assert "4 run, this up adds 2" in on_demand.detail and spot.status == OK
    sq.assert_no_pending_responses()


def test_a_quota_that_cannot_be_read_is_a_warning_not_a_failure(stubbed):
    sq = stubbed("service-quotas")
    sq.add_client_error("get_service_quota", "AccessDeniedException", http_status_code=403)
    sq.add_response("get_service_quota", quota_reply("L-34B43A08", 3.0))

    on_demand, spot = quotas.check(REGION, PLAN)

    assert on_demand.status == WARN and "could not read L-1216C47A" in on_demand.detail
    assert spot.status == FAIL and spot.input  # 2 spot nodes x 2 vCPUs > 3: exit 2


def test_the_spot_role_is_created_by_up_and_only_reported_by_check(stubbed):
    iam = stubbed("iam")
    iam.add_client_error("get_role", "NoSuchEntity", http_status_code=404)
    iam.add_client_error("get_role", "NoSuchEntity", http_status_code=404)
    role = {"Path": "/aws-service-role/spot.amazonaws.com/", "RoleName": account.SPOT_ROLE,
            "RoleId": "AROAEXAMPLEEXAMPLE01", "Arn": SPOT_ROLE_ARN,
            "CreateDate": dt.datetime(2024, 1, 1), "AssumeRolePolicyDocument": "{}"}
    iam.add_response("create_service_linked_role", {"Role": role},
                     {"AWSServiceName": "spot.amazonaws.com"})

    reported = account.spot_role(REGION, fix=False)
    created = account.spot_role(REGION, fix=True)

    assert reported.status == WARN and account.CREATE_SPOT_ROLE in reported.detail
    assert created.status == OK and "created" in created.detail
    iam.assert_no_pending_responses()


def test_a_spot_role_nobody_may_create_fails_up_saying_what_an_administrator_runs(stubbed):
    iam = stubbed("iam")
    iam.add_client_error("get_role", "NoSuchEntity", http_status_code=404)
    iam.add_client_error("create_service_linked_role", "AccessDenied", http_status_code=403)

    found = account.spot_role(REGION, fix=True)

    assert found.status == FAIL and not found.input  # the account, not the input: exit 1
    assert f"an administrator runs `{account.CREATE_SPOT_ROLE}`" in found.detail


def test_a_spot_launch_refused_for_want_of_the_role_says_what_to_run(aws, monkeypatch):
    def refuse(ec2, params):
        error = {"Error": {"Code": account.SPOT_ROLE_ERROR, "Message": "The provided credentials "
                           "do not have permission to create the service-linked role for EC2 "
                           "Spot Instances."}}
        raise ClientError(error, "RunInstances")

    monkeypatch.setattr(instances, "_run", refuse)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    group = ec2.create_security_group(GroupName="g", Description="g")["GroupId"]
    from provision import cloud
    from provision.cloud.common import LaunchRequest

    req = LaunchRequest(cluster="c", role="worker", count=1, instance_type="c5.large",
                        image_id="ami-760aaa0f", key_name="", security_group_id=group,
                        spot=True, max_price=0.1)
    with pytest.raises(CloudError) as err:
        cloud.launch(REGION, req)
    assert account.CREATE_SPOT_ROLE in str(err.value)
