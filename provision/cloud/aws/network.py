"""Network access and key pairs on EC2. See the contract in `provision.cloud`."""

from __future__ import annotations

import ipaddress
import os
import ssl
import time
import urllib.request
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError
from botocore.httpsession import where

from provision.cloud.aws import api
from provision.cloud.common import (
    CLUSTER_TAG,
    CREATED_BY_TAG,
    CloudError,
    NetworkInfo,
    OnStep,
    Region,
)

CHECKIP_URL = "https://checkip.amazonaws.com"
CHECKIP_TIMEOUT_S = 3.0
SSH_PORT = 22


def caller_cidr(region: Region) -> str:
    """See the contract. Asks checkip.amazonaws.com, which answers from every region."""
    # boto3's CA bundle (AWS_CA_BUNDLE, else certifi's), not the system store, which
    # python.org's macOS builds leave empty until "Install Certificates" is run.
    tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or where())
    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=CHECKIP_TIMEOUT_S, context=tls) as resp:
            ip = ipaddress.ip_address(resp.read(64).decode().strip())
    except (OSError, ValueError) as e:
        raise CloudError(
            f"could not learn this machine's public IP from {CHECKIP_URL} ({e}); "
            "set ssh_cidr in the cluster file"
        ) from e
    return f"{ip}/{ip.max_prefixlen}"


NO_DEFAULT_VPC = (
    "{region} has no default VPC: set subnet_id (or vpc_id, and zone) in the cluster file"
)


def _pick(subnets: list[dict[str, Any]]) -> dict[str, str]:
    """Zone -> subnet: per zone the subnet with the most free addresses (ties: lowest id)."""
    best: dict[str, dict[str, Any]] = {}
    for s in sorted(subnets, key=lambda s: (-s.get("AvailableIpAddressCount", 0), s["SubnetId"])):
        best.setdefault(s["AvailabilityZone"], s)
    return {zone: s["SubnetId"] for zone, s in sorted(best.items())}


@api.api_errors
def resolve_network(region: Region, zone: str | None = None) -> NetworkInfo:
    """See the contract. A subnet pins VPC and zone; a VPC offers its subnets (the
    one with most free addresses per zone); otherwise the default VPC's default
    subnets, as the EC2 console launches."""
    ec2 = api.ec2_client(region)
    if region.subnet_id:
        try:
            subnet = ec2.describe_subnets(SubnetIds=[region.subnet_id])["Subnets"][0]
        except ClientError as e:
            if api.code(e) != "InvalidSubnetID.NotFound":
                raise
            raise CloudError(f"subnet_id {region.subnet_id} does not exist in {region.name}") from e
        if region.vpc_id and subnet["VpcId"] != region.vpc_id:
            raise CloudError(
                f"subnet_id {region.subnet_id} is in {subnet['VpcId']}, not vpc_id {region.vpc_id}"
            )
        if zone and subnet["AvailabilityZone"] != zone:
            raise CloudError(
                f"subnet_id {region.subnet_id} is in zone {subnet['AvailabilityZone']}, not {zone}"
            )
        return NetworkInfo(subnet["VpcId"], {subnet["AvailabilityZone"]: subnet["SubnetId"]})
    if region.vpc_id:
        try:
            ec2.describe_vpcs(VpcIds=[region.vpc_id])
        except ClientError as e:
            if api.code(e) != "InvalidVpcID.NotFound":
                raise
            raise CloudError(f"vpc_id {region.vpc_id} does not exist in {region.name}") from e
        vpc_id, where = region.vpc_id, [{"Name": "vpc-id", "Values": [region.vpc_id]}]
    else:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise CloudError(NO_DEFAULT_VPC.format(region=region.name))
        vpc_id = vpcs[0]["VpcId"]
        where = [{"Name": "vpc-id", "Values": [vpc_id]},
                 {"Name": "default-for-az", "Values": ["true"]}]
    if zone:
        where.append({"Name": "availability-zone", "Values": [zone]})
    subnets = _pick(ec2.describe_subnets(Filters=where)["Subnets"])
    if not subnets:
        what = f"VPC {vpc_id}" if region.vpc_id else f"the default VPC {vpc_id}"
        raise CloudError(
            f"{what} has no {'default ' if not region.vpc_id else ''}subnet"
            f"{' in ' + zone if zone else ''}: set subnet_id in the cluster file"
        )
    return NetworkInfo(vpc_id, subnets)


def _flatten(permissions: Iterable[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """IpPermissions as atomic (protocol, from, to, kind, source) rules, so a
    reconcile is a set difference."""
    rules = set()
    for p in permissions:
        proto = p["IpProtocol"]
        ports = (None, None) if proto == "-1" else (p.get("FromPort"), p.get("ToPort"))
        sources = (
            [("cidr", r["CidrIp"]) for r in p.get("IpRanges", [])]
            + [("cidr6", r["CidrIpv6"]) for r in p.get("Ipv6Ranges", [])]
            + [("group", g["GroupId"]) for g in p.get("UserIdGroupPairs", [])]
            + [("prefix", r["PrefixListId"]) for r in p.get("PrefixListIds", [])]
        )
        rules.update((proto, *ports, kind, src) for kind, src in sources)
    return rules


def _permission(rule: tuple[Any, ...]) -> dict[str, Any]:
    proto, lo, hi, kind, src = rule
    perm: dict[str, Any] = {"IpProtocol": proto}
    if lo is not None:
        perm.update(FromPort=lo, ToPort=hi)
    field, key = {
        "cidr": ("IpRanges", "CidrIp"),
        "cidr6": ("Ipv6Ranges", "CidrIpv6"),
        "group": ("UserIdGroupPairs", "GroupId"),
        "prefix": ("PrefixListIds", "PrefixListId"),
    }[kind]
    perm[field] = [{key: src}]
    return perm


@api.api_errors
def ensure_security_group(region: Region, cluster: str, *, ssh_cidr: str) -> str:
    """See the contract. Outbound keeps EC2's default (all)."""
    try:
        net = ipaddress.ip_network(ssh_cidr, strict=False)
    except ValueError as e:
        raise CloudError(f"ssh_cidr {ssh_cidr!r} is not a CIDR such as 203.0.113.7/32") from e
    ec2 = api.ec2_client(region)
    vpc_id = resolve_network(region).vpc_id
    name = f"provision-{cluster}"
    tags = {CLUSTER_TAG: cluster, CREATED_BY_TAG: api.TOOL}
    group = _find_group(ec2, name, vpc_id)
    if group is None:
        try:
            group_id = ec2.create_security_group(
                GroupName=name,
                Description=f"provision cluster {cluster}: SSH from the client, "
                "all traffic between nodes",
                VpcId=vpc_id,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": api.tags(tags)}],
            )["GroupId"]
            have: set[tuple[Any, ...]] = set()
        except ClientError as e:
            if api.code(e) != "InvalidGroup.Duplicate":
                raise
            # Made moments ago (a re-run, a parallel `up`) and not yet in filtered answers.
            group = _wait_for_group(ec2, name, vpc_id)
    if group is not None:
        group_id = group["GroupId"]
        if any(api.tag_dict(group).get(k) != v for k, v in tags.items()):
            api.until_found(lambda: ec2.create_tags(Resources=[group_id], Tags=api.tags(tags)))
        have = _flatten(group.get("IpPermissions", []))
    kind = "cidr6" if net.version == 6 else "cidr"
    want = {("tcp", SSH_PORT, SSH_PORT, kind, str(net)), ("-1", None, None, "group", group_id)}
    # A new group may be unknown to the next call for a moment: back off on NotFound.
    if extra := sorted(have - want, key=str):
        api.until_found(lambda: ec2.revoke_security_group_ingress(
            GroupId=group_id, IpPermissions=[_permission(r) for r in extra]
        ))
    if missing := sorted(want - have, key=str):
        api.until_found(lambda: ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[_permission(r) for r in missing]
        ))
    return group_id


def _find_group(ec2: Any, name: str, vpc_id: str) -> dict[str, Any] | None:
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
    )["SecurityGroups"]
    return found[0] if found else None


def _wait_for_group(ec2: Any, name: str, vpc_id: str) -> dict[str, Any]:
    """The group EC2 says exists, once filtered answers show it too."""
    deadline = time.monotonic() + api.NOT_FOUND_S
    attempt = 0
    while (group := _find_group(ec2, name, vpc_id)) is None:
        attempt += 1
        if time.monotonic() > deadline:
            raise CloudError(f"security group {name} exists but {vpc_id} does not list it")
        time.sleep(api.backoff_delay(attempt))
    return group


def delete_group(
    ec2: Any, group_id: str, *, timeout: float, on_step: OnStep | None = None
) -> bool:
    """Delete a group, retrying while instances not yet `terminated` still use it
    (DependencyViolation), and saying so once.

    True if deleted now, False if it was already gone.
    """
    deadline = time.monotonic() + timeout
    told = False
    for delay in api.poll_delays():
        try:
            ec2.delete_security_group(GroupId=group_id)
            return True
        except ClientError as e:
            if api.code(e) == "InvalidGroup.NotFound":
                return False
            if api.code(e) != "DependencyViolation" or time.monotonic() + delay > deadline:
                raise CloudError(
                    f"could not delete security group {group_id}: {api.message(e)}"
                ) from e
            if on_step is not None and not told:
                on_step(f"waiting for {group_id} to be free: {api.message(e)}")
                told = True
        time.sleep(delay)
    raise AssertionError("unreachable")


def _key_body(public_key: str) -> tuple[str, ...]:
    """Key type and base64 blob: the comment is not part of the key."""
    return tuple(public_key.split()[:2])


@api.api_errors
def ensure_key_pair(region: Region, cluster: str, key_name: str, public_key: str) -> bool:
    """See the contract.

    The pair may be someone else's: nodes launched with another key would
    refuse the user's private key, so a mismatch is an error, not an overwrite.
    """
    ec2 = api.ec2_client(region)
    try:
        pair = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"][0]
    except ClientError as e:
        if api.code(e) != "InvalidKeyPair.NotFound":
            raise
        try:
            ec2.import_key_pair(
                KeyName=key_name,
                PublicKeyMaterial=public_key.encode(),
                TagSpecifications=[
                    {
                        "ResourceType": "key-pair",
                        "Tags": api.tags({CLUSTER_TAG: cluster, CREATED_BY_TAG: api.TOOL}),
                    }
                ],
            )
            return True
        except ClientError as dup:
            if api.code(dup) != "InvalidKeyPair.Duplicate":
                raise
        # Imported moments ago and not yet described: compare once it is.
        pair = api.until_found(
            lambda: ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
        )["KeyPairs"][0]
    # Compare key material, not fingerprints: EC2 fingerprints imported RSA keys
    # (MD5 of DER), ed25519 keys (SHA-256) and created keys differently.
    if pair.get("PublicKey") and _key_body(pair["PublicKey"]) != _key_body(public_key):
        raise CloudError(
            f"key pair {key_name} in {region.name} holds a different key "
            f"(fingerprint {pair.get('KeyFingerprint')}); delete it or choose another key_name"
        )
    return False
