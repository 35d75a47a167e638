"""The orchestrator: the only code that knows the order of steps.

`up` validates everything before it creates anything, reconciles the cluster
against its tags (so a re-run after a crash launches only the shortfall), then
hands the nodes to a configure strategy (`provision.configure`), which brings
each to ready as soon as it answers. A worker that fails is reported by id and
IP and terminated (or replaced); the cluster record stays consistent because
the cloud's tags are the record. `down` walks it all back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from provision import autostop, cloud, configure, imaging, locks, query, rollback, state
from provision import check as checks
from provision.client import EnginesTimeout, connect_client
from provision.cloud.common import (
    MASTER,
    WARN,
    WORKER,
    ClusterInfo,
    InstanceInfo,
    LaunchRequest,
    Region,
)
from provision.configure import Results, Step, Strategy
from provision.configure.base import stage
from provision.context import Context, context_for, prepare, resolve_region
from provision.controller import (
    connect,  # noqa: F401 - part of the API (`lifecycle.connect`)
    expected_engines,
    record_master,
    refresh_connection_files,
)
from provision.controller import running_master as _running_master
from provision.errors import BadInput, ProvisionError
from provision.nodes import engines, fanout
from provision.progress import Reporter
from provision.removal import removenode  # noqa: F401 - part of the API (`lifecycle.removenode`)
from provision.schema import ClusterConfig


@dataclass
class UpResult:
    """What `up` did, for the CLI to print and tests to check."""

    cluster: ClusterInfo
    engines: int
    hourly_cost: float | None
    failed: list[str]
    client_file: Path


def _remember(ctx: Context) -> None:
    """Cache the settings a later command (connect, addnode, down) needs."""
    state.update(
        ctx.name,
        name=ctx.name,
        config=ctx.config.model_dump(mode="json"),
        vcpus=ctx.type_info.vcpus,
        user=ctx.user,
        image_id=ctx.image_id,  # what the nodes run, should the image be deleted later
    )


def _context(name: str, config: ClusterConfig | None, reporter: Reporter | None) -> Context:
    """An existing cluster's context: from `config` when given, else its local record."""
    return context_for(config if config is not None else name, reporter=reporter)


def _launch(ctx: Context, role: str, count: int, sg: str, zone: str | None = None) -> list[str]:
    """Launch `count` nodes of `role`: spot workers when there is a bid, and a spot
    master only when asked for. In the configured zone, else `zone` first (the
    master's), then every zone offering the type, cheapest spot price first
    (capacity runs out per zone). The master always has a public address (the way
    in); workers as `public_ip` says. The ids join `ctx.launched`: what a failed
    `up` terminates."""
    cfg = ctx.config
    spot = cfg.spot_bid is not None and (role == WORKER or cfg.spot_master)
    req = LaunchRequest(
        cluster=ctx.name,
        role=role,
        count=count,
        instance_type=cfg.instance_type,
        image_id=ctx.image_id,
        key_name=cfg.pair_name,
        security_group_id=sg,
        spot=spot,
        max_price=cfg.spot_bid,
        volume_size=cfg.volume_size,
        zone=cfg.zone,
        prefer_zone=zone,
        subnet_id=ctx.region.subnet_id,
        public_ip=role == MASTER or cfg.public_ip,
    )
    ids = cloud.launch(ctx.region, req, on_launched=lambda ids: state.record_launch(ctx.name, ids))
    ctx.launched.extend(ids)
    return ids


def _worker_zone(ctx: Context, info: ClusterInfo) -> str | None:
    """Where workers go first: the master's zone, unless configured otherwise
    (traffic between zones bills both ways and adds latency to every task)."""
    master = info.master
    if ctx.config.zone or ctx.config.worker_zone != "master" or master is None:
        return None
    return master.zone or None


def _with_new(ctx: Context, new_ids: list[str]) -> ClusterInfo:
    """The cluster from its tags plus the instances just launched, described by id: a
    tag query may not show an instance launched seconds ago."""
    info = cloud.describe_cluster(ctx.region, ctx.name)
    if new_ids:
        info.merge(cloud.describe_instances(ctx.region, new_ids))
    return info


def reconcile(ctx: Context, sg: str, workers_wanted: int) -> ClusterInfo:
    """Launch only what the tags say is missing: one master, `workers_wanted` workers."""
    info = cloud.describe_cluster(ctx.region, ctx.name)
    if any(not i.name for i in info.alive):  # an earlier launch failed before naming them
        cloud.name_unnamed(ctx.region, ctx.name)
    new: list[str] = []
    shortfall = workers_wanted - len(info.workers)
    if info.master is None:
        stage(ctx, MASTER, "launching", Step.LAUNCHING)
        new += _launch(ctx, MASTER, 1, sg)
        cfg = ctx.config
        if shortfall > 0 and cfg.worker_zone == "master" and not (cfg.zone or ctx.region.subnet_id):
            info = _with_new(ctx, new)  # where the master went
    if shortfall > 0:
        new += _launch(ctx, WORKER, shortfall, sg, _worker_zone(ctx, info))
    elif shortfall < 0:
        ctx.reporter.warn(
            f"{len(info.workers)} workers run but {workers_wanted} were asked for: "
            "use `provision removenode` to shrink"
        )
    return _with_new(ctx, new)


def ensure_instances(ctx: Context) -> ClusterInfo:
    """The cloud phase of `up`, no SSH: record the settings, then security group, key
    pair, and the nodes the tags say are missing."""
    _remember(ctx)
    sg = cloud.ensure_security_group(ctx.region, ctx.name, ssh_cidr=ctx.ssh_cidr)
    cloud.ensure_key_pair(ctx.region, ctx.name, ctx.config.pair_name, ctx.public_key)
    return reconcile(ctx, sg, ctx.config.cluster_size - 1)


def _add_workers(
    ctx: Context, strategy: Strategy, info: ClusterInfo, count: int, sg: str | None,
    keep_failed: bool = False,
) -> list[str]:
    """Launch `count` workers beside `info`'s master and configure them; the labels
    of those that failed (already terminated). Without `sg` the SSH rule is checked
    first: the caller may be on another network than when the cluster came up."""
    sg = sg or cloud.ensure_security_group(ctx.region, ctx.name, ssh_cidr=ctx.ssh_cidr)
    new_ids = _launch(ctx, WORKER, count, sg, _worker_zone(ctx, info))
    fresh = _with_new(ctx, new_ids)
    new = [i for i in fresh.alive if i.instance_id in set(new_ids)]
    return rollback.fail_workers(ctx, fresh, strategy.configure(ctx, new), keep_failed)


def _settle(
    ctx: Context, strategy: Strategy, info: ClusterInfo, results: Results, replace_failed: bool,
    keep_failed: bool,
) -> list[str]:
    """Judge the nodes' outcomes: failed workers go first (replaced once with
    `replace_failed`); then a fatal failure fails `up`, whose caller terminates
    what it launched."""
    failed = rollback.fail_workers(ctx, info, results, keep_failed)
    fatal = rollback.fatal(info, results)
    if fatal is not None:
        raise ProvisionError(
            f"{fatal}. Run `provision up` again to retry, or `provision down {ctx.name}` to "
            "remove everything"
        )
    if failed and replace_failed:
        ctx.reporter.note(f"replacing {len(failed)} failed node(s)")
        failed = _add_workers(
            ctx, strategy, info, len(failed), info.security_group_id, keep_failed
        )
    return failed


@locks.exclusive("up")
def up(
    config: ClusterConfig,
    reporter: Reporter | None = None,
    *,
    replace_failed: bool = False,
    keep_failed: bool = False,
    configure_with: str | Strategy = configure.DEFAULT,
    checked: checks.CheckReport | None = None,
) -> UpResult:
    """Bring the cluster to the configured size with engines running (idempotent).

    The checks of `provision check` run first, and nothing launches when one
    fails. When `up` then fails (the master, or an image that cannot get the
    client's Python), the instances it launched are terminated, unless
    `keep_failed` (to look at them; they bill until `down`).

    `configure_with`: "fabric" (built in), "ansible" (``ansible/site.yml``, same
    result), or a `configure.Strategy` of your own. `checked`: the report of a
    `check.check(config)` the caller ran moments ago under this cluster's lock (the
    CLI does, to show the plan and confirm its price first): the checks then run
    once, `up` only settles what it brings itself (`check.settle`).
    """
    strategy = configure.strategy(configure_with)
    strategy.check()
    ctx = prepare(config, reporter)
    report = checks.preflight(ctx, fix=True) if checked is None else checks.settle(ctx, checked)
    for finding in report.findings:
        if finding.status == WARN:
            ctx.reporter.warn(f"{finding.check}: {finding.detail}")
    report.raise_for_failures()
    imaging.announce(ctx)  # a baked image: whether the install stage will be skipped
    strategy.start(ctx)  # the wheelhouse builds while the cloud launches
    try:
        info = ensure_instances(ctx)
        results = strategy.configure(ctx, info.nodes)
        failed = _settle(ctx, strategy, info, results, replace_failed, keep_failed)
    except ProvisionError as err:  # what can go wrong; a bug keeps its traceback
        raise rollback.roll_back(ctx, err, keep_failed) from err
    return _finish(ctx, failed)


def hourly_cost(ctx: Context, info: ClusterInfo) -> float | None:
    """USD/hour of the running nodes: compute, root volumes, public addresses."""
    return query.hourly_total(ctx.region, info, ctx.config)


def _finish(ctx: Context, failed: list[str]) -> UpResult:
    """Wait for every expected engine to register, then sum up."""
    info = cloud.describe_cluster(ctx.region, ctx.name)
    want = expected_engines(ctx, info)
    client_file = ctx.connection_files[0]
    n = 0
    if info.master is not None:  # configure fetched the files from it
        record_master(ctx.name, info.master)
    if want:
        master = info.master
        assert master is not None
        try:
            rc = connect_client(
                client_file, ctx.endpoint(master), n_engines=want,
                timeout=ctx.config.ssh_timeout, revive=lambda ids: _revive(ctx, info, ids),
            )
        except EnginesTimeout:
            _clues(ctx, info)
            raise
        n = len(rc.ids)
        rc.close()
    state.update(ctx.name, expected_engines=want)
    hourly = hourly_cost(ctx, info)
    autostop.apply(ctx, info, hourly)  # the limits the cluster enforces on itself
    return UpResult(
        cluster=info, engines=n, hourly_cost=hourly, failed=failed, client_file=client_file,
    )


def _warn_each(
    ctx: Context, nodes: list[InstanceInfo], look: Callable[[InstanceInfo], list[str]],
    unreachable: str, after: str = "",
) -> None:
    """Warn with each line `look` finds on each node (and `after`), behind the node's
    label; a node it cannot look at is one warning: `unreachable` and why."""
    for inst in nodes:
        try:
            lines = [line + after for line in look(inst)]
        except (ProvisionError, OSError, paramiko.SSHException) as err:
            lines = [f"{unreachable}: {err}"]
        for line in lines:
            ctx.reporter.warn(f"{inst.label}: {line}")


def _clues(ctx: Context, info: ClusterInfo) -> None:
    """Warn with each node's engine logs (and the controller's): why engines are missing."""
    root = ctx.config.remote_root
    _warn_each(ctx, info.nodes,
               lambda i: engines.log_clues(ctx.endpoint(i), root, master=i.role == MASTER),
               "could not read its logs")


def _revive(ctx: Context, info: ClusterInfo, registered: set[int]) -> None:
    """Start again, with a warning saying why, engines that exited before registering
    or that the controller dropped (it holds only `registered`)."""
    root, engine_file = ctx.config.remote_root, ctx.connection_files[1]
    _warn_each(ctx, [i for i in info.nodes if ctx.engines_on(i)],
               lambda i: engines.revive_engines(ctx.endpoint(i), root, ctx.engines_on(i),
                                                engine_file, registered),
               "could not look at its engines", "; started it again")


@locks.exclusive("addnode")
def addnode(
    name: str,
    count: int,
    *,
    bid: float | None = None,
    config: ClusterConfig | None = None,
    reporter: Reporter | None = None,
) -> UpResult:
    """Launch `count` workers whose engines join the running controller."""
    if count < 1:
        raise BadInput(f"-n: must be at least 1 (got {count})")
    ctx = _context(name, config, reporter)
    if bid is not None:
        if bid <= 0:
            raise BadInput(f"--spot-bid: must be a positive number (got {bid})")
        ctx.config = ctx.config.model_copy(update={"spot_bid": bid})
    info, master = _running_master(
        ctx, f"cluster {name!r} has no running master: run `provision up` first"
    )
    refresh_connection_files(ctx, master)
    strategy = configure.strategy()
    strategy.start(ctx)
    failed = _add_workers(ctx, strategy, info, count, None)  # None: check the SSH rule first
    return _finish(ctx, failed)


@locks.exclusive("restart-engines")
def restart_engines(
    name: str, *, config: ClusterConfig | None = None, reporter: Reporter | None = None
) -> int:
    """Fresh engines on every node (e.g. after a network cut); how many run now."""
    ctx = _context(name, config, reporter)
    info = cloud.describe_cluster(ctx.region, name)
    engine_file = ctx.connection_files[1]

    def restart(inst: InstanceInfo) -> int:
        n = ctx.engines_on(inst)
        ep = ctx.endpoint(inst, info.master)
        return engines.restart_engines(ep, ctx.config.remote_root, n, engine_file)

    running = [i for i in info.nodes if ctx.engines_on(i)]
    group = fanout.fan_out(restart, running, key=lambda i: i.label, limit=fanout.MAX_PARALLEL_HOSTS)
    group.raise_for_failures()
    return sum(group.succeeded.values())


@locks.exclusive("down")
def down(
    name: str, *, region: Region | None = None, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Remove everything tagged with the cluster, then the local record (idempotent)."""
    reporter = reporter or Reporter()
    if region is None:
        config = ClusterConfig.model_validate(state.load(name).get("config", {}))
        try:
            region = resolve_region(config)
        except ProvisionError as err:  # e.g. the simulated region is stopped
            raise ProvisionError(f"cannot reach region {config.region!r}: {err}") from err
    removed = cloud.terminate_cluster(
        region, name, instance_ids=state.recent_launches(name), on_step=reporter.note
    )
    left = cloud.leftovers(region, name)
    if any(left.values()):
        raise ProvisionError(f"resources of {name} still exist after down: {left}")
    state.forget(name)
    return removed


@locks.exclusive("watch")
def keep_size(
    name: str, *, config: ClusterConfig | None = None, reporter: Reporter | None = None
) -> int:
    """Replace lost workers (spot interruptions) so the cluster has its configured size.

    Returns how many workers were launched. New engines join the controller, so a
    running search picks them up; its retries already cover the lost tasks.
    """
    ctx = _context(name, config, reporter)
    info, _ = _running_master(
        ctx, f"cluster {name!r} lost its master: run `provision up` to rebuild it"
    )
    shortfall = ctx.config.cluster_size - 1 - len(info.workers)
    if shortfall <= 0:
        return 0
    ctx.reporter.note(f"{name}: {shortfall} worker(s) lost, launching replacements")
    addnode(name, shortfall, config=ctx.config, reporter=ctx.reporter)
    return shortfall
