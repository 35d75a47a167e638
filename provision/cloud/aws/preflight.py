"""Before a launch on EC2: can this plan launch here? See the contract in `provision.cloud`.

Every check reads (Describe*, Service Quotas, IAM GetRole); the only write,
with `fix`, is the EC2 Spot service-linked role, which bills nothing.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from provision.cloud.aws import account, api, network, prices, quotas
from provision.cloud.common import FAIL, OK, WARN, CloudError, Finding, LaunchPlan, Region


@api.api_errors
def preflight(region: Region, plan: LaunchPlan, *, fix: bool = False) -> list[Finding]:
    """See the contract."""
    ec2 = api.ec2_client(region)
    available = [{"Name": "state", "Values": ["available"]}]
    zones = sorted(z["ZoneName"] for z in
                   ec2.describe_availability_zones(Filters=available)["AvailabilityZones"])
    findings = [Finding("region", OK, f"{region.name}: zones {', '.join(zones)}")]
    net, subnet_zone = _network(ec2, region)
    findings.append(net)
    zone = plan.zone or subnet_zone
    offered = _offered(ec2, plan.instance_type)
    findings.append(_offering(region, plan.instance_type, zone, offered))
    if plan.spot:
        findings.append(_spot_prices(region, plan, [zone] if zone else offered))
    findings += quotas.check(region, plan)
    return findings + _prerequisites(ec2, region, plan, fix)


@api.api_errors
def prerequisites(region: Region, plan: LaunchPlan, *, fix: bool = False) -> list[Finding]:
    """See the contract."""
    return _prerequisites(api.ec2_client(region), region, plan, fix)


def _prerequisites(ec2: Any, region: Region, plan: LaunchPlan, fix: bool) -> list[Finding]:
    findings = [_key_pair(ec2, region, plan)]
    if plan.spot:
        findings.append(account.spot_role(region, fix=fix))
    return findings


def _network(ec2: Any, region: Region) -> tuple[Finding, str | None]:
    """The subnet the nodes go to, or the default VPC; and the zone a subnet pins."""
    if region.subnet_id:
        try:
            subnet = ec2.describe_subnets(SubnetIds=[region.subnet_id])["Subnets"][0]
        except ClientError as e:
            if not api.code(e).startswith("InvalidSubnet"):
                raise
            return Finding("network", FAIL, f"subnet {region.subnet_id} does not exist in "
                           f"{region.name}"), None
        zone = subnet["AvailabilityZone"]
        return Finding("network", OK, f"subnet {subnet['SubnetId']} of {subnet['VpcId']} "
                       f"in {zone}"), zone
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        return Finding("network", FAIL, f"{region.name} has no default VPC: set subnet_id in "
                       "the cluster file"), None
    return Finding("network", OK, f"default VPC {vpcs[0]['VpcId']}"), None


def _offered(ec2: Any, instance_type: str) -> list[str]:
    offers = ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": [instance_type]}],
    )["InstanceTypeOfferings"]
    return sorted({o["Location"] for o in offers})


def _offering(region: Region, instance_type: str, zone: str | None, offered: list[str]) -> Finding:
    name = "instance type"
    if not offered:
        return Finding(name, FAIL, f"{instance_type} is not offered in any zone of {region.name}")
    if zone and zone not in offered:
        return Finding(name, FAIL, f"{instance_type} is not offered in {zone} "
                       f"(offered in {', '.join(offered)})")
    return Finding(name, OK, f"{instance_type} offered in {zone or ', '.join(offered)}")


def _spot_prices(region: Region, plan: LaunchPlan, zones: list[str]) -> Finding:
    """The spot price in each zone the workers may go to, against the bid."""
    name = "spot price"
    try:
        found = [p for p in prices.spot_price_history(region, plan.instance_type, days=0)
                 if p.zone in zones]
    except CloudError as e:
        return Finding(name, WARN, f"no spot prices ({e})")
    if not found:
        return Finding(name, WARN, f"no spot price of {plan.instance_type} in {', '.join(zones)}")
    listing = ", ".join(f"{p.zone} {p.current:.4f}" for p in found)
    bid = plan.spot_bid
    if bid is not None and bid < min(p.current for p in found):
        return Finding(name, WARN, f"bid {bid:g} USD/h is below the price in every zone "
                       f"({listing}): spot requests stay unfulfilled until it drops")
    below = [p.zone for p in found if bid is not None and bid < p.current]
    extra = f"; the bid is below the price in {', '.join(below)}" if below else ""
    return Finding(name, OK, f"USD/h now: {listing}{extra}")


def _key_pair(ec2: Any, region: Region, plan: LaunchPlan) -> Finding:
    name = "key pair"
    try:
        pair = ec2.describe_key_pairs(KeyNames=[plan.key_name], IncludePublicKey=True)
    except ClientError as e:
        if api.code(e) != "InvalidKeyPair.NotFound":
            raise
        return Finding(name, OK, f"{plan.key_name} is new in {region.name}: `up` imports it")
    stored = pair["KeyPairs"][0].get("PublicKey", "")
    theirs, ours = network._key_body(stored), network._key_body(plan.public_key)
    if plan.public_key and stored and theirs != ours:
        return Finding(name, FAIL, f"{plan.key_name} in {region.name} holds another key: delete "
                       "it or choose another key_name")
    return Finding(name, OK, f"{plan.key_name} exists in {region.name}")
