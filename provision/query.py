"""Read-only questions about clusters and prices: what `status`, `list` and
`spothistory` print, as data a notebook can use too.

Nothing here creates, changes or connects to anything; every answer comes from
the cloud (its tags) and the local record.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from provision import cloud, state
from provision.cloud.common import MASTER, ClusterInfo, Region, ZonePrice
from provision.context import resolve_region
from provision.costs import NodeCost, node_costs
from provision.errors import BadInput
from provision.schema import ClusterConfig

log = logging.getLogger(__name__)


def spot_prices(
    config: ClusterConfig, instance_type: str, days: float, end: dt.datetime | None = None
) -> tuple[Region, list[ZonePrice]]:
    """Spot prices of `instance_type` per zone over the `days` before `end` (default:
    now), cheapest current first; `BadInput` naming INSTANCE_TYPE when the region
    does not offer it."""
    region = resolve_region(config)
    try:
        cloud.describe_instance_type(region, instance_type)
    except cloud.CloudError as err:
        raise BadInput(f"INSTANCE_TYPE: {err}") from err
    return region, cloud.spot_price_history(region, instance_type, days=days, end=end)


def price_series(
    region: Region, instance_type: str, zones: list[str], start: dt.datetime, end: dt.datetime
) -> dict[str, list[tuple[dt.datetime, float]]]:
    """Zone -> its spot price changes over [start, end], oldest first, the last price
    held to `end` (for a plot)."""
    found = {z: cloud.spot_price_series(region, instance_type, z, start, end) for z in zones}
    return {z: s + [(end, s[-1][1])] if s and s[-1][0] < end else s for z, s in found.items()}


def cluster_costs(region: Region, info: ClusterInfo, config: ClusterConfig) -> dict[str, NodeCost]:
    """Instance id -> what it costs per hour and has cost so far; empty when the
    prices cannot be had (the table then shows no cost)."""
    try:
        sheet = cloud.price_sheet(region, config.instance_type)
    except cloud.CloudError as err:
        log.info("no prices of %s in %s: %s", config.instance_type, region.name, err)
        return {}
    return node_costs(region, info.instances, sheet, config.volume_size)


def hourly_total(region: Region, info: ClusterInfo, config: ClusterConfig) -> float | None:
    """USD/hour of the running nodes: compute, root volumes, public addresses (None when
    a node's price is unknown: a partial sum would understate it)."""
    costs = cluster_costs(region, info, config)
    rates = [costs[i.instance_id].hourly if i.instance_id in costs else None for i in info.nodes]
    if not rates or any(r is None for r in rates):
        return None
    return sum(r for r in rates if r is not None)


def node_rows(info: ClusterInfo, costs: dict[str, NodeCost]) -> list[dict[str, Any]]:
    """One flat dict per instance (terminated ones too): role, place, state, uptime, cost."""
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in sorted(info.instances, key=lambda i: (i.role != MASTER, i.name, i.instance_id)):
        up = i.launch_time and i.state != "terminated"
        hours = (now - i.launch_time).total_seconds() / 3600 if up else 0.0
        cost = costs.get(i.instance_id, NodeCost(None, None))
        rows.append({
            "id": i.instance_id, "name": i.name, "role": i.role, "type": i.instance_type,
            "zone": i.zone, "lifecycle": i.lifecycle, "state": i.state,
            "private_ip": i.private_ip, "public_ip": i.public_ip,
            "uptime_hours": round(hours, 3), "price_per_hour": cost.hourly,
            "cost_so_far": None if cost.so_far is None else round(cost.so_far, 6),
        })
    return rows


@dataclass
class ClusterStatus:
    """A cluster as the cloud's tags describe it now, with prices and the local record."""

    info: ClusterInfo
    costs: dict[str, NodeCost]  # instance id -> per hour (compute, volume, address) and so far
    expected_engines: int | None
    datasets: list[str]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return node_rows(self.info, self.costs)


def cluster_status(config: ClusterConfig) -> ClusterStatus:
    """The status of the cluster `config` names (no local record needed)."""
    region = resolve_region(config)
    info = cloud.describe_cluster(region, config.name)
    record = state.load(config.name)
    return ClusterStatus(
        info=info,
        costs=cluster_costs(region, info, config),
        expected_engines=record.get("expected_engines"),
        datasets=sorted(record.get("datasets", {})),
    )


OS_SHUTDOWN = "Client.InstanceInitiatedShutdown"  # EC2's state reason: shut down from its OS


def stopped_by_autostop(info: ClusterInfo) -> bool:
    """No node alive, and the latest master went down from its own OS (the autostop
    agent's poweroff): the cloud's record, so no local state is needed to tell."""
    masters = [i for i in info.instances if i.role == MASTER and i.launch_time]
    latest = max(masters, key=lambda i: i.launch_time or 0, default=None)
    return not info.alive and latest is not None and latest.state_reason == OS_SHUTDOWN


def _summary(region: Region, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Size, engines (as the local record expects them; None without one), age and
    cost so far of one cluster, from its tags and prices."""
    info = cloud.describe_cluster(region, name)
    alive = info.alive
    launched = [i.launch_time for i in alive if i.launch_time]
    now = dt.datetime.now(dt.timezone.utc)
    costs: dict[str, NodeCost] = {}
    config = record.get("config") or {}
    for itype in sorted({i.instance_type for i in alive}):
        try:
            sheet = cloud.price_sheet(region, itype)
        except cloud.CloudError as err:
            log.info("no prices of %s in %s: %s", itype, region.name, err)
            continue
        same = [i for i in alive if i.instance_type == itype]
        costs |= node_costs(region, same, sheet, config.get("volume_size", 0))
    spent = [c.so_far for c in costs.values() if c.so_far is not None]
    limits = {k: config.get(k) for k in ("autostop", "max_hours", "budget")}
    return {
        "stopped_by_autostop": stopped_by_autostop(info),
        "autostop": {k: v for k, v in limits.items() if v is not None} or None,
        "nodes": len(alive),
        "engines": record.get("expected_engines") if alive else 0,
        "age_hours": round((now - min(launched)).total_seconds() / 3600, 3) if launched else None,
        # Only a complete sum: a node without a price would make it an underestimate.
        "cost_so_far": round(sum(spent), 6) if alive and len(spent) == len(alive) else None,
    }


def clusters(config: ClusterConfig) -> tuple[Region, list[dict[str, Any]]]:
    """Clusters in the region of `config` (from tags) and the ones this machine
    remembers: whether live, size, engines, age, cost so far."""
    region = resolve_region(config)
    live = cloud.list_clusters(region)
    known = state.known_clusters()
    rows = []
    for n in sorted(set(live) | set(known)):
        record = state.load(n) if n in known else {}
        row = {"name": n, "region": region.name, "live": n in live, "local_record": n in known}
        empty = {"stopped_by_autostop": False, "autostop": None, "nodes": 0, "engines": 0,
                 "age_hours": None, "cost_so_far": None}
        rows.append(row | (_summary(region, n, record) if n in live else empty))
    return region, rows
