"""vCPU quotas of EC2 through Service Quotas, against what runs and what `up` adds.

EC2 limits running vCPUs per region and family group, separately on demand and
on spot; every c-family type is in the "Standard (A, C, D, H, I, M, R, T, Z)"
group. New accounts often get fewer vCPUs than a first cluster asks for, and
without a check the on-demand master launches, bills, and then the spot
workers fail. GetServiceQuota gives the applied value; where it has none, the
default value (GetAWSDefaultServiceQuota) is what applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from provision.cloud.aws import api
from provision.cloud.common import FAIL, OK, WARN, Finding, LaunchPlan, Region


@dataclass(frozen=True)
class Quota:
    code: str
    name: str
    spot: bool


ON_DEMAND_STANDARD = Quota(
    "L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", spot=False
)
SPOT_STANDARD = Quota(
    "L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", spot=True
)
STANDARD_FAMILIES = frozenset("acdhimrtz")  # the first letter of the instance type
SERVICE = "ec2"


def quota_value(region: Region, quota: Quota) -> float:
    """The applied value of `quota`, else its default; `ClientError` when neither answers."""
    sq = api.client("service-quotas", region, fail_fast=True)
    try:
        return float(sq.get_service_quota(ServiceCode=SERVICE, QuotaCode=quota.code)
                     ["Quota"]["Value"])
    except ClientError as e:
        if api.code(e) != "NoSuchResourceException":
            raise
    return float(sq.get_aws_default_service_quota(ServiceCode=SERVICE, QuotaCode=quota.code)
                 ["Quota"]["Value"])


def vcpus_running(region: Region) -> dict[bool, int]:
    """vCPUs of standard-family instances pending or running in `region`, by market
    (True: spot)."""
    ec2 = api.ec2_client(region)
    alive = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    total = {False: 0, True: 0}
    for inst in api.instances(ec2, alive):
        if inst["InstanceType"][0] in STANDARD_FAMILIES:
            cpu = inst.get("CpuOptions") or {}
            vcpus = int(cpu.get("CoreCount", 1)) * int(cpu.get("ThreadsPerCore", 1))
            total[inst.get("InstanceLifecycle") == "spot"] += vcpus
    return total


def check(region: Region, plan: LaunchPlan) -> list[Finding]:
    """One finding per market the plan launches on: enough vCPU quota left?"""
    findings = []
    running: dict[bool, int] | None = None
    for quota, nodes in ((ON_DEMAND_STANDARD, plan.on_demand), (SPOT_STANDARD, plan.spot)):
        if not nodes:
            continue
        name = f"vCPU quota ({'spot' if quota.spot else 'on-demand'})"
        needed = nodes * plan.vcpus
        try:
            value = quota_value(region, quota)
        except (ClientError, BotoCoreError) as e:  # one line, not an HTML error page
            why = f"{api.code(e)} from {e.operation_name}" if isinstance(e, ClientError) else e
            findings.append(Finding(name, WARN, f"could not read {quota.code} ({why}); "
                                    f"this up needs {needed} vCPUs"))
            continue
        running = running if running is not None else vcpus_running(region)
        line = (f"{quota.code} ({quota.name}) is {value:g} vCPUs in {region.name}; "
                f"{running[quota.spot]} run, this up adds {needed}")
        if running[quota.spot] + needed > value:
            findings.append(Finding(name, FAIL, f"{line}: request an increase in the Service "
                                    "Quotas console, or launch fewer or smaller nodes"))
        else:
            findings.append(Finding(name, OK, line))
    return findings
