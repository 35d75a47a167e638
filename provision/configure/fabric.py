"""The Fabric strategy: one pipeline per node, all at once, over SSH.

running -> SSH -> cluster key -> packages -> controller (master) or wait for it
(workers) -> engines -> data. A node is configured as soon as it answers, not
after the slowest one; workers start their engines once the master's controller
is up, and learn at once if the master failed. The master makes the cluster's
own SSH key as soon as it answers; each worker authorises it, so the master can
hand workers what the laptop sent it once (`provision.nodes.relay`): the
wheelhouse, datasets, and its installed environment, so that only the master
installs packages (`provision.nodes.envcopy`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from functools import partial

from fabric import Connection

from provision import data, state
from provision.cloud.common import MASTER, InstanceInfo
from provision.configure.base import Gateway, Results, Step, Strategy, failed, reach, stage
from provision.context import Context
from provision.errors import ProvisionError
from provision.nodes import engines, envcopy, fanout, relay, setup
from provision.nodes.remote import Endpoint, NodeError
from provision.nodes.transfer import PUSH_TIMEOUT_S

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
        # The master's endpoint and the cluster key's public half (see `_cluster_key`).
        self.key: Future[tuple[Endpoint, str]] = Future()
        self.key_lock = threading.Lock()
        self.has_master = has_master
        self.wheels: Future[bool] = Future()  # the master holds the wheelhouse (True) or won't
        self.env: Future[bool] = Future()  # the master's environment is complete (True) or won't
        if not has_master:
            self.controller.set_result(None)
            self.wheels.set_result(True)  # the running master's: `relay.forward_wheels` checks
            self.env.set_result(True)  # and `envcopy.copy_env` checks its digest

    def node(self, inst: InstanceInfo) -> BaseException | None:
        """running -> ssh -> packages -> controller/engines -> data for one node."""
        ctx, cfg, label = self.ctx, self.ctx.config, inst.label
        is_master = inst.role == MASTER
        try:
            inst, ep = reach(ctx, inst, self.claim, self.gateway)
            fetch = fetch_env = None
            if is_master:
                self.key.set_result((ep, relay.ensure_key(ep, cfg.remote_root)))
            else:
                stage(ctx, label, "authorising the cluster key", Step.SSH)
                master_ep, key = self._cluster_key()
                relay.authorize(ep, master_ep, inst.private_ip or ep.host, key, cfg.remote_root)
                hop = relay.Hop(label, inst.private_ip or ep.host, ctx.user)
                fetch = partial(self._wheels_from_master, master_ep, hop)
                fetch_env = partial(self._env_from_master, master_ep, hop)
            stage(ctx, label, "installing packages", Step.PACKAGES)
            told = partial(_settle, self.wheels) if is_master else None
            done = setup.setup_node(
                ep, self.strategy.spec, self.strategy.wheelhouse(), self.python,
                fetch_wheels=fetch, on_wheels=told, fetch_env=fetch_env,
                on_env=partial(_settle, self.env) if is_master else None)
            if done.copied:
                stage(ctx, label, "environment copied from the master", Step.PACKAGES)
            if done.skipped:  # e.g. a baked image: its environment is the client's
                stage(ctx, label, "install skipped: the environment is there", Step.PACKAGES)
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
            if is_master and not self.key.done():
                self.key.set_exception(err)
            if is_master:
                _settle(self.wheels, False)
                _settle(self.env, False)
            failed(ctx, label, err)
            return err

    def _cluster_key(self) -> tuple[Endpoint, str]:
        """The master's endpoint and the cluster key: made by the master's own pipeline
        in `up`, else (addnode, replacements) asked of the running master once."""
        with self.key_lock:
            if not self.has_master and not self.key.done():
                master_ep = self.ctx.endpoint(self.gateway.master())
                self.key.set_result((master_ep, relay.ensure_key(
                    master_ep, self.ctx.config.remote_root)))
        cfg = self.ctx.config
        done, _ = wait([self.key], timeout=cfg.ssh_timeout + cfg.launch_timeout)
        if not done:
            raise ProvisionError("the master never answered SSH to make the cluster key")
        if self.key.exception() is not None:
            raise ProvisionError("the master failed, so it cannot relay to this node")
        return self.key.result()

    def _wheels_from_master(self, master_ep: Endpoint, hop: relay.Hop) -> bool:
        """A worker's wheelhouse from the master over the cluster network, once the master
        has it; False (this machine pushes it) when the master will not have it."""
        spec = self.strategy.spec
        return self._from_master(
            hop, self.wheels, "wheelhouse", setup.INSTALL_TIMEOUT_S,
            lambda: relay.forward_wheels(master_ep, hop, spec.remote_root, spec.digest),
            "the master could not forward the wheelhouse ({err}); sending it from here")

    def _env_from_master(self, master_ep: Endpoint, hop: relay.Hop, worker: Connection) -> bool:
        """The master's installed environment into this worker, once the master has it
        (`envcopy`); False, and the worker installs, when it will not or the copy failed."""
        spec = self.strategy.spec
        return self._from_master(
            hop, self.env, "environment", PUSH_TIMEOUT_S + setup.INSTALL_TIMEOUT_S,
            lambda: envcopy.copy_env(master_ep, hop, worker, spec.remote_root, spec.digest),
            "could not copy the master's environment ({err}); installing on the node instead")

    def _from_master(self, hop: relay.Hop, ready: Future[bool], what: str, patience: float,
                     fetch: Callable[[], bool], warning: str) -> bool:
        """`fetch()` once the master has `what` (`ready`); False when it will not, or
        when the fetch failed (with `warning`): the worker then gets it another way."""
        stage(self.ctx, hop.name, f"waiting for the master's {what}", Step.PACKAGES)
        done, _ = wait([ready], timeout=patience + self.ctx.config.ssh_timeout)
        if not done or not ready.result():
            return False
        stage(self.ctx, hop.name, f"{what} from the master", Step.PACKAGES)
        try:
            return fetch()
        except NodeError as err:  # slower, but the node still gets its packages
            self.ctx.reporter.warn(f"{hop.name}: " + warning.format(err=err))
            return False

    def _wait_for_controller(self) -> None:
        cfg = self.ctx.config
        patience = cfg.ssh_timeout + cfg.launch_timeout + CONTROLLER_SETUP_S
        done, _ = wait([self.controller], timeout=patience)
        if not done:
            raise ProvisionError("the controller never became ready")
        if self.controller.exception() is not None:
            raise ProvisionError("the master failed, so engines cannot start")


def _settle(future: Future[bool], value: bool) -> None:
    """Set `future` unless already set (the first word counts)."""
    if not future.done():
        future.set_result(value)
