"""Spot Instance requests behind RunInstances, kept as AWS keeps them (moto makes none).

On AWS, RunInstances with `InstanceMarketOptions={"MarketType": "spot"}` creates
one spot instance request per instance ("Spot request status" and "State changes
for a Spot request" in the EC2 user guide): DescribeSpotInstanceRequests lists it
(tagged by the launch's `spot-instances-request` TagSpecifications), and the
instance names it in `SpotInstanceRequestId`. What happens to a one-time request:

| event                                  | request state | status code                            |
| launched                               | active        | fulfilled                              |
| interruption notice (sim interrupt)    | closed        | marked-for-termination                 |
| interrupted                            | closed        | instance-terminated-no-capacity        |
| instance terminated by the user, or    | closed        | instance-terminated-by-user            |
|   shut down from its OS                |               |                                        |
| CancelSpotInstanceRequests, instance   | cancelled     | request-canceled-and-instance-running  |
|   still running (it keeps running)     |               |                                        |
| ... then the instance terminated       | cancelled     | instance-terminated-by-user            |

A new request id is briefly unknown to the API, like any new id
(`InvalidSpotInstanceRequestID.NotFound`). A one-time spot instance cannot be
stopped (`UnsupportedOperation`), and a shutdown from its OS terminates it
whatever its InstanceInitiatedShutdownBehavior (see `shutdown_behavior`).
Persistent requests are kept as asked but behave as one-time ones (never reopened).
Daemon-only: imports moto.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from moto.ec2 import exceptions as ex
from moto.ec2.models import EC2Backend
from moto.ec2.models.instances import Instance
from moto.ec2.models.spot_requests import SpotInstanceRequest
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.spot_instances import SpotInstances
from moto.ec2.utils import filter_dict_attribute_mapping, random_spot_request_id

from provision.sim import model, prices
from provision.sim.model import current, not_found, patch

FULFILLED = "fulfilled"
MARKED = "marked-for-termination"
INTERRUPTED = "instance-terminated-no-capacity"
BY_USER = "instance-terminated-by-user"
CANCELLED_RUNNING = "request-canceled-and-instance-running"
MESSAGES = {
    FULFILLED: "Your spot request is fulfilled.",
    MARKED: "Spot Instance is marked for termination because there is no longer enough "
            "spare capacity in this pool.",
    INTERRUPTED: "Spot Instance terminated due to no available capacity.",
    BY_USER: "Spot Instance terminated due to user-initiated termination.",
    CANCELLED_RUNNING: "Spot Instance request canceled, but the instance is still running.",
    "canceled-before-fulfillment": "Spot Instance request canceled before it was fulfilled.",
}


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class SimSpotRequest(SpotInstanceRequest):
    """A request fulfilled by an instance RunInstances already made (moto's would launch one)."""

    def __init__(self, backend: Any, inst: Any, options: dict[str, Any], tags: dict[str, Any]):
        self._fulfilled_by = inst
        spot = options.get("SpotOptions") or {}
        groups = [g.id for g in inst.security_groups] or [
            g.id for nic in inst.nics.values() for g in nic.group_set]
        self.created_at = self.updated_at = dt.datetime.now(dt.timezone.utc)
        super().__init__(
            backend, random_spot_request_id(),
            # AWS's default maximum price is the on-demand price.
            spot.get("MaxPrice") or str(prices.on_demand(inst.instance_type)),
            inst.image_id, spot.get("SpotInstanceType") or "one-time", None, None, None, None,
            inst.key_name, groups, None, inst.instance_type, inst.placement.zone, None, None,
            False, inst.subnet_id, tags, None, spot.get("InstanceInterruptionBehavior"),
        )
        self.launched_availability_zone = inst.placement.zone
        self.set("active", FULFILLED)

    def launch_instance(self) -> Any:
        return self._fulfilled_by

    def set(self, state: str, code: str) -> None:
        self.state, self._status_code = state, code
        self.status_message = MESSAGES.get(code, "")
        self.updated_at = dt.datetime.now(dt.timezone.utc)

    @property
    def create_time(self) -> str:  # type: ignore[override]
        return _iso(self.created_at)

    @property
    def status(self) -> dict[str, Any]:  # type: ignore[override]
        return {"Code": self._status_code, "Message": self.status_message,
                "UpdateTime": _iso(self.updated_at)}

    def get_filter_value(self, filter_name: str, method_name: str | None = None) -> Any:
        extra = {"instance-id": self.instance.id, "status-code": self._status_code,
                 "type": self.type, "launched-availability-zone": self.launched_availability_zone}
        if filter_name in extra:
            return extra[filter_name]
        return super().get_filter_value(filter_name, method_name)


def request_of(inst: Any) -> SimSpotRequest | None:
    rid = getattr(inst, "spot_instance_request_id", None)
    return model.backend().spot_instance_requests.get(rid) if rid else None


def one_time(inst: Any) -> bool:
    req = request_of(inst)
    return req is not None and req.type == "one-time"


def shutdown_behavior(inst: Any) -> str:
    """What a shutdown from the instance's OS does: `stop` or `terminate`.

    The launch's InstanceInitiatedShutdownBehavior (EC2's default: stop), except
    that a one-time spot instance cannot be stopped: it is terminated.
    """
    return "terminate" if one_time(inst) else inst.instance_initiated_shutdown_behavior


def marked(inst: Any) -> None:
    """An interruption was announced: the request closes while the instance still runs."""
    req = request_of(inst)
    if req is not None and req.state == "active":
        req.set("closed", MARKED)


def interrupted(inst: Any) -> None:
    req = request_of(inst)
    if req is not None:
        req.set("cancelled" if req.state == "cancelled" else "closed", INTERRUPTED)


def install() -> None:  # noqa: C901 - one place lists every patched call
    """Graft spot requests onto moto's backend (once per process, after `model.install`)."""
    Instance.spot_instance_request_id = None  # on-demand instances name none
    filter_dict_attribute_mapping.setdefault("instance-lifecycle", "lifecycle")
    filter_dict_attribute_mapping.setdefault("spot-instance-request-id", "spot_instance_request_id")
    model.keep_params(InstanceResponse, "run_instances", "InstanceMarketOptions")

    @patch(EC2Backend, "run_instances")
    def run_instances(orig: Callable[..., Any], self: Any, *a: Any, **kw: Any) -> Any:
        reservation = orig(self, *a, **kw)
        options = model.request().get("InstanceMarketOptions") or {}
        if options.get("MarketType") == "spot":
            for inst in reservation.instances:
                req = SimSpotRequest(self, inst, options, kw.get("tags") or {})
                self.spot_instance_requests[req.id] = req
                inst.spot_instance_request_id, inst.lifecycle = req.id, "spot"
                current().created(req.id)
        return reservation

    @patch(EC2Backend, "terminate_instances")
    def terminate_instances(orig: Callable[..., Any], self: Any, ids: list[str]) -> Any:
        result = orig(self, ids)
        for inst, _ in result:
            req = request_of(inst)
            if req is not None and req.status["Code"] in (FULFILLED, MARKED, CANCELLED_RUNNING):
                req.set("cancelled" if req.state == "cancelled" else "closed", BY_USER)
        return result

    @patch(EC2Backend, "stop_instances")
    def stop_instances(orig: Callable[..., Any], self: Any, ids: list[str]) -> Any:
        for inst in self.get_multi_instances_by_id(ids):
            if one_time(inst):
                raise ex.EC2ClientError(
                    "UnsupportedOperation",
                    f"You can't stop the Spot Instance '{inst.id}' because it is associated "
                    "with a one-time Spot Instance request. You can only stop Spot Instances "
                    "associated with persistent Spot Instance requests.")
        return orig(self, ids)

    def known(self: Any, ids: list[str]) -> list[Any]:
        m = current()
        for rid in ids:
            if rid not in self.spot_instance_requests or m.hidden(rid):
                raise not_found(rid)
        return [self.spot_instance_requests[rid] for rid in ids]

    @patch(EC2Backend, "describe_spot_instance_requests")
    def describe_spot_instance_requests(
        orig: Callable[..., Any], self: Any, filters: Any = None,
        spot_instance_ids: list[str] | None = None,
    ) -> Any:
        known(self, spot_instance_ids or [])
        found = orig(self, filters=filters, spot_instance_ids=spot_instance_ids)
        return [r for r in found if not current().hidden(r.id)]

    @patch(EC2Backend, "cancel_spot_instance_requests")
    def cancel_spot_instance_requests(
        orig: Callable[..., Any], self: Any, request_ids: list[str]
    ) -> Any:
        requests = known(self, request_ids)  # moto's would forget them; AWS keeps them
        for req in requests:
            if req.state == "active":
                req.set("cancelled", CANCELLED_RUNNING)
            elif req.state == "open":
                req.set("cancelled", "canceled-before-fulfillment")
        return requests

    @patch(SpotInstances, "cancel_spot_instance_requests")
    def cancel_response(orig: Callable[..., Any], self: Any) -> Any:
        from moto.core.responses import ActionResult

        self.error_on_dryrun()
        requests = self.ec2_backend.cancel_spot_instance_requests(
            self._get_param("SpotInstanceRequestIds", []))
        return ActionResult({"CancelledSpotInstanceRequests": [
            {"SpotInstanceRequestId": r.id, "State": r.state} for r in requests]})
