"""What a cluster costs: per hour now, and so far, node by node.

A node bills for compute (the spot price of its zone as it changed over the
node's uptime, or the on-demand list price of the region), its root volume
(gp3, prorated per GB-month) and its public IPv4 address. The prices come
from the provider (`cloud.price_sheet`, `cloud.spot_price_series`); the
arithmetic here is plain and provider-neutral.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from provision import cloud
from provision.cloud.common import InstanceInfo, PriceSheet, Region, price_integral

log = logging.getLogger(__name__)

HOURS_PER_MONTH = 730  # how AWS prorates a GB-month


@dataclass(frozen=True)
class NodeCost:
    """USD of one node: per hour now, and since launch (None = unknown)."""

    hourly: float | None
    so_far: float | None


def extras_hourly(sheet: PriceSheet, volume_gib: int, public_ip: bool) -> float:
    """USD/hour a node costs besides compute: its root volume and public address."""
    return volume_gib * sheet.storage_gb_month / HOURS_PER_MONTH + (
        sheet.public_ip_hour if public_ip else 0.0
    )


def compute_hourly(sheet: PriceSheet, *, spot: bool, zone: str | None) -> float | None:
    """USD/hour of compute: the zone's spot price (the cheapest zone's when none is
    chosen yet), or the on-demand price."""
    if not spot:
        return sheet.on_demand
    if zone:
        return sheet.spot.get(zone)
    return min(sheet.spot.values()) if sheet.spot else None


def node_hourly(
    sheet: PriceSheet, *, spot: bool, zone: str | None, volume_gib: int, public_ip: bool = True
) -> float | None:
    compute = compute_hourly(sheet, spot=spot, zone=zone)
    return None if compute is None else compute + extras_hourly(sheet, volume_gib, public_ip)


def node_costs(
    region: Region,
    nodes: list[InstanceInfo],
    sheet: PriceSheet,
    volume_gib: int,
    now: dt.datetime | None = None,
) -> dict[str, NodeCost]:
    """Instance id -> cost, for nodes that run (others cost nothing any more).

    Spot compute is the integral of the zone's price history over the node's
    uptime (one history per zone and type, from the earliest launch), not
    today's price times the uptime.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    live = [n for n in nodes if n.launch_time is not None and n.state != "terminated"]
    series = _spot_series(region, [n for n in live if n.lifecycle == "spot"], now)
    costs = {}
    for n in live:
        assert n.launch_time is not None
        hours = max(0.0, (now - n.launch_time).total_seconds() / 3600)
        extras = extras_hourly(sheet, volume_gib, n.public_ip is not None)
        if n.lifecycle == "spot":
            history = series.get((n.instance_type, n.zone))
            compute = price_integral(history, n.launch_time, now) if history else None
            rate = history[-1][1] if history else None
        else:
            rate = sheet.on_demand
            compute = None if rate is None else rate * hours
        costs[n.instance_id] = NodeCost(
            hourly=None if rate is None else rate + extras,
            so_far=None if compute is None else compute + extras * hours,
        )
    return costs


def _spot_series(
    region: Region, nodes: list[InstanceInfo], now: dt.datetime
) -> dict[tuple[str, str], list[tuple[dt.datetime, float]]]:
    since: dict[tuple[str, str], dt.datetime] = {}
    for n in nodes:
        assert n.launch_time is not None
        key = (n.instance_type, n.zone)
        since[key] = min(since.get(key, n.launch_time), n.launch_time)
    found = {}
    for (itype, zone), start in sorted(since.items()):
        try:
            found[(itype, zone)] = cloud.spot_price_series(region, itype, zone, start, now)
        except cloud.CloudError as err:  # costs are estimates: unknown, not a failure
            log.info("no spot price history of %s in %s: %s", itype, zone, err)
    return found
