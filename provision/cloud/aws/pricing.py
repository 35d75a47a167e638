"""List prices per region from the AWS Price List (Pricing) API, cached, with a fallback.

On-demand compute and gp3 storage differ by region (up to ~30% above
us-east-1), so estimates ask the Pricing API, which is served from a few
endpoints only (us-east-1 among them) whatever the cluster's region. Answers
are cached on disk for `CACHE_DAYS` (list prices change a few times a year);
when the API cannot be asked (no ``pricing:GetProducts`` permission, no
network, the simulated region) the built-in us-east-1 table of `prices` is the
fallback, and `PriceSheet.source` says which was used. Spot prices come from
EC2 itself (`prices`).

A public IPv4 address costs the same everywhere since February 2024: USD 0.005
per hour, in use or idle; there is nothing to look up.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from provision.cloud.aws import api, images, prices
from provision.cloud.common import CloudError, PriceSheet, Region

log = logging.getLogger(__name__)

PRICING_REGION = "us-east-1"  # one of the Pricing API's endpoints (also eu-central-1, ap-south-1)
CACHE_DAYS = 7
PUBLIC_IPV4_HOUR = 0.005  # USD per public IPv4 address-hour, every region
GP3_GB_MONTH_US_EAST_1 = 0.08  # USD per GB-month: the fallback storage price
HOURS_PER_MONTH = 730  # how AWS prorates a GB-month
API, TABLE = "Pricing API", "built-in us-east-1 list prices (approximate)"


def _cache_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("provision")) / "prices.json"


def _cached(key: str) -> float | None:
    try:
        price, when = json.loads(_cache_file().read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(price) if time.time() - when < CACHE_DAYS * 86400 else None


def _remember(key: str, price: float) -> None:
    path = _cache_file()
    try:
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc[key] = [price, time.time()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
    except (OSError, ValueError) as e:  # a cache, nothing more
        log.debug("price cache not written: %s", e)


def _match(**fields: str) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def on_demand_filters(region: str, instance_type: str) -> list[dict[str, str]]:
    """The product of a Linux node as `provision` runs it: shared tenancy, no
    pre-installed software or licence, a real (not reserved-capacity) instance."""
    return _match(
        instanceType=instance_type, regionCode=region, operatingSystem="Linux",
        tenancy="Shared", preInstalledSw="NA", capacitystatus="Used",
        licenseModel="No License required", marketoption="OnDemand",
    )


def storage_filters(region: str) -> list[dict[str, str]]:
    return _match(productFamily="Storage", volumeApiName="gp3", regionCode=region)


def lowest_usd(price_list: list[str]) -> float | None:
    """The lowest positive USD price per unit in a GetProducts `PriceList` (JSON strings)."""
    found = []
    for item in price_list:
        product = json.loads(item)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dim in term.get("priceDimensions", {}).values():
                usd = float(dim.get("pricePerUnit", {}).get("USD", "0") or 0)
                if usd > 0:
                    found.append(usd)
    return min(found) if found else None


def _ask(region: Region, filters: list[dict[str, str]], key: str) -> float | None:
    """One GetProducts question, from the cache when fresh; None when it cannot be answered."""
    if (hit := _cached(key)) is not None:
        return hit
    endpoint = Region(PRICING_REGION, endpoint_url=region.endpoint_url,
                      access_key=region.access_key, secret_key=region.secret_key)
    try:  # one attempt: an estimate never waits on retries
        client = api.client("pricing", endpoint, fail_fast=True)
        answer = client.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=100)
        price = lowest_usd(answer.get("PriceList", []))
    except (ClientError, BotoCoreError, ValueError) as e:
        log.info("Pricing API unavailable (%s): using list prices built in", e)
        return None
    if price is not None and region.endpoint_url is None:
        _remember(key, price)
    return price


def on_demand_price(region: Region, instance_type: str, vcpus: int) -> tuple[float | None, str]:
    """USD/hour on demand in `region`, and where that came from."""
    price = _ask(region, on_demand_filters(region.name, instance_type),
                 f"ondemand:{region.name}:{instance_type}")
    if price is not None:
        return price, API
    return prices.on_demand_estimate(instance_type, vcpus), TABLE


def storage_price(region: Region) -> tuple[float, str]:
    """USD per GB-month of gp3 in `region`, and where that came from."""
    price = _ask(region, storage_filters(region.name), f"gp3:{region.name}")
    return (price, API) if price is not None else (GP3_GB_MONTH_US_EAST_1, TABLE)


@api.api_errors
def price_sheet(region: Region, instance_type: str) -> PriceSheet:
    """See the contract."""
    vcpus = images.describe_instance_type(region, instance_type).vcpus
    on_demand, compute_source = on_demand_price(region, instance_type, vcpus)
    storage, storage_source = storage_price(region)
    try:
        spot = {p.zone: p.current for p in prices.spot_price_history(region, instance_type, days=0)}
    except CloudError as e:  # no spot market, or no permission: spot nodes' cost is unknown
        log.info("no spot prices of %s in %s: %s", instance_type, region.name, e)
        spot = {}
    sources = sorted({compute_source, storage_source})
    return PriceSheet(
        on_demand=on_demand, spot=spot, storage_gb_month=storage,
        public_ip_hour=PUBLIC_IPV4_HOUR, source=" + ".join(sources),
    )

