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
from provision.cloud.common import CLUSTER_TAG, CREATED_BY_TAG, CloudError, Region

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


def _vpc_for(region: Region, ec2: Any) -> str:
    if region.subnet_id:
        return ec2.describe_subnets(SubnetIds=[region.subnet_id])["Subnets"][0]["VpcId"]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise CloudError(f"{region.name} has no default VPC; set subnet_id in the cluster file")
    return vpcs[0]["VpcId"]


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
    vpc_id = _vpc_for(region, ec2)
    name = f"provision-{cluster}"
    tags = {CLUSTER_TAG: cluster, CREATED_BY_TAG: api.TOOL}
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
    )["SecurityGroups"]
    if found:
        group = found[0]
        group_id = group["GroupId"]
        if any(api.tag_dict(group).get(k) != v for k, v in tags.items()):
            ec2.create_tags(Resources=[group_id], Tags=api.tags(tags))
        have = _flatten(group.get("IpPermissions", []))
    else:
        group_id = ec2.create_security_group(
            GroupName=name,
            Description=f"provision cluster {cluster}: SSH from the client, "
            "all traffic between nodes",
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": api.tags(tags)}],
        )["GroupId"]
        have = set()
    kind = "cidr6" if net.version == 6 else "cidr"
    want = {("tcp", SSH_PORT, SSH_PORT, kind, str(net)), ("-1", None, None, "group", group_id)}
    if extra := sorted(have - want, key=str):
        ec2.revoke_security_group_ingress(
            GroupId=group_id, IpPermissions=[_permission(r) for r in extra]
        )
    if missing := sorted(want - have, key=str):
        ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[_permission(r) for r in missing]
        )
    return group_id


def delete_group(ec2: Any, group_id: str, *, timeout: float) -> bool:
    """Delete a group, retrying while ENIs of terminating nodes still hold it.

    True if deleted now, False if it was already gone.
    """
    delay = api.poll_delay(timeout)
    deadline = time.monotonic() + timeout
    while True:
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
        time.sleep(delay)


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
    # Compare key material, not fingerprints: EC2 fingerprints imported RSA keys
    # (MD5 of DER), ed25519 keys (SHA-256) and created keys differently.
    if pair.get("PublicKey") and _key_body(pair["PublicKey"]) != _key_body(public_key):
        raise CloudError(
            f"key pair {key_name} in {region.name} holds a different key "
            f"(fingerprint {pair.get('KeyFingerprint')}); delete it or choose another key_name"
        )
    return False
