"""`up` under injected faults, against moto: every request it makes, failed in
every way its service can fail (see `faultkit` for what is hooked and how).

Throttling, server and capacity errors are retried away (botocore's retry modes;
a capacity error on RunInstances moves the launch to the next zone); a generic
error (UnauthorizedOperation, AccessDenied, a checkip that does not answer) is
one line naming the step, except where it hits one worker while it is being
reached: that worker is reported failed and terminated, the rest goes on; and
where it hits a poll of a wait (until a node runs), which polls again. Whatever
happened, `down` then leaves nothing tagged with the cluster (the tests' own
oracle says so), and `up` again converges to one master and N workers, each
named once.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from faultkit import (
    CHECKIP,
    KINDS,
    REGION,
    WORKERS,
    StopAtSSH,
    assert_converged,
    down_leaves_nothing,
    run_up,
    service,
)
from oracle import assert_nothing_left

from provision import cloud, configure
from provision.cli import main
from provision.lifecycle import UpResult
from provision.progress import Reporter

pytest_plugins = ["faultkit"]  # region, faults, name, key, cfg

README = Path(__file__).resolve().parents[1] / "README.md"
NODES = ["master"] + [f"node{n:03d}" for n in range(1, WORKERS + 1)]


def _reach(node: str) -> tuple[tuple[str, str], ...]:
    """The requests of reaching a node that is still pending: wait until it runs
    (a poll; a failed poll is polled again), then describe it by id for its address
    (a tag query may not show it yet)."""
    return (("DescribeInstances", f"wait {node}"), ("DescribeInstances", f"reach {node}"))


def _described(step: str, new: bool = True) -> tuple[tuple[str, str], ...]:
    """describe_cluster (by tag), plus the nodes just launched by id."""
    tags = (("DescribeInstances", step), ("DescribeSecurityGroups", step),
            ("DescribeKeyPairs", step))
    return tags + ((("DescribeInstances", step),) if new else ())


def _launch(step: str, tags: int) -> tuple[tuple[str, str], ...]:
    return (("DescribeInstances", step), ("DescribeSpotPriceHistory", step),
            ("DescribeImages", step), ("DescribeVpcs", step), ("DescribeSubnets", step),
            ("DescribeInstanceTypeOfferings", step), ("RunInstances", step),
            *(("CreateTags", step),) * tags)


# The requests of `up` for a cluster of 1 + 2 (spot workers) in a fresh region, in
# order, with the step each belongs to. test_up_makes_exactly_these_requests keeps
# it honest: when `up` changes, update this list (and the README's figures).
SEQUENCE: tuple[tuple[str, str], ...] = (
    # prepare: validate before creating anything (type, network, image and its user)
    ("DescribeInstanceTypes", "prepare"),
    ("DescribeVpcs", "prepare"),
    ("DescribeSubnets", "prepare"),
    ("ssm:GetParameter", "prepare"),  # Ubuntu 24.04's image (not in moto: ParameterNotFound)
    ("ssm:GetParameter", "prepare"),  # Amazon Linux 2023's
    ("DescribeImages", "prepare"),  # its login user
    # preflight (provision check): what exists, zones, network, offering, spot prices,
    # vCPUs in use (quotas come from Service Quotas, not faulted here), the key pair
    *_described("preflight", new=False),
    ("DescribeAvailabilityZones", "preflight"),
    ("DescribeVpcs", "preflight"),
    ("DescribeInstanceTypeOfferings", "preflight"),
    ("DescribeSpotPriceHistory", "preflight"),
    ("DescribeInstances", "preflight"),
    ("DescribeKeyPairs", "preflight"),
    ("DescribeImages", "baked image"),  # whether the image is a baked one (its digest)
    (CHECKIP, "prepare"),  # no ssh_cidr: this machine's address
    # ensure_security_group: in the network's VPC
    ("DescribeVpcs", "group"),
    ("DescribeSubnets", "group"),
    ("DescribeSecurityGroups", "group"),
    ("CreateSecurityGroup", "group"),
    ("AuthorizeSecurityGroupIngress", "group"),
    # ensure_key_pair
    ("DescribeKeyPairs", "key pair"),
    ("ImportKeyPair", "key pair"),
    *_described("reconcile", new=False),
    # the master (on-demand, in the zone where spot is cheapest), then where it went
    *_launch("launch master", tags=1),
    *_described("master zone"),
    # the workers (spot; two tag calls: instances, then their spot requests' names)
    *_launch("launch workers", tags=2),
    *_described("reconcile"),
    # configure: reach each node (SSH itself is not here)
    *_reach("master"),
    *_reach("node001"),
    *_reach("node002"),
    # finish: the cluster as it runs, then its cost
    *_described("finish", new=False),
    ("DescribeInstanceTypes", "cost"),
    ("DescribeSpotPriceHistory", "cost"),
    ("DescribeSpotPriceHistory", "cost"),
)
OPS = [op for op, _ in SEQUENCE]
# Calls whose failure `up` may ignore: spot prices only order zones and estimate cost.
OPTIONAL = {"DescribeSpotPriceHistory"}
# Steps whose failure `up` may ignore: the hourly estimate it prints last,
OPTIONAL_STEPS = {"cost", "baked image"}  # and the note on a baked image's install
# Steps that poll: a failed poll is followed by the next one, until the wait's timeout.
POLLS = {f"wait {node}" for node in NODES}
CASES = [
    pytest.param(kind, k, id=f"{kind}-{k:02d}-{op.replace(':', '-')}")
    for k, op in enumerate(OPS, start=1)
    for kind in KINDS[service(op)]
]


class Notes(Reporter):
    """A quiet reporter that keeps the warnings `up` gives (a failed worker's)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def assert_one_line_naming_the_step(err: Exception, op: str) -> None:
    text = str(err)
    assert "\n" not in text and text.strip(), text
    if op == CHECKIP:
        assert "public IP" in text and "set ssh_cidr" in text, text
    else:
        name = op.split(":")[-1]
        assert name in text or (name == "RunInstances" and text.startswith("launching ")), text


def test_up_makes_exactly_these_requests(faults, region, cfg, name):
    result = run_up(cfg)
    assert isinstance(result, UpResult) and result.failed == [], result
    assert faults.calls == OPS, "up changed: update SEQUENCE in this module"
    assert result.engines == 2 * (1 + WORKERS)  # c5.large: an engine per vCPU
    assert_converged(region, name)
    down_leaves_nothing(region, name)


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_a_fault_at_any_request_is_retried_or_one_line_and_down_then_leaves_nothing(
    faults, region, cfg, name, kind, k
):
    op, step = SEQUENCE[k - 1]
    faults.arm(k, kind)
    notes = Notes()
    result = run_up(cfg, reporter=notes)
    faults.disarm()
    assert faults.injected == op
    survives = (KINDS[service(op)][kind][2] or op in OPTIONAL or step in POLLS
                or step in OPTIONAL_STEPS)
    worker = step.startswith("reach node") and step.split()[-1]
    if survives:
        assert isinstance(result, UpResult) and result.failed == [], (
            f"{kind} at {op} should have been retried away: {result}")
        assert_converged(region, name)
    elif worker:  # that worker alone fails, is named and terminated; the rest is up
        assert isinstance(result, UpResult), result
        assert result.failed == [worker], result.failed
        (warning,) = notes.warnings
        assert warning.startswith(f"{worker} (") and op in warning, warning
        alive = {i.name for i in cloud.describe_cluster(REGION, name).alive}
        assert alive == set(NODES) - {worker}
    else:
        assert isinstance(result, Exception), f"{kind} at {op} went unnoticed: {result}"
        assert_one_line_naming_the_step(result, op)
    down_leaves_nothing(region, name)


@pytest.mark.parametrize("k", range(1, len(OPS) + 1),
                         ids=[f"{k:02d}-{op.replace(':', '-')}" for k, op in enumerate(OPS, 1)])
def test_up_after_a_failed_request_converges_without_duplicates(faults, region, cfg, name, k):
    kind = "generic" if "generic" in KINDS[service(OPS[k - 1])] else "http-error"
    faults.arm(k, kind)
    run_up(cfg)
    faults.disarm()
    assert faults.injected == OPS[k - 1]
    again = run_up(cfg)
    assert isinstance(again, UpResult) and again.failed == [], again
    assert_converged(region, name)


def test_a_capacity_error_moves_the_launch_to_the_next_zone(faults, region, cfg, name):
    """Fails if the launch retried the zone that had no capacity (a retrying client
    instead of the zero-retry one) or gave up without trying the next zone."""
    k = OPS.index("RunInstances") + 1  # the master's launch
    faults.arm(k, "capacity")
    result = run_up(cfg)
    assert isinstance(result, UpResult) and result.failed == [], result
    first, second = faults.zones[:2]  # the master's two RunInstances (zone or subnet)
    assert first and second and first != second, faults.zones
    if second.startswith("subnet-"):
        second = region.describe_subnets(SubnetIds=[second])["Subnets"][0]["AvailabilityZone"]
    master = cloud.describe_cluster(REGION, name).master
    assert master is not None and master.zone == second
    assert faults.calls.count("RunInstances") == 3  # master twice, workers once
    down_leaves_nothing(region, name)


@pytest.mark.parametrize("op", ["CreateSecurityGroup", "ImportKeyPair", "RunInstances"])
def test_provision_up_exits_1_with_one_line_when_an_ec2_call_fails(
    faults, region, cfg, name, op, monkeypatch
):
    monkeypatch.setitem(configure.STRATEGIES, "fabric", StopAtSSH)  # what `provision up` picks
    # The op's first request, wherever it falls: the CLI asks for the plan (as
    # `provision check`) before `up` makes the requests SEQUENCE lists.
    faults.arm(0, "generic")  # counts, never fires by position
    count = faults.take
    monkeypatch.setattr(faults, "take", lambda o: count(o) or (
        "generic" if o == op and faults.calls.count(op) == 1 else None))
    result = CliRunner().invoke(main, ["up", "--config", str(cfg)], catch_exceptions=False)
    monkeypatch.setattr(faults, "take", count)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "UnauthorizedOperation" in errors[0] or "launching" in errors[0], result.output
    down = CliRunner().invoke(main, ["down", name, "--yes"], catch_exceptions=False)
    assert down.exit_code == 0, down.output
    assert_nothing_left(region, name)


def test_the_readme_says_what_the_fault_matrix_covers():
    text = " ".join(README.read_text().split())
    ec2 = {op for op in OPS if service(op) == "ec2"}
    said = re.search(r"each of the (\d+) requests .*? of (\d+) operations \((\d+) of EC2", text)
    assert said, "README: the fault-injection guarantee no longer says what it covers"
    assert tuple(map(int, said.groups())) == (len(OPS), len(set(OPS)), len(ec2))
