"""What every configure strategy shares: the interface, the stages, reaching a node.

A strategy brings nodes the cloud launched to "ready" (Python environment,
controller on the master, engines, the cluster's datasets). It never launches
or terminates anything: the orchestrator (`provision.lifecycle`) does, before
and after, and judges the per-node results a strategy returns.
"""

from __future__ import annotations

import concurrent.futures
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from enum import IntEnum
from pathlib import Path

from provision import cloud, state
from provision.cloud.common import MASTER, InstanceInfo
from provision.context import Context
from provision.errors import ProvisionError
from provision.nodes import fanout, remote, setup
from provision.nodes import wheelhouse as wheels

WHEELHOUSE_TIMEOUT_S = 1800  # building the wheelhouse: pip downloads every wheel once

Results = dict[str, BaseException | None]  # node label -> None (ready) or what stopped it


class Step(IntEnum):
    """Where a node is in its pipeline: the `step` of `Reporter.stage`."""

    LAUNCHING = 0
    RUNNING = 1  # waiting for the instance to run
    SSH = 2  # waiting for SSH to answer
    PACKAGES = 3  # Python environment (or the playbook)
    ENGINES = 4  # controller and engines
    READY = 5  # ready, or failed


def stage(ctx: Context, label: str, text: str, step: Step) -> None:
    ctx.reporter.stage(label, text, step=int(step), total=int(Step.READY))


def failed(ctx: Context, label: str, err: BaseException) -> None:
    stage(ctx, label, f"[red]failed[/]: {err}", Step.READY)


class Strategy(ABC):
    """How nodes get configured once they run. One object per `up` (or `addnode`).

    `start` runs before the launch and may begin slow local work (the
    wheelhouse: the two waits overlap); `configure` then brings every node to
    ready and returns each node's outcome, never raising for one node.
    """

    name = ""
    spec: setup.EnvSpec
    _wheelhouse: Future[Path]

    def check(self) -> None:  # noqa: B027 - optional: a strategy may need nothing
        """Before anything is created: `BadInput` if this strategy cannot run here."""

    def start(self, ctx: Context) -> None:
        """Start building the wheelhouse of the client's package versions."""
        self.spec = ctx.env_spec()
        self._wheelhouse = fanout.in_background(
            lambda: wheels.build_wheelhouse(self.spec), name="wheelhouse"
        )

    def wheelhouse(self) -> Path:
        """The wheelhouse, once built (waits for it)."""
        try:
            return self._wheelhouse.result(timeout=WHEELHOUSE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            minutes = WHEELHOUSE_TIMEOUT_S // 60
            raise ProvisionError(
                f"building the wheelhouse took more than {minutes} minutes"
            ) from None
        except Exception as err:  # handed to every node that needs it
            raise ProvisionError(f"building the wheelhouse failed: {err}") from err

    @abstractmethod
    def configure(self, ctx: Context, nodes: Sequence[InstanceInfo]) -> Results:
        """Bring every node to ready; node label -> None, or the error that stopped it."""


class Gateway:
    """The master as the way in to workers without a public address.

    In `up` the master is among the nodes being configured: workers wait until it
    runs and answers SSH (`ready`), or learn that it failed (`failed`). When it is
    not (addnode, a re-run), it is the cluster's running master, looked up once.
    """

    def __init__(self, ctx: Context, *, has_master: bool) -> None:
        self.ctx = ctx
        self._master: Future[InstanceInfo] = Future()
        self._lookup = not has_master
        self._lock = threading.Lock()

    def ready(self, master: InstanceInfo) -> None:
        if not self._master.done():
            self._master.set_result(master)

    def failed(self, err: BaseException) -> None:
        if not self._master.done():
            self._master.set_exception(err)

    def master(self) -> InstanceInfo:
        """The running master with its public address (waits for it in `up`)."""
        with self._lock:
            if self._lookup and not self._master.done():
                found = cloud.describe_cluster(self.ctx.region, self.ctx.name).master
                if found is None:
                    self.failed(ProvisionError("the cluster has no running master"))
                else:
                    self.ready(found)
        cfg = self.ctx.config
        try:
            return self._master.result(timeout=cfg.launch_timeout + cfg.ssh_timeout)
        except concurrent.futures.TimeoutError:
            raise ProvisionError("the master never answered SSH") from None
        except Exception as err:
            raise ProvisionError(
                f"no way in: the node has no public address and the master failed ({err})"
            ) from err


def reach(
    ctx: Context, inst: InstanceInfo, claim: threading.Lock, gateway: Gateway
) -> tuple[InstanceInfo, remote.Endpoint]:
    """Wait for a node to run and answer SSH; the node as it runs, and how to reach it.

    Described again by id once it runs (its public address comes with `running`;
    a tag query may not show a node launched seconds ago). A worker without a
    public address is reached through the master, once that answers.
    """
    try:
        inst, ep = _reach(ctx, inst, claim, gateway)
    except BaseException as err:
        if inst.role == MASTER:
            gateway.failed(err)  # the workers behind it learn at once
        raise
    if inst.role == MASTER:
        gateway.ready(inst)
    return inst, ep


def _reach(
    ctx: Context, inst: InstanceInfo, claim: threading.Lock, gateway: Gateway
) -> tuple[InstanceInfo, remote.Endpoint]:
    stage(ctx, inst.label, "waiting for running", Step.RUNNING)
    if inst.state != "running" or not inst.private_ip:
        cloud.wait_running(ctx.region, [inst.instance_id], timeout=ctx.config.launch_timeout)
        found = cloud.describe_instances(ctx.region, [inst.instance_id])
        inst = found[0] if found else inst
    master = None
    if inst.role != MASTER and not inst.public_ip:
        stage(ctx, inst.label, "waiting for the master (the way in)", Step.SSH)
        master = gateway.master()
    ep = ctx.endpoint(inst, master)
    _claim_address(ctx, ep, inst.instance_id, claim)
    stage(ctx, inst.label, f"waiting for SSH on {ep.host}", Step.SSH)
    remote.wait_for_ssh(ep, timeout=ctx.config.ssh_timeout)
    return inst, ep


def _claim_address(
    ctx: Context, ep: remote.Endpoint, instance_id: str, lock: threading.Lock
) -> None:
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
