"""The cluster stops itself: autostop (idle), max_hours (lifetime) and budget (USD).

An agent on the master (`provision.nodes.autostop`) does the watching, so the
limits hold with the laptop closed. This module decides what it is told: the
limits from the settings, and the figures only the laptop has. Nodes carry no
cloud credentials, so the agent cannot read prices: `up` (and `autostop`)
hand it the cluster's hourly rate, priced here from the cloud, and the spend
so far; it adds rate x time. A spot price that moves after that is not seen by
the agent (`status` prices from the cloud each time and shows the difference).

When it stops the cluster, the instances terminate themselves (launched with
InstanceInitiatedShutdownBehavior=terminate); their spot requests and the
security group stay until `provision down`. `query.stopped_by_autostop` tells that
case from the cloud's record (the instances' state reason), so `status` and
`list` say so with no local state.
"""

from __future__ import annotations

import time
from typing import Any

import pydantic

from provision import cloud, query, state
from provision.cloud.common import ClusterInfo
from provision.context import Context, context_for
from provision.errors import BadInput, ProvisionError
from provision.nodes import autostop as agent
from provision.nodes import fanout
from provision.nodes.autostop_agent import Limits, spent
from provision.nodes.remote import TRANSIENT_ERRORS
from provision.schema import ClusterConfig

ADVICE = "stopped by autostop, run `provision down {name}` to clean up"


def wanted(ctx: Context) -> bool:
    cfg = ctx.config
    return any(v is not None for v in (cfg.autostop, cfg.max_hours, cfg.budget))


def limits(ctx: Context, info: ClusterInfo, hourly: float | None) -> dict[str, Any]:
    """The agent's ``config.json``: the limits, the figures to price them, the workers."""
    cfg, master = ctx.config, info.master
    assert master is not None
    if cfg.budget is not None and hourly is None:
        raise ProvisionError("budget: the cluster's hourly price is unknown here, so the "
                             "agent could not tell when the budget is reached")
    costs = query.cluster_costs(ctx.region, info, cfg)
    spent = [c.so_far for c in costs.values() if c.so_far is not None]
    launched = [i.launch_time for i in info.nodes if i.launch_time] or [None]
    return {
        "idle_s": cfg.autostop_s, "max_hours": cfg.max_hours, "budget": cfg.budget,
        "hourly": hourly, "spent": sum(spent), "set_at": time.time(),
        "launched_at": min(launched).timestamp() if launched[0] else time.time(),
        "user": ctx.user, "workers": [i.private_ip for i in info.workers if i.private_ip],
    }


def apply(ctx: Context, info: ClusterInfo, hourly: float | None) -> None:
    """Make the master's agent enforce the settings' limits (idempotent): installed or
    updated when there is a limit, stopped when there is none any more."""
    master = info.master
    if master is None:
        return
    ep = ctx.endpoint(master)
    if not wanted(ctx):
        if state.load(ctx.name).get("autostop_agent"):
            agent.stop(ep, ctx.config.remote_root)
            state.update(ctx.name, autostop_agent=False)
        return
    # Every worker accepts the agent's key before the agent starts: with a limit already
    # reached, its first look stops the workers, then the master.
    key = agent.ensure_key(ep, ctx.config.remote_root)
    group = fanout.fan_out(lambda i: agent.authorize(ctx.endpoint(i, master), key), info.workers,
                           key=lambda i: i.label, limit=fanout.MAX_PARALLEL_HOSTS)
    group.raise_for_failures()
    agent.install(ep, ctx.config.remote_root, limits(ctx, info, hourly))
    state.update(ctx.name, autostop_agent=True)


def refresh(ctx: Context, info: ClusterInfo) -> None:
    """After the workers changed (removenode): the agent powers off the workers there
    are now, and prices from their hourly rate; what the old set spent until now is
    carried over at the old rate (the agent's own `spent`). Nothing when no agent
    runs; a failure is a warning, since the nodes themselves did change."""
    if info.master is None or not state.load(ctx.name).get("autostop_agent"):
        return
    ep = ctx.endpoint(info.master)
    try:
        config = agent.read_config(ep, ctx.config.remote_root)
        if config is None:
            return
        hourly = query.hourly_total(ctx.region, info, ctx.config)
        now = time.time()
        so_far = spent(Limits.from_json(config), now)
        config.update(workers=[i.private_ip for i in info.workers if i.private_ip],
                      hourly=hourly, set_at=now,
                      spent=config.get("spent", 0.0) if so_far is None else so_far)
        agent.write_config(ep, ctx.config.remote_root, config)
    except (ProvisionError, *TRANSIENT_ERRORS) as err:
        ctx.reporter.warn(f"the autostop agent on {info.master.label} still has the old "
                          f"worker list ({err}); `provision autostop {ctx.name}` sets it again")


def set_limits(name: str, changes: dict[str, Any]) -> Context:
    """`provision autostop`: new limits for a running cluster, kept in its record."""
    ctx = context_for(name)
    try:
        ctx.config = ClusterConfig.model_validate(ctx.config.model_dump(mode="json") | changes)
    except pydantic.ValidationError as err:  # the first problem, by field
        first = err.errors()[0]
        raise BadInput(f"{first['loc'][0]}: {first['msg'].removeprefix('Value error, ')}") from None
    info = cloud.describe_cluster(ctx.region, name)
    if info.master is None:
        raise ProvisionError(f"cluster {name!r} has no running master")
    apply(ctx, info, query.hourly_total(ctx.region, info, ctx.config))
    state.update(name, config=ctx.config.model_dump(mode="json"))
    return ctx


def agent_state(ctx: Context, info: ClusterInfo) -> dict[str, Any] | None:
    """What the master's agent last wrote (None: no agent, or the master is gone)."""
    if info.master is None:
        return None
    return agent.read_state(ctx.endpoint(info.master), ctx.config.remote_root)
