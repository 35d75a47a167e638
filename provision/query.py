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
from provision.errors import BadInput
from provision.schema import ClusterConfig

log = logging.getLogger(__name__)

RECENT_DAYS = 0.1  # a spot price window short enough to be "now", long enough to hold one
ON_DEMAND = "on-demand"  # the key of the on-demand estimate among the prices per zone


def spot_prices(
    config: ClusterConfig, instance_type: str, days: float
) -> tuple[Region, list[ZonePrice]]:
    """Spot prices of `instance_type` per zone over `days`, cheapest current first;
    `BadInput` naming INSTANCE_TYPE when the region does not offer it."""
    region = resolve_region(config)
    try:
        cloud.describe_instance_type(region, instance_type)
    except cloud.CloudError as err:
        raise BadInput(f"INSTANCE_TYPE: {err}") from err
    return region, cloud.spot_price_history(region, instance_type, days=days)


def current_spot_prices(region: Region, instance_type: str) -> dict[str, float]:
    """Zone -> current spot price; empty when the prices cannot be had (they only
    feed estimates, which then say "unknown" or fall back to the bid)."""
    try:
        history = cloud.spot_price_history(region, instance_type, days=RECENT_DAYS)
    except cloud.CloudError as err:
        log.info("no spot prices of %s in %s: %s", instance_type, region.name, err)
        return {}
    return {p.zone: p.current for p in history}


def node_prices(region: Region, instance_type: str) -> dict[str, float]:
    """Current spot price per zone, plus `ON_DEMAND`: the approximate list price.
    Empty when the prices cannot be had: the table then shows no cost."""
    try:
        history = cloud.spot_price_history(region, instance_type, days=RECENT_DAYS)
        on_demand = cloud.describe_instance_type(region, instance_type).on_demand_price
    except cloud.CloudError as err:
        log.info("no prices of %s in %s: %s", instance_type, region.name, err)
        return {}
    prices = {p.zone: p.current for p in history}
    if on_demand is not None:
        prices[ON_DEMAND] = on_demand
    return prices


def node_rows(info: ClusterInfo, prices: dict[str, float]) -> list[dict[str, Any]]:
    """One flat dict per instance (terminated ones too): role, place, state, uptime, cost."""
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in sorted(info.instances, key=lambda i: (i.role != MASTER, i.name, i.instance_id)):
        up = i.launch_time and i.state != "terminated"
        hours = (now - i.launch_time).total_seconds() / 3600 if up else 0.0
        price = prices.get(i.zone) if i.lifecycle == "spot" else prices.get(ON_DEMAND)
        rows.append({
            "id": i.instance_id, "name": i.name, "role": i.role, "type": i.instance_type,
            "zone": i.zone, "lifecycle": i.lifecycle, "state": i.state,
            "private_ip": i.private_ip, "public_ip": i.public_ip,
            "uptime_hours": round(hours, 3), "price_per_hour": price,
            "cost_so_far": None if price is None else round(price * hours, 6),
        })
    return rows


@dataclass
class ClusterStatus:
    """A cluster as the cloud's tags describe it now, with prices and the local record."""

    info: ClusterInfo
    prices: dict[str, float]
    expected_engines: int | None
    datasets: list[str]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return node_rows(self.info, self.prices)


def cluster_status(config: ClusterConfig) -> ClusterStatus:
    """The status of the cluster `config` names (no local record needed)."""
    region = resolve_region(config)
    info = cloud.describe_cluster(region, config.name)
    record = state.load(config.name)
    return ClusterStatus(
        info=info,
        prices=node_prices(region, config.instance_type),
        expected_engines=record.get("expected_engines"),
        datasets=sorted(record.get("datasets", {})),
    )


def clusters(config: ClusterConfig) -> tuple[Region, list[dict[str, Any]]]:
    """Clusters in the region of `config` (from tags) and the ones this machine remembers."""
    region = resolve_region(config)
    live = cloud.list_clusters(region)
    known = state.known_clusters()
    rows = [
        {"name": n, "region": region.name, "live": n in live, "local_record": n in known}
        for n in sorted(set(live) | set(known))
    ]
    return region, rows
