"""Spot price history and zone order on recorded-style responses (botocore Stubber).

moto answers 0.00001 in every zone with a 2006 timestamp, which cannot tell a
cheap zone from an expensive one, so these responses are written by hand, with
timestamps relative to now (the window the provider asks for ends now).
"""

from __future__ import annotations

import datetime as dt

import boto3
import pytest
from botocore.stub import ANY, Stubber

from provision import cloud
from provision.cloud.aws import api
from provision.cloud.aws.prices import summarize
from provision.cloud.common import Region, ZonePrice

REGION = Region("us-east-1")


def at(hours_ago: float) -> dt.datetime:
    """A time relative to now, taken when the record is made: within milliseconds of the
    provider's own "now", so averages over its window match to a millionth."""
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours_ago)


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
    monkeypatch.setattr(api, "ec2_client", lambda region, **kw: client)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def expect_history(stub, pages: list[list[dict]]) -> None:
    """Queue paginated answers to one describe_spot_price_history query."""
    params = {
        "InstanceTypes": ["c5.xlarge"],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": ANY,
        "EndTime": ANY,
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

    prices = cloud.spot_price_history(REGION, "c5.xlarge")

    assert [p.zone for p in prices] == ["us-east-1c", "us-east-1b", "us-east-1a"]
    by_zone = {p.zone: p for p in prices}
    assert by_zone["us-east-1a"] == ZonePrice("us-east-1a", 0.30, pytest.approx(0.15), 0.30, 2)
    assert by_zone["us-east-1b"] == ZonePrice("us-east-1b", 0.12, pytest.approx(0.12), 0.12, 1)
    assert by_zone["us-east-1c"].average == pytest.approx((12 * 0.50 + 12 * 0.05) / 24)
    assert by_zone["us-east-1c"].maximum == 0.50


def test_a_tie_on_the_current_price_goes_to_the_lower_average(stub):
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

    prices = cloud.spot_price_history(REGION, "c5.xlarge")

    assert [p.zone for p in prices] == ["us-east-1d", "us-east-1a", "us-east-1f"]


def test_no_history_is_no_prices(stub):
    expect_history(stub, [[]])

    assert cloud.spot_price_history(REGION, "c5.xlarge") == []


def test_a_current_price_query_averages_to_the_price_in_effect():
    prices = summarize(
        [record("us-east-1a", "0.10", 3), record("us-east-1a", "0.20", 2)], start=at(0), now=at(0)
    )

    assert prices == [ZonePrice("us-east-1a", 0.20, 0.20, 0.20, 2)]


def test_repeated_records_count_once():
    rec = record("us-east-1a", "0.10", 3)

    [price] = summarize([rec, dict(rec)], start=at(24), now=at(0))

    assert price.samples == 1
