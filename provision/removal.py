"""`removenode`: shrink a running cluster by named workers or by its newest ones.

Each worker's engines are stopped first. ipyparallel has no drain (an engine
cannot be told to finish its task and take no more), so the tasks they were
running fail over to the other engines through the search's retries, as after
a spot interruption; then the instances are terminated together.
"""

from __future__ import annotations

import datetime as dt

from provision import autostop, cloud, locks, state
from provision.cloud.common import MASTER, ClusterInfo, InstanceInfo
from provision.context import Context, context_for
from provision.errors import BadInput, ProvisionError
from provision.files import find_node
from provision.nodes import engines, fanout, remote
from provision.progress import Reporter
from provision.schema import ClusterConfig

EPOCH = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def newest_workers(info: ClusterInfo, count: int) -> list[InstanceInfo]:
    """The `count` most recently launched workers (by launch time, then name)."""
    if count < 1:
        raise BadInput(f"-n: must be at least 1 (got {count})")
    workers = info.workers
    if count > len(workers):
        raise BadInput(f"-n: cluster {info.name!r} has only {len(workers)} worker(s)")
    ordered = sorted(workers, key=lambda i: (i.launch_time or EPOCH, i.label), reverse=True)
    return ordered[:count]


def _chosen(info: ClusterInfo, nodes: list[str], newest: int | None) -> list[InstanceInfo]:
    if bool(nodes) == (newest is not None):
        raise BadInput("NODE: name the workers to remove, or give -n K for the newest K")
    if newest is not None:
        return newest_workers(info, newest)
    chosen = {i.instance_id: i for i in (find_node(info, n) for n in nodes)}
    for inst in chosen.values():
        if inst.role == MASTER:
            raise BadInput(f"NODE: {inst.label} is the master; use `provision down "
                           f"{info.name}` to remove the cluster")
    return list(chosen.values())


def _stop_engines(ctx: Context, info: ClusterInfo, inst: InstanceInfo) -> int:
    try:
        return engines.stop_engines(ctx.endpoint(inst, info.master), ctx.config.remote_root)
    except (ProvisionError, *remote.TRANSIENT_ERRORS) as err:  # the node is going anyway
        ctx.reporter.warn(f"could not stop engines on {inst.label} cleanly: {err}")
        return 0


@locks.exclusive("removenode")
def removenode(
    name: str, nodes: str | list[str] = (), *, newest: int | None = None,
    config: ClusterConfig | None = None, reporter: Reporter | None = None,
) -> list[InstanceInfo]:
    """Stop the engines of the workers `nodes` names (or of the `newest` K), then
    terminate them and wait until they are gone; the instances removed."""
    ctx = context_for(config if config is not None else name, reporter=reporter)
    info = cloud.describe_cluster(ctx.region, name)
    victims = _chosen(info, [nodes] if isinstance(nodes, str) else list(nodes), newest)
    fanout.fan_out(lambda i: _stop_engines(ctx, info, i), victims, key=lambda i: i.instance_id)
    cloud.terminate_instances(
        ctx.region, [i.instance_id for i in victims], wait=True, timeout=ctx.config.launch_timeout
    )
    gone = sum(ctx.engines_on(i) for i in victims)
    state.update(name, expected_engines=max(0, state.load(name).get("expected_engines", 0) - gone))
    left = {i.instance_id for i in victims}
    info.instances = [i for i in info.instances if i.instance_id not in left]
    autostop.refresh(ctx, info)  # its agent powers off the workers there are now
    return victims
