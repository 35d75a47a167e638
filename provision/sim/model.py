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
- public addresses come from the sim's public plane, not moto's random ones.

The daemon calls `install()` once, then `tick()` on every poll to move due
transitions along. Patches are on moto's `EC2Backend` class: the daemon is the
only process that imports them.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from provision.sim.state import Timing

log = logging.getLogger("provision.sim.model")

SPOT_REASON = ("Server.SpotInstanceTermination: Spot instance termination",
               "Server.SpotInstanceTermination")


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
        self.public: dict[str, str] = {}  # instance id -> its public address

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
                if self.timing.pending[1] > 0:
                    inst._state.name, inst._state.code = "pending", 0
                    self.due_running[inst.id] = (self._after(self.timing.pending), inst)
                else:
                    self._running(inst)

    def _running(self, inst: Any) -> None:
        inst._state.name, inst._state.code = "running", 16
        if getattr(inst, "sim_wants_public", False):
            free = [a for a in self.pool if a not in set(self.public.values())]
            if not free:
                log.warning("%s: the public pool is exhausted; no public address", inst.id)
                return
            self.public[inst.id] = inst.nics[0].public_ip = free[0]

    def terminated(self, result: list[tuple[Any, Any]]) -> None:
        """After moto terminated: AWS's `shutting-down` first, and the public IP released."""
        with self.lock:
            for inst, previous in result:
                self.public.pop(inst.id, None)
                inst.nics[0].public_ip = None
                self.due_running.pop(inst.id, None)
                if previous.name == "terminated" and inst.id not in self.due_terminated:
                    continue
                if self.timing.shutting_down[1] > 0:
                    inst._state.name, inst._state.code = "shutting-down", 32
                    if inst.id not in self.due_terminated:
                        when = self._after(self.timing.shutting_down)
                        self.due_terminated[inst.id] = (when, inst)

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            for iid, (when, inst) in list(self.due_running.items()):
                if now >= when:
                    del self.due_running[iid]
                    if inst.state == "pending":
                        self._running(inst)
            for iid, (when, inst) in list(self.due_terminated.items()):
                if now >= when:
                    del self.due_terminated[iid]
                    inst._state.name, inst._state.code = "terminated", 48
            self.visible_at = {k: t for k, t in self.visible_at.items() if t > now}


_model: Model | None = None
_originals: dict[str, Callable[..., Any]] = {}


def current() -> Model:
    assert _model is not None, "model.install() first"
    return _model


def _patch(cls: type, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Replace cls.name by the decorated function, which gets the original first."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = f"{cls.__name__}.{name}"
        orig = _originals.setdefault(key, getattr(cls, name))

        @functools.wraps(orig)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            return fn(orig, self, *args, **kwargs)

        setattr(cls, name, wrapper)
        return fn

    return deco


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

    @_patch(EC2Backend, "run_instances")
    def run_instances(orig: Callable[..., Any], self: Any, *a: Any, **kw: Any) -> Any:
        # moto invents a group for an unknown id in NetworkInterfaces; AWS refuses.
        for nic in kw.get("nics") or []:
            for gid in nic.get("Groups") or []:
                if self.get_security_group_from_id(gid) is None:
                    raise ex.InvalidSecurityGroupNotFoundError(gid)
        reservation = orig(self, *a, **kw)
        current().launched(reservation.instances)
        return reservation

    @_patch(EC2Backend, "terminate_instances")
    def terminate_instances(orig: Callable[..., Any], self: Any, ids: list[str]) -> Any:
        result = orig(self, ids)
        current().terminated(result)
        return result

    @_patch(EC2Backend, "all_reservations")
    def all_reservations(orig: Callable[..., Any], self: Any, filters: Any = None) -> Any:
        m = current()
        out = []
        for r in orig(self, filters):  # copies: rebinding .instances is safe
            r.instances = [i for i in r.instances if not m.hidden(i.id)]
            if r.instances:
                out.append(r)
        return out

    @_patch(EC2Backend, "create_security_group")
    def create_security_group(orig: Callable[..., Any], self: Any, *a: Any, **kw: Any) -> Any:
        group = orig(self, *a, **kw)
        current().created(group.id)
        return group

    @_patch(EC2Backend, "get_security_group_from_id")
    def get_security_group_from_id(orig: Callable[..., Any], self: Any, gid: str) -> Any:
        return None if current().hidden(gid) else orig(self, gid)

    @_patch(EC2Backend, "describe_security_groups")
    def describe_security_groups(
        orig: Callable[..., Any], self: Any, group_ids: Any = None, *a: Any, **kw: Any
    ) -> Any:
        m = current()
        for gid in group_ids or ():
            if m.hidden(gid):
                raise ex.InvalidSecurityGroupNotFoundError(gid)
        return [g for g in orig(self, group_ids, *a, **kw) if not m.hidden(g.id)]

    @_patch(EC2Backend, "delete_security_group")
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

        @_patch(EC2Backend, creator)
        def create_key(orig: Callable[..., Any], self: Any, name: str, *a: Any, **kw: Any) -> Any:
            kp = orig(self, name, *a, **kw)
            current().created(f"key:{name}")
            return kp

    @_patch(EC2Backend, "describe_key_pairs")
    def describe_key_pairs(
        orig: Callable[..., Any], self: Any, key_names: list[str], *a: Any, **kw: Any
    ) -> Any:
        m = current()
        for name in key_names or ():
            if name and m.hidden(f"key:{name}"):
                raise ex.InvalidKeyPairNameError({name})
        return [k for k in orig(self, key_names, *a, **kw) if not m.hidden(f"key:{k.key_name}")]

    @_patch(EC2Backend, "create_tags")
    def create_tags(orig: Callable[..., Any], self: Any, resource_ids: list[str], tags: Any) -> Any:
        m = current()
        for rid in resource_ids:
            if m.hidden(rid):
                if rid.startswith("sg-"):
                    raise ex.InvalidSecurityGroupNotFoundError(rid)
                raise ex.InvalidInstanceIdError(rid)
        return orig(self, resource_ids, tags)
