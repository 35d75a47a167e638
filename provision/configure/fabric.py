"""The Fabric strategy: one pipeline per node, all at once, over SSH.

running -> SSH -> packages -> controller (master) or wait for it (workers) ->
engines -> data. A node is configured as soon as it answers, not after the
slowest one; workers start their engines once the master's controller is up,
and learn at once if the master failed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, wait

from provision import data, state
from provision.cloud.common import MASTER, InstanceInfo
from provision.configure.base import Gateway, Results, Step, Strategy, failed, reach, stage
from provision.context import Context
from provision.errors import ProvisionError
from provision.nodes import engines, fanout, setup

# A worker waits for the master's controller as long as the master may take to
# launch, answer SSH and install packages (the wheelhouse's own limit).
CONTROLLER_SETUP_S = 1800


class FabricStrategy(Strategy):
    """Configure every node over Fabric (the default)."""

    name = "fabric"

    def configure(self, ctx: Context, nodes: Sequence[InstanceInfo]) -> Results:
        """See `Strategy.configure`. Without a master among `nodes`, workers join the
        controller already running (addnode, or a re-run of up)."""
        run = _Run(ctx, self, has_master=any(n.role == MASTER for n in nodes))
        return dict(fanout.fan_out(run.node, list(nodes), key=lambda n: n.label))


class _Run:
    """One configure call: the controller's readiness and the address claims, shared."""

    def __init__(self, ctx: Context, strategy: Strategy, *, has_master: bool) -> None:
        self.ctx = ctx
        self.strategy = strategy
        self.claim = threading.Lock()
        self.gateway = Gateway(ctx, has_master=has_master)
        self.controller: Future[None] = Future()
        self.python = setup.PythonGate()  # one verdict on getting the client's Python
        if not has_master:
            self.controller.set_result(None)

    def node(self, inst: InstanceInfo) -> BaseException | None:
        """running -> ssh -> packages -> controller/engines -> data for one node."""
        ctx, cfg, label = self.ctx, self.ctx.config, inst.label
        is_master = inst.role == MASTER
        try:
            inst, ep = reach(ctx, inst, self.claim, self.gateway)
            stage(ctx, label, "installing packages", Step.PACKAGES)
            setup.setup_node(ep, self.strategy.spec, self.strategy.wheelhouse(), self.python)
            if is_master:
                stage(ctx, label, "starting controller", Step.ENGINES)
                engines.start_controller(ep, cfg.remote_root, inst.private_ip or ep.host)
                engines.fetch_connection_files(ep, cfg.remote_root, state.cluster_dir(ctx.name))
                self.controller.set_result(None)
            else:
                stage(ctx, label, "waiting for controller", Step.ENGINES)
                self._wait_for_controller()
            n = ctx.engines_on(inst)
            if n:
                stage(ctx, label, f"starting {n} engines", Step.ENGINES)
                engines.start_engines(ep, cfg.remote_root, n, ctx.connection_files[1])
            data.ship_recorded(ctx, [inst])
            stage(ctx, label, f"ready ({inst.instance_id}, {ep.host})", Step.READY)
            return None
        except BaseException as err:  # noqa: BLE001 - reported per node
            if is_master and not self.controller.done():
                self.controller.set_exception(err)
            failed(ctx, label, err)
            return err

    def _wait_for_controller(self) -> None:
        cfg = self.ctx.config
        patience = cfg.ssh_timeout + cfg.launch_timeout + CONTROLLER_SETUP_S
        done, _ = wait([self.controller], timeout=patience)
        if not done:
            raise ProvisionError("the controller never became ready")
        if self.controller.exception() is not None:
            raise ProvisionError("the master failed, so engines cannot start")
