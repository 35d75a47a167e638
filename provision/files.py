"""Files to and from a cluster's nodes, and how to reach one: what `put`, `get` and
`ssh` do, as functions a notebook can call too."""

from __future__ import annotations

from pathlib import Path

from provision import cloud
from provision.context import context_for
from provision.errors import BadInput
from provision.nodes import fanout, remote
from provision.schema import ClusterConfig


def node_endpoint(config: ClusterConfig, node: str | None = None) -> remote.Endpoint:
    """How to reach `node` (a name, id or IP) of the cluster, or its master."""
    ctx = context_for(config)
    info = cloud.describe_cluster(ctx.region, ctx.name)
    inst = info.find(node) if node else info.master
    if inst is None:
        raise BadInput(
            f"NODE: no node {node!r} in cluster {ctx.name!r}" if node
            else f"cluster {ctx.name!r} has no master"
        )
    return ctx.endpoint(inst, info.master)


def put(
    config: ClusterConfig, local: Path, remote_path: str, node: str | None = None
) -> fanout.GroupResult:
    """Copy `local` to `remote_path` on every node (or on `node`); each node's outcome."""
    ctx = context_for(config)
    info = cloud.describe_cluster(ctx.region, ctx.name)
    nodes = [info.find(node)] if node else info.nodes
    targets = [ctx.endpoint(i, info.master) for i in nodes if i is not None]
    if len(targets) != len(nodes):
        raise BadInput(f"--node: no node {node!r} in cluster {ctx.name!r}")
    return fanout.on_hosts(lambda ep: remote.put(ep, local, remote_path), targets)


def get(
    config: ClusterConfig, remote_path: str, local: Path, node: str | None = None
) -> remote.Endpoint:
    """Copy `remote_path` from `node` (default: the master) to `local`; the node copied from."""
    ep = node_endpoint(config, node)
    remote.get(ep, remote_path, local)
    return ep
