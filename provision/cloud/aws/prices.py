"""Spot price history and on-demand estimates on EC2. See the contract in `provision.cloud`.

`spot_price_history` pages through DescribeSpotPriceHistory and hands the raw
records to `summarize`, whose arithmetic is pure: it is tested on recorded
responses (moto's prices are all 0.00001 with a 2006 timestamp, so they cannot
exercise it).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from provision.cloud.aws import api
from provision.cloud.common import Region, ZonePrice, price_integral

PRODUCT = "Linux/UNIX"  # what the nodes run; spot prices differ per product


def _history(
    region: Region, instance_type: str, start: dt.datetime, end: dt.datetime, **zone: str
) -> list[dict[str, Any]]:
    """DescribeSpotPriceHistory records of the Linux product, across pages."""
    pages = (
        api.ec2_client(region)
        .get_paginator("describe_spot_price_history")
        .paginate(InstanceTypes=[instance_type], ProductDescriptions=[PRODUCT],
                  StartTime=start, EndTime=end, **zone)
    )
    return [rec for page in pages for rec in page["SpotPriceHistory"]]


@api.api_errors
def spot_price_history(
    region: Region, instance_type: str, *, days: float = 1.0, end: dt.datetime | None = None
) -> list[ZonePrice]:
    """See the contract."""
    now = end or dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(days=days)
    return summarize(_history(region, instance_type, start, now), start=start, now=now)


def summarize(
    records: Iterable[Mapping[str, Any]], *, start: dt.datetime, now: dt.datetime
) -> list[ZonePrice]:
    """Group `SpotPriceHistory` records by zone, cheapest current price first.

    Ties on the current price are broken by the average, then by zone name, so
    the order is deterministic.
    """
    by_zone: dict[str, set[tuple[dt.datetime, float]]] = defaultdict(set)
    for rec in records:  # a set: pages may repeat a record
        by_zone[rec["AvailabilityZone"]].add((rec["Timestamp"], float(rec["SpotPrice"])))
    prices = []
    for zone, found in by_zone.items():
        samples = sorted(found)
        prices.append(
            ZonePrice(
                zone=zone,
                current=samples[-1][1],
                average=_time_weighted_mean(samples, start, now),
                maximum=max(p for _, p in samples),
                samples=len(samples),
            )
        )
    return sorted(prices, key=lambda z: (z.current, z.average, z.zone))


def _time_weighted_mean(
    samples: list[tuple[dt.datetime, float]], start: dt.datetime, now: dt.datetime
) -> float:
    """Mean price over [start, now], each price holding until the next change.

    A plain mean would overweight bursts of short-lived changes. A window of
    zero length (a "current price" query) gives the price in effect at that instant.
    """
    hours = (now - max(start, samples[0][0])).total_seconds() / 3600
    return price_integral(samples, start, now) / hours if hours > 0 else samples[-1][1]


@api.api_errors
def spot_price_series(
    region: Region, instance_type: str, zone: str, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, float]]:
    """See the contract."""
    records = _history(region, instance_type, start, end, AvailabilityZone=zone)
    return sorted({(r["Timestamp"], float(r["SpotPrice"])) for r in records
                   if r["AvailabilityZone"] == zone})


# Approximate us-east-1 Linux on-demand list prices of the `.large` size (2 vCPUs),
# per family. Within a c-family the price scales with vCPUs, so this small table
# covers every size. The fallback of `pricing` when the Pricing API cannot be
# asked (no permission, the simulated region): other regions cost up to ~30% more.
ON_DEMAND_LARGE_USD = {
    "c5": 0.085, "c5a": 0.077, "c5d": 0.096, "c5n": 0.108,
    "c6a": 0.0765, "c6g": 0.068, "c6gn": 0.0864, "c6i": 0.085, "c6id": 0.1008, "c6in": 0.1134,
    "c7a": 0.10264, "c7g": 0.0725, "c7gn": 0.12480, "c7i": 0.08925, "c7i-flex": 0.08479,
    "c8g": 0.07976,
}
LARGE_VCPUS = 2


def on_demand_estimate(instance_type: str, vcpus: int) -> float | None:
    """Approximate on-demand USD/hour, or None for a family not in the table."""
    base = ON_DEMAND_LARGE_USD.get(instance_type.split(".", 1)[0])
    return None if base is None else round(base * vcpus / LARGE_VCPUS, 5)
