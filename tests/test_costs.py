"""What a cluster costs: spot price history over each node's uptime, the root volume
(gp3 per GB-month, prorated), the public IPv4 address, and on-demand prices of the
node's region from the Pricing API (Stubber with recorded responses: moto has no
Pricing API and its spot prices are all 0.00001), falling back to built-in prices.
"""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest
from botocore.stub import Stubber

from provision import costs
from provision.cloud.aws import api, pricing
from provision.cloud.common import InstanceInfo, PriceSheet, Region, price_integral

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
REGION = Region("eu-west-1")


def hours_ago(h: float) -> dt.datetime:
    return NOW - dt.timedelta(hours=h)


def node(lifecycle: str, up_hours: float, *, public_ip: str | None = "203.0.113.9") -> InstanceInfo:
    return InstanceInfo(instance_id=f"i-{lifecycle}", role="worker", instance_type="c5.large",
                        state="running", zone="eu-west-1a", lifecycle=lifecycle,
                        private_ip="10.0.0.5", public_ip=public_ip, launch_time=hours_ago(up_hours))


SHEET = PriceSheet(on_demand=0.096, spot={"eu-west-1a": 0.04}, storage_gb_month=0.088,
                   public_ip_hour=0.005, source="test")


def test_spot_compute_is_the_price_history_over_the_uptime_not_today_s_price(monkeypatch):
    # 0.03 until 2 h ago, then 0.05: a node up 4 h paid 2 x 0.03 + 2 x 0.05.
    history = [(hours_ago(30), 0.03), (hours_ago(2), 0.05)]
    monkeypatch.setattr(costs.cloud, "spot_price_series", lambda *a: history)

    cost = costs.node_costs(REGION, [node("spot", 4)], SHEET, volume_gib=30, now=NOW)["i-spot"]

    extras = 30 * 0.088 / 730 + 0.005
    assert cost.so_far == pytest.approx(2 * 0.03 + 2 * 0.05 + 4 * extras)
    assert cost.hourly == pytest.approx(0.05 + extras)


def test_on_demand_nodes_pay_the_region_s_price_and_a_node_without_public_ip_no_ipv4():
    found = costs.node_costs(REGION, [node("on-demand", 10, public_ip=None)], SHEET, 100, now=NOW)

    assert found["i-on-demand"].so_far == pytest.approx(10 * (0.096 + 100 * 0.088 / 730))


def test_a_window_clips_the_price_in_effect_at_its_start():
    assert price_integral([(hours_ago(5), 1.0)], hours_ago(1), NOW) == pytest.approx(1.0)
    assert price_integral([], hours_ago(1), NOW) == 0


def product(usd: str, **attributes: str) -> str:
    return json.dumps({
        "product": {"attributes": attributes},
        "terms": {"OnDemand": {"X.JRTCKXETXF": {"priceDimensions": {
            "X.JRTCKXETXF.6YS6EN2CT7": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}}}}},
    })


@pytest.fixture
def priced(monkeypatch, tmp_path):
    """The Pricing client stubbed with recorded answers; a private price cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stub = Stubber(client)
    stub.activate()
    monkeypatch.setattr(api, "client", lambda service, region, fail_fast=False: client)
    yield stub
    stub.deactivate()


def test_on_demand_and_storage_prices_are_the_region_s_from_the_pricing_api_then_cached(priced):
    priced.add_response(
        "get_products",
        {"PriceList": [product("0.0960000000", instanceType="c5.large", regionCode="eu-west-1")]},
        {"ServiceCode": "AmazonEC2", "MaxResults": 100,
         "Filters": pricing.on_demand_filters("eu-west-1", "c5.large")},
    )
    priced.add_response(
        "get_products", {"PriceList": [product("0.0880000000", volumeApiName="gp3")]},
        {"ServiceCode": "AmazonEC2", "MaxResults": 100,
         "Filters": pricing.storage_filters("eu-west-1")},
    )

    assert pricing.on_demand_price(REGION, "c5.large", 2) == (0.096, pricing.API)
    assert pricing.storage_price(REGION) == (0.088, pricing.API)
    assert pricing.on_demand_price(REGION, "c5.large", 2) == (0.096, pricing.API)  # cached
    priced.assert_no_pending_responses()


def test_without_the_pricing_api_the_built_in_list_prices_are_used_and_said_to_be(priced):
    priced.add_client_error("get_products", "AccessDeniedException", http_status_code=400)
    priced.add_client_error("get_products", "AccessDeniedException", http_status_code=400)

    price, source = pricing.on_demand_price(REGION, "c5.xlarge", 4)
    storage, _ = pricing.storage_price(REGION)

    assert price == pytest.approx(0.17) and source == pricing.TABLE and "approximate" in source
    assert storage == pricing.GP3_GB_MONTH_US_EAST_1
