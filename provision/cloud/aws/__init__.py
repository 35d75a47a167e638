"""Amazon EC2 as the provider contract of `provision.cloud` (stateless boto3 functions).

Split by concern: `instances` (launch, wait, describe, terminate), `network`
(security group, key pair, the caller's address), `prices` (spot history,
on-demand estimates), `images` (instance types, machine images), `teardown`;
`api` holds the clients and the error translation they share. Before a launch:
`preflight` (with `quotas` and `account`: vCPU quotas, identity, the spot role);
`pricing` asks the Pricing API for list prices per region. The functions
named in `provision.cloud.CONTRACT` are re-exported here, where the router
finds them.
"""

from provision.cloud.aws.account import caller_identity
from provision.cloud.aws.describe import describe_cluster, describe_instances, list_clusters
from provision.cloud.aws.images import (
    create_image,
    delete_image,
    describe_baked,
    describe_image,
    describe_instance_type,
    find_image,
    list_images,
    resolve_image,
    wait_image,
)
from provision.cloud.aws.instances import launch, name_unnamed, wait_running
from provision.cloud.aws.network import (
    caller_cidr,
    ensure_key_pair,
    ensure_security_group,
    resolve_network,
)
from provision.cloud.aws.preflight import preflight, prerequisites
from provision.cloud.aws.prices import spot_price_history, spot_price_series
from provision.cloud.aws.pricing import price_sheet
from provision.cloud.aws.teardown import leftovers, terminate_cluster, terminate_instances

__all__ = [
    "caller_cidr",
    "caller_identity",
    "create_image",
    "delete_image",
    "describe_baked",
    "describe_cluster",
    "describe_image",
    "describe_instance_type",
    "describe_instances",
    "ensure_key_pair",
    "ensure_security_group",
    "find_image",
    "launch",
    "leftovers",
    "list_clusters",
    "list_images",
    "name_unnamed",
    "preflight",
    "prerequisites",
    "price_sheet",
    "resolve_image",
    "resolve_network",
    "spot_price_history",
    "spot_price_series",
    "terminate_cluster",
    "terminate_instances",
    "wait_image",
    "wait_running",
]
