"""Amazon EC2 as the provider contract of `provision.cloud` (stateless boto3 functions).

Split by concern: `instances` (launch, wait, describe, terminate), `network`
(security group, key pair, the caller's address), `prices` (spot history,
on-demand estimates), `images` (instance types, machine images), `teardown`;
`api` holds the clients and the error translation they share. The functions
named in `provision.cloud.CONTRACT` are re-exported here, where the router
finds them.
"""

from provision.cloud.aws.images import describe_image, describe_instance_type, resolve_image
from provision.cloud.aws.instances import (
    describe_cluster,
    describe_instances,
    launch,
    list_clusters,
    name_unnamed,
    wait_running,
)
from provision.cloud.aws.network import (
    caller_cidr,
    ensure_key_pair,
    ensure_security_group,
    resolve_network,
)
from provision.cloud.aws.prices import spot_price_history
from provision.cloud.aws.teardown import leftovers, terminate_cluster, terminate_instances

__all__ = [
    "caller_cidr",
    "describe_cluster",
    "describe_image",
    "describe_instance_type",
    "describe_instances",
    "ensure_key_pair",
    "ensure_security_group",
    "launch",
    "leftovers",
    "list_clusters",
    "name_unnamed",
    "resolve_image",
    "resolve_network",
    "spot_price_history",
    "terminate_cluster",
    "terminate_instances",
    "wait_running",
]
