"""The orchestrator: the only code that knows the order of steps.

`up` validates everything before it creates anything, reconciles the cluster
against its tags (so a re-run after a crash launches only the shortfall), and
then runs one pipeline per node in its own thread: running -> SSH -> packages ->
controller/engines -> data. A node is configured as soon as it answers, not
after the slowest one. A worker that fails is reported by id and IP and
terminated (or replaced); the cluster record stays consistent because the
cloud's tags are the record.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision import cloud, data, state
from provision.cloud.common import MASTER, WORKER, ClusterInfo, InstanceInfo, LaunchRequest, Region
from provision.config import ClusterConfig
from provision.context import Context, context_for, prepare, resolve_region
from provision.errors import BadInput, ProvisionError
from provision.nodes import engines, remote, setup
from provision.progress import Reporter

STAGES = ("launching", "running", "ssh", "packages", "engines", "ready")


def _remember(ctx: Context) -> None:
    """Cache the settings a later command (connect, addnode, down) needs."""
    state.update(
        ctx.name,
        name=ctx.name,
        config=ctx.config.model_dump(mode="json"),
        vcpus=ctx.type_info.vcpus,
        user=ctx.user,
    )


def _launch(ctx: Context, role: str, count: int, sg: str, *, spot: bool, bid: float | None) -> list[str]:
    if count <= 0:
        return []
    # No zone: cloud.launch tries every zone offering the type, cheapest spot price
    # first, and moves on when one has no capacity. It also warns on an underbid.
    zone = ctx.config.zone
    req = LaunchRequest(
        cluster=ctx.name,
        role=role,
        count=count,
        instance_type=ctx.config.instance_type,
        image_id=ctx.image_id,
        key_name=ctx.config.pair_name,
        security_group_id=sg,
        spot=spot,
        max_price=bid,
        volume_size=ctx.config.volume_size,
        zone=zone,
        subnet_id=ctx.region.subnet_id,
    )
    return cloud.launch(ctx.region, req)


def reconcile(ctx: Context, sg: str, workers_wanted: int) -> ClusterInfo:
    """Launch only what the tags say is missing: one master, `workers_wanted` workers."""
    info = cloud.describe_cluster(ctx.region, ctx.name)
    if any(not i.name for i in info.alive):  # an earlier launch failed before naming them
        cloud.name_unnamed(ctx.region, ctx.name)
    cfg = ctx.config
    if info.master is None:
        ctx.reporter.stage("master", "launching", step=0, total=len(STAGES) - 1)
        _launch(ctx, MASTER, 1, sg, spot=cfg.spot_master and cfg.spot_bid is not None, bid=cfg.spot_bid)
    shortfall = workers_wanted - len(info.workers)
    if shortfall > 0:
        _launch(ctx, WORKER, shortfall, sg, spot=cfg.spot_bid is not None, bid=cfg.spot_bid)
    elif shortfall < 0:
        ctx.reporter.warn(
            f"{len(info.workers)} workers run but {workers_wanted} were asked for: "
            "use `provision removenode` to shrink"
        )
    return cloud.describe_cluster(ctx.region, ctx.name)


def reach(ctx: Context, inst: InstanceInfo, claim: threading.Lock) -> tuple[InstanceInfo, remote.Endpoint]:
    """Wait for a node to run and answer SSH; shared by the Fabric and Ansible paths."""
    label, total = inst.name or inst.instance_id, len(STAGES) - 1
    ctx.reporter.stage(label, "waiting for running", step=1, total=total)
    if inst.state != "running" or not inst.private_ip:
        cloud.wait_running(ctx.region, [inst.instance_id], timeout=ctx.config.launch_timeout)
        inst = cloud.describe_cluster(ctx.region, ctx.name).find(inst.instance_id) or inst
    ep = ctx.endpoint(inst)
    _claim_address(ctx, ep, inst.instance_id, claim)
    ctx.reporter.stage(label, f"waiting for SSH on {ep.host}", step=2, total=total)
    remote.wait_for_ssh(ep, timeout=ctx.config.ssh_timeout)
    return inst, ep


def _claim_address(ctx: Context, ep: remote.Endpoint, instance_id: str, lock: threading.Lock) -> None:
    """Forget the host key of an address that belonged to another instance.

    EC2 reuses private addresses, and a new instance has a new host key: the
    trust-on-first-use record is per instance, not per address.
    """
    with lock:
        owners = state.load(ctx.name).get("address_owners", {})
        if owners.get(ep.host) not in (None, instance_id) and ep.known_hosts is not None:
            remote.forget_host(ep.known_hosts, ep.host)
        owners[ep.host] = instance_id
        state.update(ctx.name, address_owners=owners)


class _Pipeline:
    """Per-node pipelines sharing the wheelhouse and the controller's files."""

    def __init__(self, ctx: Context, replace_failed: bool = False) -> None:
        self.ctx = ctx
        self.replace_failed = replace_failed
        self.spec = setup.client_env_spec(list(ctx.config.packages), ctx.config.remote_root)
        self._wheelhouse: Path | None = None
        self._wheelhouse_error: BaseException | None = None
        self._wheelhouse_done = threading.Event()
        self.controller_ready = threading.Event()
        self.controller_error: BaseException | None = None
        self.results: dict[str, BaseException | None] = {}
        self._lock = threading.Lock()

    def start_wheelhouse(self) -> None:
        """Build the wheelhouse while EC2 launches: the two waits overlap."""

        def build() -> None:
            try:
                self._wheelhouse = setup.build_wheelhouse(self.spec)
            except BaseException as err:  # noqa: BLE001 - handed to every node
                self._wheelhouse_error = err
            finally:
                self._wheelhouse_done.set()

        threading.Thread(target=build, daemon=True, name="wheelhouse").start()

    def wheelhouse(self) -> Path:
        if not self._wheelhouse_done.wait(timeout=1800):
            raise ProvisionError("building the wheelhouse took more than 30 minutes")
        if self._wheelhouse_error is not None:
            raise ProvisionError(f"building the wheelhouse failed: {self._wheelhouse_error}")
        assert self._wheelhouse is not None
        return self._wheelhouse

    def node(self, inst: InstanceInfo, controller: bool) -> None:
        """running -> ssh -> packages -> controller/engines for one node."""
        ctx, cfg = self.ctx, self.ctx.config
        label = inst.name or inst.instance_id
        total = len(STAGES) - 1
        try:
            inst, ep = reach(ctx, inst, self._lock)
            ctx.reporter.stage(label, "installing packages", step=3, total=total)
            setup.setup_node(ep, self.spec, self.wheelhouse())
            if controller:
                ctx.reporter.stage(label, "starting controller", step=4, total=total)
                engines.start_controller(ep, cfg.remote_root, inst.private_ip or ep.host)
                engines.fetch_connection_files(ep, cfg.remote_root, state.cluster_dir(ctx.name))
                self.controller_ready.set()
            else:
                ctx.reporter.stage(label, "waiting for controller", step=4, total=total)
                if not self.controller_ready.wait(timeout=cfg.ssh_timeout + cfg.launch_timeout + 1800):
                    raise ProvisionError("the controller never became ready")
                if self.controller_error is not None:
                    raise ProvisionError("the master failed, so engines cannot start")
            n = ctx.engines_on(inst)
            if n:
                ctx.reporter.stage(label, f"starting {n} engines", step=4, total=total)
                engines.start_engines(ep, cfg.remote_root, n, ctx.connection_files[1])
            ship_recorded_data(ctx, [inst])
            ctx.reporter.stage(label, f"ready ({inst.instance_id}, {ep.host})", step=total, total=total)
            self._done(label, None)
        except BaseException as err:  # noqa: BLE001 - reported per node
            if controller:
                self.controller_error = err
                self.controller_ready.set()
            ctx.reporter.stage(label, f"[red]failed[/]: {err}", step=total, total=total)
            self._done(label, err)

    def _done(self, label: str, err: BaseException | None) -> None:
        with self._lock:
            self.results[label] = err

    def run(self, nodes: list[InstanceInfo]) -> dict[str, BaseException | None]:
        """Run every node's pipeline in a daemon thread, so Ctrl-C stops `up` at once."""
        master = self.ctx.config and next((n for n in nodes if n.role == MASTER), None)
        if master is None and not self.controller_ready.is_set():
            # Workers joining an existing controller (addnode, or a re-run of up).
            self.controller_ready.set()
        threads = [
            threading.Thread(target=self.node, args=(n, n.role == MASTER), daemon=True, name=n.instance_id)
            for n in nodes
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
        return dict(self.results)


def _fail_nodes(ctx: Context, info: ClusterInfo, results: dict[str, BaseException | None]) -> list[str]:
    """Terminate failed workers, never half-configured ones left billing."""
    failed = [label for label, err in results.items() if err is not None]
    doomed = []
    for label in failed:
        inst = info.find(label)
        if inst is not None and inst.role == WORKER:
            ctx.reporter.warn(f"{label} ({inst.instance_id}, {inst.private_ip}) failed: {results[label]}; terminating it")
            doomed.append(inst.instance_id)
    if doomed:
        cloud.terminate_instances(ctx.region, doomed, wait=False)
    return failed


@dataclass
class UpResult:
    """What `up` did, for the CLI to print and tests to check."""

    cluster: ClusterInfo
    engines: int
    hourly_cost: float | None
    failed: list[str]
    client_file: Path


def up(config: ClusterConfig, reporter: Reporter | None = None, *, replace_failed: bool = False,
       configure_with: str = "fabric") -> UpResult:
    """Bring the cluster to the configured size with engines running (idempotent).

    `configure_with`: "fabric" (built in) or "ansible" (``ansible/site.yml``, same result).
    """
    if configure_with not in ("fabric", "ansible"):
        raise BadInput(f"--configure-with: must be fabric or ansible (got {configure_with!r})")
    if configure_with == "ansible":
        _check_ansible()
    ctx = prepare(config, reporter)
    _remember(ctx)
    pipeline = _Pipeline(ctx, replace_failed)
    pipeline.start_wheelhouse()
    sg = cloud.ensure_security_group(ctx.region, ctx.name, ssh_cidr=ctx.ssh_cidr)
    cloud.ensure_key_pair(ctx.region, ctx.name, ctx.config.pair_name, ctx.public_key)
    info = reconcile(ctx, sg, config.cluster_size - 1)
    if configure_with == "ansible":
        results = _configure_with_ansible(ctx, pipeline, info.nodes)
    else:
        results = pipeline.run(info.nodes)
    failed = _settle(ctx, pipeline, info, results)
    return _finish(ctx, failed)


def _check_ansible() -> None:
    """Before anything is created: `--configure-with ansible` needs ansible-playbook."""
    from provision.nodes import ansible_run

    try:
        ansible_run.find_playbook_command()
    except ansible_run.AnsibleError as err:
        raise BadInput(f"--configure-with ansible: {err}") from err


def _configure_with_ansible(ctx: Context, pipeline: _Pipeline, nodes: list[InstanceInfo]) -> dict[str, BaseException | None]:
    """The Ansible path: each node waits for running and SSH in its own thread, then
    one ansible/site.yml run configures every node that answered (packages,
    controller, engines, data), to the layout the Fabric path gives."""
    from provision import inventory
    from provision.nodes import ansible_run

    cfg, total = ctx.config, len(STAGES) - 1
    results: dict[str, BaseException | None] = {}
    lock, claim = threading.Lock(), threading.Lock()

    def reach_one(inst: InstanceInfo) -> None:
        label = inst.name or inst.instance_id
        try:
            reach(ctx, inst, claim)
            ctx.reporter.stage(label, "waiting for the playbook", step=3, total=total)
            err = None
        except BaseException as e:  # noqa: BLE001 - reported per node
            ctx.reporter.stage(label, f"[red]failed[/]: {e}", step=total, total=total)
            err = e
        with lock:
            results[label] = err

    threads = [threading.Thread(target=reach_one, args=(n,), daemon=True, name=n.instance_id) for n in nodes]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
    reached = {label for label, err in results.items() if err is None}
    if not reached:
        return results
    info = cloud.describe_cluster(ctx.region, ctx.name)
    doc = inventory.build(ctx, info, spec=pipeline.spec, wheelhouse=pipeline.wheelhouse(), only=reached)
    run = ansible_run.run_playbook(
        doc, on_progress=lambda host, text: ctx.reporter.stage(host, text, step=3, total=total),
    )
    for label in sorted(reached):
        inst = info.find(label)
        err = run.error_for(label, (inst.ssh_address(ctx.region.use_private_ip) or "") if inst else "")
        results[label] = err
        if err is not None:
            ctx.reporter.stage(label, f"[red]failed[/]: {err}", step=total, total=total)
        elif inst is not None:
            ctx.reporter.stage(label, f"ready ({inst.instance_id}, {inst.private_ip})", step=total, total=total)
    master = info.master
    master_label = (master.name or master.instance_id) if master else ""
    if master is not None and master_label in reached and results[master_label] is None:
        engines.fetch_connection_files(ctx.endpoint(master), cfg.remote_root, state.cluster_dir(ctx.name))
    return results


def _settle(ctx: Context, pipeline: _Pipeline, info: ClusterInfo, results: dict[str, BaseException | None]) -> list[str]:
    master = info.master
    if master is not None and results.get(master.name or master.instance_id) is not None:
        err = results[master.name or master.instance_id]
        raise ProvisionError(
            f"master {master.instance_id} ({master.private_ip}) failed: {err}. "
            f"Run `provision up` again to retry, or `provision down {ctx.name}` to remove everything."
        )
    failed = _fail_nodes(ctx, info, results)
    if failed and pipeline.replace_failed:
        ctx.reporter.note(f"replacing {len(failed)} failed node(s)")
        sg = info.security_group_id or cloud.ensure_security_group(ctx.region, ctx.name, ssh_cidr=ctx.ssh_cidr)
        new_ids = _launch(ctx, WORKER, len(failed), sg, spot=ctx.config.spot_bid is not None, bid=ctx.config.spot_bid)
        fresh = cloud.describe_cluster(ctx.region, ctx.name)
        again = pipeline.run([i for i in fresh.alive if i.instance_id in new_ids])
        failed = _fail_nodes(ctx, fresh, {k: v for k, v in again.items() if k in {i.name or i.instance_id for i in fresh.alive if i.instance_id in new_ids}})
    return failed


def expected_engines(ctx: Context, info: ClusterInfo) -> int:
    return sum(ctx.engines_on(i) for i in info.nodes)


def hourly_cost(ctx: Context, info: ClusterInfo) -> float | None:
    """Current spot price for spot nodes, the bid as an upper bound when unknown."""
    try:
        prices = {p.zone: p.current for p in cloud.spot_price_history(ctx.region, ctx.config.instance_type, days=0.1)}
    except cloud.CloudError:
        prices = {}
    total = 0.0
    for inst in info.nodes:
        if inst.lifecycle == "spot":
            total += prices.get(inst.zone, ctx.config.spot_bid or 0.0)
        elif ctx.type_info.on_demand_price is not None:
            total += ctx.type_info.on_demand_price
        else:
            return None
    return total


def _finish(ctx: Context, failed: list[str]) -> UpResult:
    from provision.client import connect_client

    info = cloud.describe_cluster(ctx.region, ctx.name)
    want = expected_engines(ctx, info)
    client_file = ctx.connection_files[0]
    if want:
        master = info.master
        assert master is not None
        rc = connect_client(client_file, ctx.endpoint(master), n_engines=want, timeout=ctx.config.ssh_timeout)
        n = len(rc.ids)
        rc.close()
    else:
        n = 0
    state.update(ctx.name, expected_engines=want)
    return UpResult(cluster=info, engines=n, hourly_cost=hourly_cost(ctx, info), failed=failed, client_file=client_file)


def _context(name: str, config: ClusterConfig | None, reporter: Reporter | None) -> Context:
    """An existing cluster's context: from `config` when given, else its local record."""
    return context_for(config if config is not None else name, reporter=reporter)


def addnode(name: str, count: int, *, bid: float | None = None, config: ClusterConfig | None = None,
            reporter: Reporter | None = None) -> UpResult:
    """Launch `count` workers whose engines join the running controller."""
    if count < 1:
        raise BadInput(f"-n: must be at least 1 (got {count})")
    ctx = _context(name, config, reporter)
    if bid is not None:
        if bid <= 0:
            raise BadInput(f"--spot-bid: must be a positive number (got {bid})")
        ctx.config = ctx.config.model_copy(update={"spot_bid": bid})
    info = cloud.describe_cluster(ctx.region, name)
    if info.master is None:
        raise ProvisionError(f"cluster {name!r} has no running master: run `provision up` first")
    if not ctx.connection_files[1].exists():
        engines.fetch_connection_files(ctx.endpoint(info.master), ctx.config.remote_root, state.cluster_dir(name))
    sg = info.security_group_id or cloud.ensure_security_group(ctx.region, name, ssh_cidr=ctx.ssh_cidr)
    pipeline = _Pipeline(ctx)
    pipeline.start_wheelhouse()
    new_ids = _launch(ctx, WORKER, count, sg, spot=ctx.config.spot_bid is not None, bid=ctx.config.spot_bid)
    fresh = cloud.describe_cluster(ctx.region, name)
    new = [i for i in fresh.alive if i.instance_id in new_ids]
    failed = _fail_nodes(ctx, fresh, pipeline.run(new))
    return _finish(ctx, failed)


def removenode(name: str, node: str, *, config: ClusterConfig | None = None, reporter: Reporter | None = None) -> InstanceInfo:
    """Stop a worker's engines (their tasks are retried elsewhere), then terminate it."""
    ctx = _context(name, config, reporter)
    info = cloud.describe_cluster(ctx.region, name)
    inst = info.find(node)
    if inst is None:
        raise BadInput(f"NODE: no node {node!r} in cluster {name!r} (have: {', '.join(i.name for i in info.nodes)})")
    if inst.role == MASTER:
        raise BadInput(f"NODE: {node} is the master; use `provision down {name}` to remove the cluster")
    try:
        engines.stop_engines(ctx.endpoint(inst), ctx.config.remote_root)
    except Exception as err:  # noqa: BLE001 - the node is going anyway
        ctx.reporter.warn(f"could not stop engines on {node} cleanly: {err}")
    cloud.terminate_instances(ctx.region, [inst.instance_id], wait=True, timeout=ctx.config.launch_timeout)
    state.update(name, expected_engines=max(0, state.load(name).get("expected_engines", 0) - ctx.engines_on(inst)))
    return inst


def restart_engines(name: str, *, config: ClusterConfig | None = None, reporter: Reporter | None = None) -> int:
    ctx = _context(name, config, reporter)
    info = cloud.describe_cluster(ctx.region, name)
    group = remote.on_hosts(
        lambda ep: engines.restart_engines(ep, ctx.config.remote_root, ctx.engines_on(info.find(ep.name)), ctx.connection_files[1]),
        [ctx.endpoint(i) for i in info.nodes if ctx.engines_on(i)],
    )
    group.raise_for_failures()
    return sum(group.succeeded.values())


def down(name: str, *, region: Region | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Remove everything tagged with the cluster, then the local record (idempotent)."""
    reporter = reporter or Reporter()
    if region is None:
        config = ClusterConfig.model_validate(state.load(name).get("config", {}))
        try:
            region = resolve_region(config)
        except ProvisionError as err:  # e.g. the simulated region is stopped
            raise ProvisionError(f"cannot reach region {config.region!r}: {err}") from err
    removed = cloud.terminate_cluster(region, name, on_step=lambda text: reporter.note(text))
    left = cloud.leftovers(region, name)
    if any(left.values()):
        raise ProvisionError(f"resources of {name} still exist after down: {left}")
    state.forget(name)
    return removed


def connect(name: str, *, timeout: float = 120, n_engines: int | None = None) -> Any:
    """A ready `ipyparallel.Client` for a running cluster, through an SSH tunnel."""
    from provision.client import connect_client

    ctx = context_for(name)
    info = cloud.describe_cluster(ctx.region, name)
    if info.master is None:
        raise ProvisionError(f"cluster {name!r} has no running master")
    client_file = ctx.connection_files[0]
    if not client_file.exists():
        engines.fetch_connection_files(ctx.endpoint(info.master), ctx.config.remote_root, state.cluster_dir(name))
    want = n_engines if n_engines is not None else expected_engines(ctx, info)
    return connect_client(client_file, ctx.endpoint(info.master), n_engines=want, timeout=timeout)


def ship_recorded_data(ctx: Context, nodes: list[InstanceInfo]) -> None:
    """Give new nodes the datasets already put on the cluster (addnode)."""
    for entry in state.load(ctx.name).get("datasets", {}).values():
        data.ship(ctx, nodes, Path(entry["local_dir"]), entry["digest"])


def keep_size(name: str, *, config: ClusterConfig | None = None, reporter: Reporter | None = None) -> int:
    """Replace lost workers (spot interruptions) so the cluster has its configured size.

    Returns how many workers were launched. New engines join the controller, so a
    running search picks them up; its retries already cover the lost tasks.
    """
    ctx = _context(name, config, reporter)
    info = cloud.describe_cluster(ctx.region, name)
    if info.master is None:
        raise ProvisionError(f"cluster {name!r} lost its master: run `provision up` to rebuild it")
    shortfall = ctx.config.cluster_size - 1 - len(info.workers)
    if shortfall <= 0:
        return 0
    ctx.reporter.note(f"{name}: {shortfall} worker(s) lost, launching replacements")
    addnode(name, shortfall, config=ctx.config, reporter=ctx.reporter)
    return shortfall
