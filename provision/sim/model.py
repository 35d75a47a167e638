"""AWS's timing and consistency, grafted onto moto's in-process EC2 backend.

moto answers as a perfectly consistent, instant EC2. AWS does not (see "Eventual
consistency in the Amazon EC2 API" and "Instance lifecycle" in its docs):

- RunInstances returns instances `pending`; they turn `running` seconds later,
  and only then get their public address (the private one exists at launch);
- TerminateInstances turns them `shutting-down`, `terminated` seconds later;
- a new instance, security group or key pair may be unknown to the API for a
  moment: describe calls, CreateTags, AuthorizeSecurityGroupIngress, a launch
  naming the group and TerminateInstances answer `InvalidInstanceID.NotFound`,
  `InvalidGroup.NotFound` or `InvalidKeyPair.NotFound`, and filtered describes
  leave it out;
- DeleteSecurityGroup fails with `DependencyViolation` while any instance that
  is not yet `terminated` uses the group;
- StopInstances turns them `stopping`, `stopped` seconds later (the public
  address is released); StartInstances `pending`, then `running` with a new one;
  a one-time spot instance cannot be stopped (`UnsupportedOperation`);
- public addresses come from the sim's public plane, not moto's random ones.

Other modules graft more (`spot`, `images`) with `patch`, which stacks: each
patch wraps whatever the method is when it is installed. `request()` gives a
backend patch the parameters of the API call being served, for what moto's
response layer drops (InstanceMarketOptions' SpotOptions, NoReboot).

The daemon calls `install()` once, then `tick()` on every poll to move due
transitions along. Patches are on moto's `EC2Backend` class: the daemon is the
only process that imports them.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from provision.sim.state import REGION_NAME, Timing

log = logging.getLogger("provision.sim.model")

# (message, code) of an instance's StateReason, as AWS words them.
SPOT_REASON = ("Server.SpotInstanceTermination: Spot instance termination",
               "Server.SpotInstanceTermination")
OS_SHUTDOWN_REASON = ("Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                      "Client.InstanceInitiatedShutdown")
STATES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64,
          "stopped": 80}
_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "request", default=None)


def backend() -> Any:
    """moto's EC2 backend of the sim's region (the daemon's server serves it)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    return ec2_backends[DEFAULT_ACCOUNT_ID][REGION_NAME]


def all_instances() -> Iterator[Any]:
    """Every instance moto holds, hidden ones included (the watcher sees the truth)."""
    for r in list(backend().reservations.values()):
        yield from list(r.instances)


def find_instance(instance_id: str | None) -> Any:
    return next((i for i in all_instances() if i.id == instance_id), None)


def set_state(inst: Any, name: str) -> None:
    inst._state.name, inst._state.code = name, STATES[name]


def set_reason(inst: Any, reason: tuple[str, str]) -> None:
    """The instance's StateReason (message, code), e.g. `SPOT_REASON`."""
    inst.state_reason.message, inst.state_reason.code = reason


def request() -> dict[str, Any]:
    """The parameters of the API call being served (see `keep_params`), {} outside one."""
    return _request.get() or {}


class Model:
    """The clock and the memory behind the patched backend methods."""

    def __init__(self, timing: Timing, public_pool: list[str], seed: int | None = None) -> None:
        self.timing = timing
        self.pool = public_pool
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.visible_at: dict[str, float] = {}  # resource id or "key:NAME" -> monotonic time
        self.due_running: dict[str, tuple[float, Any]] = {}  # instance id -> (when, Instance)
        self.due_terminated: dict[str, tuple[float, Any]] = {}
        self.due_stopped: dict[str, tuple[float, Any]] = {}
        self.public: dict[str, str] = {}  # instance id -> its public address
        self.cursor = 0  # where in the public pool the next address is looked for
        self.reboots: set[str] = set()  # instances RebootInstances asked to reboot

    def _after(self, rng: tuple[float, float]) -> float:
        return time.monotonic() + self.rng.uniform(*rng)

    # --- visibility ---------------------------------------------------------------

    def created(self, rid: str) -> None:
        if self.timing.not_found[1] > 0:
            with self.lock:
                self.visible_at[rid] = self._after(self.timing.not_found)

    def hidden(self, rid: str) -> bool:
        t = self.visible_at.get(rid)
        return t is not None and time.monotonic() < t

    # --- instance lifecycle ----------------------------------------------------------

    def launched(self, instances: list[Any]) -> None:
        with self.lock:
            for inst in instances:
                nic = inst.nics[0]
                nic.public_ip = None  # moto's own random one is not ours
                inst.sim_wants_public = str(nic.public_ip_auto_assign).lower() == "true"
                self.created(inst.id)
                self.pending(inst)

    def pending(self, inst: Any) -> None:
        """`pending` for a few seconds (launch, start), then `running`."""
        with self.lock:
            if self.timing.pending[1] > 0:
                set_state(inst, "pending")
                self.due_running[inst.id] = (self._after(self.timing.pending), inst)
            else:
                self._running(inst)

    def _release_public(self, inst: Any) -> None:
        self.public.pop(inst.id, None)
        inst.nics[0].public_ip = None

    def _running(self, inst: Any) -> None:
        set_state(inst, "running")
        if getattr(inst, "sim_wants_public", False):
            # Round the pool: an address just released is the last to be handed out again.
            used = set(self.public.values())
            free = [a for a in self.pool[self.cursor:] + self.pool[:self.cursor] if a not in used]
            if not free:
                log.warning("%s: the public pool is exhausted; no public address", inst.id)
                return
            self.public[inst.id] = inst.nics[0].public_ip = free[0]
            self.cursor = (self.pool.index(free[0]) + 1) % len(self.pool)

    def terminated(self, result: list[tuple[Any, Any]]) -> None:
        """After moto terminated: AWS's `shutting-down` first, and the public IP released."""
        with self.lock:
            for inst, previous in result:
                self._release_public(inst)
                self.due_running.pop(inst.id, None)
                self.due_stopped.pop(inst.id, None)
                if previous.name == "terminated" and inst.id not in self.due_terminated:
                    continue
                if self.timing.shutting_down[1] > 0:
                    set_state(inst, "shutting-down")
                    if inst.id not in self.due_terminated:
                        when = self._after(self.timing.shutting_down)
                        self.due_terminated[inst.id] = (when, inst)

    def stopped(self, result: list[tuple[Any, Any]]) -> None:
        """After moto stopped: `stopping` first (as long as shutting-down lasts), no public IP."""
        with self.lock:
            for inst, _ in result:
                self._release_public(inst)
                self.due_running.pop(inst.id, None)
                if self.timing.shutting_down[1] > 0:
                    set_state(inst, "stopping")
                    self.due_stopped[inst.id] = (self._after(self.timing.shutting_down), inst)

    def take_reboots(self) -> set[str]:
        with self.lock:
            asked, self.reboots = self.reboots, set()
        return asked

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            for due, before, after in ((self.due_running, "pending", None),
                                       (self.due_terminated, "shutting-down", "terminated"),
                                       (self.due_stopped, "stopping", "stopped")):
                for iid, (when, inst) in list(due.items()):
                    if now < when:
                        continue
                    del due[iid]
                    if inst.state != before:
                        continue
                    if after is None:
                        self._running(inst)
                    else:
                        set_state(inst, after)
            self.visible_at = {k: t for k, t in self.visible_at.items() if t > now}


_model: Model | None = None


def current() -> Model:
    assert _model is not None, "model.install() first"
    return _model


def patch(cls: type, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Replace cls.name by the decorated function, which gets the method it replaces first.

    Patches stack (a second one wraps the first); each module installs its own once.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        orig = getattr(cls, name)

        @functools.wraps(orig)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            return fn(orig, self, *args, **kwargs)

        setattr(cls, name, wrapper)
        return fn

    return deco


def keep_params(cls: type, name: str, *params: str) -> None:
    """Let backend patches see `params` of the calls the response method `name` serves."""

    @patch(cls, name)
    def serve(orig: Callable[..., Any], self: Any) -> Any:
        token = _request.set({p: self._get_param(p) for p in params})
        try:
            return orig(self)
        finally:
            _request.reset(token)


def install(model: Model) -> None:
    """Make `model` the one the patched moto consults (patches once per process)."""
    global _model
    first = _model is None
    _model = model
    if first:
        _install_patches()


def _install_patches() -> None:  # noqa: C901 - one place lists every patched call
    from moto.ec2 import exceptions as ex
    from moto.ec2.models import EC2Backend

    @patch(EC2Backend, "run_instances")
    def run_instances(orig: Callable[..., Any], self: Any, *a: Any, **kw: Any) -> Any:
        # moto invents a group for an unknown id in NetworkInterfaces; AWS refuses.
        for nic in kw.get("nics") or []:
            for gid in nic.get("Groups") or []:
                if self.get_security_group_from_id(gid) is None:
                    raise ex.InvalidSecurityGroupNotFoundError(gid)
        reservation = orig(self, *a, **kw)
        current().launched(reservation.instances)
        return reservation

    @patch(EC2Backend, "terminate_instances")
    def terminate_instances(orig: Callable[..., Any], self: Any, ids: list[str]) -> Any:
        result = orig(self, ids)
        current().terminated(result)
        return result

    def those(self: Any, ids: list[str], verb: str, allowed: tuple[str, ...], todo: str) -> Any:
        """The instances in state `todo` (the others need nothing); refuse any not `allowed`."""
        insts = self.get_multi_instances_by_id(ids)
        for inst in insts:
            if inst.state not in allowed:
                raise ex.EC2ClientError("IncorrectInstanceState", f"The instance '{inst.id}' "
                                        f"is not in a state from which it can be {verb}.")
        return [i.id for i in insts if i.state == todo]

    @patch(EC2Backend, "stop_instances")
    def stop_instances(orig: Callable[..., Any], self: Any, ids: list[str]) -> Any:
        running = those(self, ids, "stopped", ("running", "stopping", "stopped"), "running")
        result = orig(self, running) if running else []
        current().stopped(result)
        return result

    @patch(EC2Backend, "start_instances")
    def start_instances(orig: Callable[..., Any], self: Any, ids: list[str]) -> Any:
        stopped = those(self, ids, "started", ("stopped", "pending", "running"), "stopped")
        result = orig(self, stopped) if stopped else []
        for inst, _ in result:
            inst.nics[0].public_ip = None  # a new one when running, from the sim's pool
            current().pending(inst)
        return result

    @patch(EC2Backend, "reboot_instances")
    def reboot_instances(orig: Callable[..., Any], self: Any, ids: list[str]) -> Any:
        insts = self.get_multi_instances_by_id(ids)  # moto's would "start" a stopped one
        with current().lock:
            current().reboots.update(i.id for i in insts if i.state == "running")
        return insts

    @patch(EC2Backend, "all_reservations")
    def all_reservations(orig: Callable[..., Any], self: Any, filters: Any = None) -> Any:
        m = current()
        out = []
        for r in orig(self, filters):  # copies: rebinding .instances is safe
            r.instances = [i for i in r.instances if not m.hidden(i.id)]
            if r.instances:
                out.append(r)
        return out

    @patch(EC2Backend, "create_security_group")
    def create_security_group(orig: Callable[..., Any], self: Any, *a: Any, **kw: Any) -> Any:
        group = orig(self, *a, **kw)
        current().created(group.id)
        return group

    @patch(EC2Backend, "get_security_group_from_id")
    def get_security_group_from_id(orig: Callable[..., Any], self: Any, gid: str) -> Any:
        return None if current().hidden(gid) else orig(self, gid)

    @patch(EC2Backend, "describe_security_groups")
    def describe_security_groups(
        orig: Callable[..., Any], self: Any, group_ids: Any = None, *a: Any, **kw: Any
    ) -> Any:
        m = current()
        for gid in group_ids or ():
            if m.hidden(gid):
                raise ex.InvalidSecurityGroupNotFoundError(gid)
        return [g for g in orig(self, group_ids, *a, **kw) if not m.hidden(g.id)]

    @patch(EC2Backend, "delete_security_group")
    def delete_security_group(
        orig: Callable[..., Any], self: Any, name: str | None = None, group_id: str | None = None
    ) -> Any:
        group = self.get_security_group_by_name_or_id(group_id or name)
        if group is None:
            raise ex.InvalidSecurityGroupNotFoundError(group_id or name)
        for r in list(self.reservations.values()):
            for inst in r.instances:
                groups = [*inst.security_groups,
                          *(g for nic in inst.nics.values() for g in nic.group_set)]
                uses = any(g.id == group.id for g in groups)
                if uses and inst.state != "terminated":
                    raise ex.DependencyViolationError(f"resource {group.id} has a dependent object")
        return orig(self, name=name, group_id=group_id)

    for creator in ("import_key_pair", "create_key_pair"):

        @patch(EC2Backend, creator)
        def create_key(orig: Callable[..., Any], self: Any, name: str, *a: Any, **kw: Any) -> Any:
            kp = orig(self, name, *a, **kw)
            current().created(f"key:{name}")
            return kp

    @patch(EC2Backend, "describe_key_pairs")
    def describe_key_pairs(
        orig: Callable[..., Any], self: Any, key_names: list[str], *a: Any, **kw: Any
    ) -> Any:
        m = current()
        for name in key_names or ():
            if name and m.hidden(f"key:{name}"):
                raise ex.InvalidKeyPairNameError({name})
        return [k for k in orig(self, key_names, *a, **kw) if not m.hidden(f"key:{k.key_name}")]

    @patch(EC2Backend, "create_tags")
    def create_tags(orig: Callable[..., Any], self: Any, resource_ids: list[str], tags: Any) -> Any:
        m = current()
        for rid in resource_ids:
            if m.hidden(rid):
                raise not_found(rid)
        return orig(self, resource_ids, tags)


def not_found(rid: str) -> Exception:
    """AWS's `*.NotFound` error for a resource id it does not know (yet)."""
    from moto.ec2 import exceptions as ex

    if rid.startswith("sg-"):
        return ex.InvalidSecurityGroupNotFoundError(rid)
    if rid.startswith("sir-"):
        return ex.EC2ClientError("InvalidSpotInstanceRequestID.NotFound",
                                 f"The spot instance request ID '{rid}' does not exist")
    return ex.InvalidInstanceIdError(rid)
