"""Spot prices that behave like AWS's: per zone, changing over time, never zero.

moto answers every DescribeSpotPriceHistory with 0.00001 and a 2006 timestamp,
so a spot node would cost nothing. Here each (instance type, zone) has its own
level, a fraction of the type's on-demand price (spot usually trades at
25-45 % of it), and the price steps to a new value every one to four hours.
The history is a pure function of (type, zone, hour): the same question gets
the same answer, across calls and across daemon restarts, as a recorded history
would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

# us-east-1 Linux on-demand, USD/hour: what spot levels are a fraction of.
ON_DEMAND = {
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34, "c5.4xlarge": 0.68,
    "c6i.large": 0.085, "c6i.xlarge": 0.17, "c6i.2xlarge": 0.34, "c7i.large": 0.0893,
    "c7i.xlarge": 0.1785, "c6g.large": 0.068, "c7g.large": 0.0725, "c7g.xlarge": 0.145,
    "m5.large": 0.096, "m6i.large": 0.096, "r5.large": 0.126, "t3.micro": 0.0104,
    "t3.medium": 0.0416,
}
_PER_VCPU = {"c": 0.0425, "m": 0.048, "r": 0.063, "t": 0.0208}  # fallback by family letter
_SIZE_VCPU = {"nano": 2, "micro": 2, "small": 2, "medium": 1, "large": 2, "xlarge": 4,
              "metal": 96}
PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
HOUR = 3600


def on_demand(instance_type: str) -> float:
    """The table's price, else vCPUs (from the size) times a per-vCPU rate of the family."""
    if instance_type in ON_DEMAND:
        return ON_DEMAND[instance_type]
    family, _, size = instance_type.partition(".")
    m = re.match(r"^(\d+)xlarge$", size)
    vcpu = 4 * int(m.group(1)) if m else _SIZE_VCPU.get(size, 2)
    rate = _PER_VCPU.get(family[:1], 0.05) * (0.8 if "g" in family[2:] else 1.0)
    return round(vcpu * rate, 4)


def _unit(*parts: object) -> float:
    """A reproducible number in [0, 1) from its arguments."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def price_at(instance_type: str, zone: str, hour: int) -> float:
    """The spot price in force during hour `hour` (hours since the epoch)."""
    level = 0.25 + 0.15 * _unit("zone", instance_type, zone)  # 25-40 % of on-demand, per zone
    wobble = 0.85 + 0.3 * _unit("step", instance_type, zone, _step_start(instance_type, zone, hour))
    return round(on_demand(instance_type) * level * wobble, 6)


def _step_start(instance_type: str, zone: str, hour: int) -> int:
    """The hour the step covering `hour` began: steps last 1-4 hours."""
    start = hour - hour % 4  # steps never cross a 4-hour block boundary...
    while True:  # ...and inside one, lengths are drawn from the block's own seed
        length = 1 + int(4 * _unit("len", instance_type, zone, start))
        if hour < start + length:
            return start
        start += length


def history(
    offerings: list[tuple[str, str]], start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    """Price changes in [start, end] plus the price in force at `start`, newest first."""
    out = []
    first, last = int(start.timestamp()) // HOUR, int(end.timestamp()) // HOUR
    for itype, zone in offerings:
        previous = None
        for hour in range(first, last + 1):
            step = _step_start(itype, zone, hour)
            if step == previous:
                continue
            previous = step
            when = dt.datetime.fromtimestamp(step * HOUR, dt.timezone.utc)
            out.append({
                "InstanceType": itype,
                "ProductDescription": PRODUCTS[0],
                "SpotPrice": f"{price_at(itype, zone, hour):.6f}",
                "AvailabilityZone": zone,
                "Timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            })
    out.sort(key=lambda p: p["Timestamp"], reverse=True)
    return out


def _when(value: Any, default: dt.datetime) -> dt.datetime:
    if not value:
        return default
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def install() -> None:
    """Answer DescribeSpotPriceHistory from `history` instead of moto's constant."""
    from moto.core.responses import ActionResult
    from moto.ec2.responses.spot_instances import SpotInstances

    def describe_spot_price_history(self: Any) -> ActionResult:
        now = dt.datetime.now(dt.timezone.utc)
        end = min(_when(self._get_param("EndTime"), now), now)
        # No StartTime: AWS returns the whole (90-day) history; a week is plenty here.
        start = _when(self._get_param("StartTime"), now - dt.timedelta(days=7))
        filters = self._filters_from_querystring()
        products = set(filters.pop("product-description", []))
        products |= set(self._get_param("ProductDescriptions", []) or [])
        if products and not products & set(PRODUCTS):
            return ActionResult({"SpotPriceHistory": []})
        offered = self.ec2_backend.describe_spot_price_history(
            self._get_param("InstanceTypes", []), filters
        )
        pairs = sorted({(o["InstanceType"], o["Location"]) for o in offered})
        items = history(pairs, start, end) if start <= end else []
        limit = int(self._get_param("MaxResults") or 1000)
        return ActionResult({"SpotPriceHistory": items[:limit]})

    SpotInstances.describe_spot_price_history = describe_spot_price_history  # type: ignore[method-assign]
