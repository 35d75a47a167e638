"""boto3 clients, error translation and tag helpers shared by the AWS modules.

Clients are made per call (no cache, as the contract asks); without an explicit
endpoint or keys in the `Region`, boto3's own chain applies (including
AWS_ENDPOINT_URL_EC2 and AWS_PROFILE). botocore failures escaping a public
function become one-line `CloudAPIError`s (`api_errors`); the botocore error
stays chained for debugging.
"""

from __future__ import annotations

import functools
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import ExponentialBackoff, RetryContext

from provision.cloud.common import CLUSTER_TAG, CREATED_BY_TAG, CloudAPIError, Region

TOOL = "provision"  # value of CREATED_BY_TAG
LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
# Retries of an ordinary client: adaptive mode rate-limits bursts of describe calls.
MAX_ATTEMPTS = 8
# Polling of a bounded wait: about 60 polls over the timeout, between these bounds.
MIN_POLL_S, MAX_POLL_S = 0.2, 5.0
# Polling a state change (pending -> running, shutting-down -> terminated, which
# take seconds): often at first, then backing off to MAX_POLL_S.
FIRST_POLL_S, POLL_GROWTH = 0.5, 1.5
# EC2's API is eventually consistent: an id it has just returned may be unknown to
# the next call for a moment ("Eventual consistency in the Amazon EC2 API":
# usually seconds). botocore does not retry these codes; `until_found` does, this long.
NOT_FOUND_CODES = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidGroup.NotFound",
        "InvalidGroupId.NotFound",
        "InvalidKeyPair.NotFound",
        "InvalidSpotInstanceRequestID.NotFound",
        "InvalidVolume.NotFound",
    }
)
NOT_FOUND_S = 60.0

P = ParamSpec("P")
R = TypeVar("R")

_client_lock = threading.Lock()  # boto3's default session is not thread-safe to build clients
_backoff = ExponentialBackoff(random=random.random)


def client(service: str, region: Region, *, fail_fast: bool = False) -> Any:
    """A boto3 client for `service` in `region`: the one place clients are made.

    `fail_fast` makes exactly one attempt, so a capacity error moves a launch
    on to the next zone at once (throttling is then retried by the caller).
    """
    retries = (
        {"mode": "standard", "total_max_attempts": 1}
        if fail_fast
        else {"mode": "adaptive", "max_attempts": MAX_ATTEMPTS}
    )
    kwargs: dict[str, Any] = {"region_name": region.name, "config": Config(retries=retries)}
    if region.endpoint_url:
        kwargs["endpoint_url"] = region.endpoint_url
    if region.access_key and region.secret_key:
        kwargs["aws_access_key_id"] = region.access_key
        kwargs["aws_secret_access_key"] = region.secret_key
    with _client_lock:
        return boto3.client(service, **kwargs)


def ec2_client(region: Region, *, fail_fast: bool = False) -> Any:
    """An EC2 client (see `client`)."""
    return client("ec2", region, fail_fast=fail_fast)


def ssm_client(region: Region) -> Any:
    """An SSM client (image lookup); the simulated region serves it on the same endpoint."""
    return client("ssm", region)


def api_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn botocore failures escaping a public function into a one-line CloudAPIError."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            raise CloudAPIError(f"EC2 {e.operation_name} failed: {message(e)} ({code(e)})") from e
        except BotoCoreError as e:
            raise CloudAPIError(f"EC2 call failed: {e}") from e

    return wrapper


def code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def message(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Message", str(exc))


def backoff_delay(attempt: int) -> float:
    """Seconds before retry `attempt` (1, 2, ...): botocore's own jittered exponential
    backoff, the one its clients use, for the calls retried by hand."""
    return _backoff.delay_amount(RetryContext(attempt_number=attempt))


def until_found(call: Callable[[], R], *, timeout: float = NOT_FOUND_S) -> R:
    """`call()`, again while EC2 answers *.NotFound for ids created moments ago.

    Backs off as botocore's clients do; after `timeout` seconds the NotFound
    itself is raised (the id really does not exist). Use it for the first calls
    that name a new instance, group or key pair: AWS's own advice for
    eventual consistency.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return call()
        except ClientError as e:
            attempt += 1
            delay = backoff_delay(attempt)
            if code(e) not in NOT_FOUND_CODES or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)


def poll_delay(timeout: float) -> float:
    """Seconds between polls of a wait bounded by `timeout`."""
    return min(MAX_POLL_S, max(MIN_POLL_S, timeout / 60))


def poll_delays() -> Iterator[float]:
    """Seconds between polls of a state change: `FIRST_POLL_S`, growing to `MAX_POLL_S`."""
    delay = FIRST_POLL_S
    while True:
        yield delay
        delay = min(delay * POLL_GROWTH, MAX_POLL_S)


def waiter_config(timeout: float) -> dict[str, Any]:
    delay = poll_delay(timeout)
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout / delay))}


def tags(values: dict[str, str]) -> list[dict[str, str]]:
    """Tags as the API takes them, sorted so requests are deterministic."""
    return [{"Key": k, "Value": v} for k, v in sorted(values.items())]


def tag_dict(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def by_tag(key: str, value: str) -> dict[str, Any]:
    return {"Name": f"tag:{key}", "Values": [value]}


def ours(cluster: str) -> list[dict[str, Any]]:
    """Filters for resources this tool created for `cluster` (never the user's own)."""
    return [by_tag(CLUSTER_TAG, cluster), by_tag(CREATED_BY_TAG, TOOL)]


def live(cluster: str) -> list[dict[str, Any]]:
    """Filters for the cluster's instances that are not terminated."""
    return [by_tag(CLUSTER_TAG, cluster), {"Name": "instance-state-name", "Values": LIVE_STATES}]


def instances(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every instance matching `filters`, across pages."""
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for res in page["Reservations"] for i in res["Instances"]]
