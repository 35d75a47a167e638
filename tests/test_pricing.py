"""Spot price history and zone choice on recorded-style responses (botocore Stubber).

moto answers 0.00001 in every zone with a 2006 timestamp, which cannot tell a
cheap zone from an expensive one, so these responses are written by hand.
"""

from __future__ import annotations

import datetime as dt

import boto3
import pytest
from botocore.stub import Stubber

from provision.cloud import ec2
from provision.cloud.common import Region
from provision.cloud.ec2 import CloudError
from provision.cloud.pricing import ZonePrice, summarize

NOW = dt.datetime(2024, 5, 2, 12, 0, tzinfo=dt.timezone.utc)
REGION = Region("us-east-1")


def at(hours_ago: float) -> dt.datetime:
    return NOW - dt.timedelta(hours=hours_ago)


def record(zone: str, price: str, hours_ago: float) -> dict:
    return {
        "AvailabilityZone": zone,
        "InstanceType": "c5.xlarge",
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": price,
        "Timestamp": at(hours_ago),
    }


@pytest.fixture
def stub(monkeypatch):
    client = boto3.client(
        "ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    monkeypatch.setattr(ec2, "ec2_client", lambda region, **kw: client)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def expect_history(stub, pages: list[list[dict]], *, days: float = 1.0) -> None:
    """Queue paginated answers to one describe_spot_price_history query."""
    params = {
        "InstanceTypes": ["c5.xlarge"],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": NOW - dt.timedelta(days=days),
        "EndTime": NOW,
    }
    for n, page in enumerate(pages):
        response: dict = {"SpotPriceHistory": page}
        if n < len(pages) - 1:
            response["NextToken"] = f"page{n + 1}"
        expected = {**params, "NextToken": f"page{n}"} if n else params
        stub.add_response("describe_spot_price_history", response, expected)


def test_history_is_grouped_by_zone_across_pages_cheapest_current_first(stub):
    # us-east-1a: 0.10 since 30 h ago (before the window), 0.30 for the last 6 h.
    # us-east-1b: flat 0.12.  us-east-1c: 0.05 now, after a 0.50 spike.
    expect_history(
        stub,
        [
            [record("us-east-1a", "0.10", 30), record("us-east-1b", "0.12", 20)],
            [
                record("us-east-1a", "0.30", 6),
                record("us-east-1c", "0.50", 24),
                record("us-east-1c", "0.05", 12),
            ],
        ],
    )

    prices = ec2.spot_price_history(REGION, "c5.xlarge", now=NOW)

    assert [p.zone for p in prices] == ["us-east-1c", "us-east-1b", "us-east-1a"]
    by_zone = {p.zone: p for p in prices}
    assert by_zone["us-east-1a"] == ZonePrice("us-east-1a", 0.30, pytest.approx(0.15), 0.30, 2)
    assert by_zone["us-east-1b"] == ZonePrice("us-east-1b", 0.12, 0.12, 0.12, 1)
    assert by_zone["us-east-1c"].average == pytest.approx((12 * 0.50 + 12 * 0.05) / 24)
    assert by_zone["us-east-1c"].maximum == 0.50


def test_cheapest_zone_breaks_a_tie_on_current_price_by_the_average(stub):
    expect_history(
        stub,
        [
            [
                record("us-east-1a", "0.20", 20),
                record("us-east-1a", "0.08", 1),
                record("us-east-1d", "0.08", 20),
                record("us-east-1f", "0.09", 20),
            ]
        ],
    )

    assert ec2.cheapest_zone(REGION, "c5.xlarge", now=NOW) == "us-east-1d"


def test_cheapest_zone_without_any_history_is_an_error(stub):
    expect_history(stub, [[]])

    with pytest.raises(CloudError, match="no spot price history for c5.xlarge in us-east-1"):
        ec2.cheapest_zone(REGION, "c5.xlarge", now=NOW)


def test_a_current_price_query_averages_to_the_price_in_effect():
    prices = summarize(
        [record("us-east-1a", "0.10", 3), record("us-east-1a", "0.20", 2)], start=NOW, now=NOW
    )

    assert prices == [ZonePrice("us-east-1a", 0.20, 0.20, 0.20, 2)]


def test_repeated_records_count_once():
    rec = record("us-east-1a", "0.10", 3)

    [price] = summarize([rec, dict(rec)], start=at(24), now=NOW)

    assert price.samples == 1
