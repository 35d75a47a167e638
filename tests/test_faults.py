"""`up` under injected EC2 faults, and what it leaves open, against moto.

moto answers the k-th EC2 request of `up`'s cloud phase with an error instead
of acting on it, as AWS does when it throttles or has no capacity, so botocore
parses and retries it exactly as it would an answer from AWS: throttling and
capacity errors on ordinary calls are retried away by the clients' retry
config, capacity errors on RunInstances move the launch to the next zone, and
a generic error (UnauthorizedOperation, never retried) must surface as one line
naming the step. Whatever happened, `down` must then leave nothing tagged with
the cluster, and a clean `up` must converge to one master and N workers, each
named once.

`up` runs for real with a configure strategy that stops where SSH would start
(no wheelhouse, no SSH), so these tests follow `up` as it changes.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.retries.bucket
import botocore.retries.standard
import moto.kms.models
import pytest
from botocore.awsrequest import AWSResponse
from click.testing import CliRunner
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from provision import cloud, configure, lifecycle, state
from provision.cli import main
from provision.cloud.aws import api
from provision.cloud.common import CLUSTER_TAG, MASTER, ROLE_TAG, WORKER, Region
from provision.config import load_config
from provision.errors import ProvisionError
from provision.nodes.remote import NodeError

REGION = Region("us-east-1")
CIDR = "203.0.113.7/32"
WORKERS = 2
SECRET = "SECRETVALUE123"

CONFIG = """\
default: aws
clusters:
  aws:
    region: us-east-1
    name: {name}
    instance_type: c5.large
    image_id: ami-760aaa0f
    ssh_cidr: {cidr}
    cluster_size: {size}
    spot_bid: 0.10
{key}"""

# The EC2 requests of `up` before SSH, in order, for a cluster of 1 + 2 on
# spot workers in a fresh region. test_the_cloud_phase_makes_exactly_these_ec2_calls
# keeps it honest: when `up` changes, update this list.
SEQUENCE = (
    # prepare: validate before creating anything (type, network, image and its user)
    "DescribeInstanceTypes",
    "DescribeVpcs",
    "DescribeSubnets",
    "DescribeImages",
    "DescribeImages",
    # ensure_security_group: in the network's VPC
    "DescribeVpcs",
    "DescribeSubnets",
    "DescribeSecurityGroups",
    "CreateSecurityGroup",
    "AuthorizeSecurityGroupIngress",
    # ensure_key_pair
    "DescribeKeyPairs",
    "ImportKeyPair",
    # reconcile: describe_cluster
    "DescribeInstances",
    "DescribeSecurityGroups",
    "DescribeKeyPairs",
    # launch the master (on-demand)
    "DescribeInstances",
    "DescribeImages",
    "DescribeVpcs",
    "DescribeSubnets",
    "DescribeInstanceTypeOfferings",
    "RunInstances",
    "CreateTags",
    # launch the workers (spot)
    "DescribeInstances",
    "DescribeSpotPriceHistory",
    "DescribeImages",
    "DescribeVpcs",
    "DescribeSubnets",
    "DescribeInstanceTypeOfferings",
    "RunInstances",
    "CreateTags",
    "CreateTags",
    # reconcile: describe_cluster again, and the new nodes by id
    "DescribeInstances",
    "DescribeSecurityGroups",
    "DescribeKeyPairs",
    "DescribeInstances",
)

# Error code, HTTP status (as EC2 sends them), and whether `up` must survive it.
KINDS = {
    "throttling": ("RequestLimitExceeded", 503, True),
    "capacity": ("InsufficientInstanceCapacity", 500, True),
    "generic": ("UnauthorizedOperation", 403, False),
}
# Calls whose failure `up` may ignore: spot prices only order zones and warn.
OPTIONAL = {"DescribeSpotPriceHistory"}
CASES = [
    pytest.param(kind, k, id=f"{kind}-{k:02d}-{op}")
    for kind in KINDS
    for k, op in enumerate(SEQUENCE, start=1)
]


class _Raw:
    """The body of a fake HTTP response, as botocore reads it."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


class Faults:
    """Counts EC2 requests and answers the armed one with an error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.calls: list[str] = []
        self.fail_at: int | None = None
        self.kind = "generic"
        self.injected: str | None = None

    def arm(self, k: int, kind: str) -> None:
        self.calls, self.fail_at, self.kind, self.injected = [], k, kind, None

    def disarm(self) -> None:
        self.fail_at = None

    def answer(self, request: Any, op: str) -> AWSResponse | None:
        """The error response for this request, or None to let moto act on it."""
        with self._lock:
            self.calls.append(op)
            if len(self.calls) != self.fail_at:
                return None
            self.injected = op
        code, status, _ = KINDS[self.kind]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>fault injected at call {self.fail_at}</Message>"
            f"</Error></Errors><RequestID>fault-{self.fail_at}</RequestID></Response>"
        )
        return AWSResponse(request.url, status, {}, _Raw(body.encode()))


FAULTS = Faults()
# boto3 builds a client class afresh for every client (~0.1 s for EC2's ~700
# operations) and the AWS provider asks for one per function; reusing them (same
# retry configs, made by api.client itself) keeps this module's ~120 runs of `up` cheap.
_CLIENTS: dict[Any, Any] = {}
_NAMES = itertools.count(1)
_KMS_KEYS = functools.cache(moto.kms.models.generate_private_key)


class StopBeforeSSH(Exception):
    """Raised where `up` would start SSH to the nodes: the cloud phase is over."""


class StopAtSSH(configure.Strategy):
    """A configure strategy that builds no wheelhouse and stops where SSH would start."""

    name = "stop-at-ssh"

    def start(self, ctx: Any) -> None:
        pass

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        raise StopBeforeSSH


@pytest.fixture
def region(
    moto_default_amis: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Any]:
    """moto's EC2, answering the armed request with an error instead of acting on it;
    retries keep their logic but not their waits. Yields a boto3 client for checks.

    boto3's default session is kept across tests (moto would drop it): a new
    one re-reads EC2's service model, which costs more than a run of `up`.
    """
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_SSM",
                "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION.name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("MOTO_AMIS_PATH", moto_default_amis)
    moto_answer = BotocoreStubber.__call__

    def answer(self: BotocoreStubber, event_name: str, request: Any, **kwargs: Any) -> Any:
        # moto's handler on every client's before-send. All handlers run and the
        # first response wins, so the fault must replace moto's, not precede it.
        ec2_request = self.enabled and event_name.startswith("before-send.ec2.")
        if ec2_request and (fault := FAULTS.answer(request, event_name.rsplit(".", 1)[-1])):
            return fault
        return moto_answer(self, event_name, request, **kwargs)

    monkeypatch.setattr(BotocoreStubber, "__call__", answer)
    # moto makes a fresh RSA key for EC2's default EBS encryption key after every reset.
    monkeypatch.setattr(moto.kms.models, "generate_private_key", _KMS_KEYS)
    # No waits: botocore's backoff (which launch's throttling retry uses too) and
    # adaptive mode's rate limit.
    monkeypatch.setattr(
        botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0
    )
    monkeypatch.setattr(botocore.retries.bucket.TokenBucket, "acquire", lambda self, *a, **kw: True)
    core = {"reset_boto3_session": False, "mock_credentials": False, "service_whitelist": None,
            "passthrough": {"urls": [], "services": []}}
    with mock_aws(config={"core": core}):
        yield _checker()


def _checker() -> Any:
    """A plain boto3 client to check what EC2 reports (one for the module: see _CLIENTS)."""
    if "checker" not in _CLIENTS:
        _CLIENTS["checker"] = boto3.client("ec2", region_name=REGION.name)
    return _CLIENTS["checker"]


@pytest.fixture
def name(region: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A cluster name of its own, a fresh home and state directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home/.config"))
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    return f"c{next(_NAMES):03d}"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def cfg(tmp_path: Path, key: Path, name: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        CONFIG.format(name=name, cidr=CIDR, size=1 + WORKERS, key=f"    key_path: {key}\n")
    )
    return path


@pytest.fixture
def faults(region: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    """The fault switch, with the AWS provider's clients reused across tests."""
    make = api.client

    def client(service: str, region: Region, *, fail_fast: bool = False) -> Any:
        key = (service, region.name, region.endpoint_url, fail_fast)
        if key not in _CLIENTS:
            _CLIENTS[key] = make(service, region, fail_fast=fail_fast)
        return _CLIENTS[key]

    monkeypatch.setattr(api, "client", client)
    FAULTS.reset()
    yield FAULTS
    FAULTS.reset()


def up_until_ssh(cfg: Path) -> Exception | None:
    """Run `up` until it would SSH to the nodes: None, or the one-line error it raised."""
    try:
        lifecycle.up(load_config(cfg), configure_with=StopAtSSH())
    except StopBeforeSSH:
        return None
    except ProvisionError as err:
        return err
    raise AssertionError("up went past its cloud phase")


def assert_converged(client: Any, name: str) -> None:
    """One master and WORKERS workers, each named once; one group, one key pair."""
    tag = [{"Name": f"tag:{CLUSTER_TAG}", "Values": [name]}]
    alive = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    found = client.describe_instances(Filters=tag + alive)["Reservations"]
    tags = [
        {t["Key"]: t["Value"] for t in i.get("Tags", [])} for r in found for i in r["Instances"]
    ]
    assert sorted(t[ROLE_TAG] for t in tags) == [MASTER] + [WORKER] * WORKERS
    names = sorted(t.get("Name", "") for t in tags)
    assert names == ["master"] + [f"node{n:03d}" for n in range(1, WORKERS + 1)], names
    assert len(client.describe_security_groups(Filters=tag)["SecurityGroups"]) == 1
    assert len(client.describe_key_pairs(Filters=tag)["KeyPairs"]) == 1


def assert_one_line_naming_the_step(err: Exception, op: str) -> None:
    text = str(err)
    assert "\n" not in text and text.strip(), text
    assert op in text or (op == "RunInstances" and text.startswith("launching ")), text


def down_leaves_nothing(name: str) -> None:
    """`down` raises unless cloud.leftovers (instances, spot requests, volumes, groups,
    key pairs tagged with the cluster) comes back empty; it also forgets the record."""
    lifecycle.down(name, region=REGION)
    assert state.load(name) == {}


def test_the_cloud_phase_makes_exactly_these_ec2_calls(faults, region, cfg, name):
    assert up_until_ssh(cfg) is None
    assert tuple(faults.calls) == SEQUENCE, "up changed: update SEQUENCE in this module"
    assert_converged(region, name)
    down_leaves_nothing(name)


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_a_fault_at_any_ec2_call_is_retried_or_one_line_and_down_then_leaves_nothing(
    faults, region, cfg, name, kind, k
):
    op = SEQUENCE[k - 1]
    faults.arm(k, kind)
    err = up_until_ssh(cfg)
    faults.disarm()
    assert faults.injected == op
    if KINDS[kind][2] or op in OPTIONAL:
        assert err is None, f"{kind} at {op} should have been retried away: {err}"
        assert_converged(region, name)
    else:
        assert err is not None, f"{kind} at {op} went unnoticed"
        assert_one_line_naming_the_step(err, op)
    down_leaves_nothing(name)


@pytest.mark.parametrize(
    "k", range(1, len(SEQUENCE) + 1), ids=[f"{k:02d}-{op}" for k, op in enumerate(SEQUENCE, 1)]
)
def test_up_after_a_failed_call_converges_without_duplicates(faults, region, cfg, name, k):
    faults.arm(k, "generic")
    up_until_ssh(cfg)
    faults.disarm()
    assert faults.injected == SEQUENCE[k - 1]
    assert up_until_ssh(cfg) is None
    assert_converged(region, name)


@pytest.mark.parametrize("op", ["CreateSecurityGroup", "ImportKeyPair", "RunInstances"])
def test_provision_up_exits_1_with_one_line_when_an_ec2_call_fails(
    faults, cfg, name, op, monkeypatch
):
    monkeypatch.setitem(configure.STRATEGIES, "fabric", StopAtSSH)  # what `provision up` picks
    faults.arm(SEQUENCE.index(op) + 1, "generic")
    result = CliRunner().invoke(main, ["up", "--config", str(cfg)], catch_exceptions=False)
    faults.disarm()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "UnauthorizedOperation" in errors[0] or "launching" in errors[0], result.output
    down = CliRunner().invoke(main, ["down", name, "--yes"], catch_exceptions=False)
    assert down.exit_code == 0, down.output
    assert not any(cloud.leftovers(REGION, name).values())


# --- what `up` does with the nodes' outcomes ---------------------------------------


class FailingMaster(StopAtSSH):
    """The master fails configuration; the workers would have been fine."""

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        return {n.label: NodeError("no python3") if n.role == MASTER else None for n in nodes}


class Node001FailsOnce(StopAtSSH):
    """node001 fails configuration; the strategy then stops where SSH to its
    replacement would start."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        self.calls.append([n.label for n in nodes])
        if len(self.calls) > 1:
            raise StopBeforeSSH
        return {n.label: NodeError("no python3") if n.name == "node001" else None for n in nodes}


def test_a_master_that_fails_configuration_fails_up_saying_how_to_retry(faults, region, cfg, name):
    with pytest.raises(ProvisionError) as err:
        lifecycle.up(load_config(cfg), configure_with=FailingMaster())

    assert str(err.value).startswith(
        "master i-"
    ) and "failed: no python3. Run `provision up`" in str(err.value)
    assert len(cloud.describe_cluster(REGION, name).alive) == 1 + WORKERS  # nothing torn down
    down_leaves_nothing(name)


def test_a_failed_worker_is_terminated_and_with_replace_failed_replaced(faults, region, cfg, name):
    strategy = Node001FailsOnce()

    with pytest.raises(StopBeforeSSH):
        lifecycle.up(load_config(cfg), replace_failed=True, configure_with=strategy)

    first, again = strategy.calls
    assert first == ["master", "node001", "node002"] and len(again) == 1
    gone = [i for i in cloud.describe_cluster(REGION, name).instances if i.state == "terminated"]
    assert [i.name for i in gone] == ["node001"]
    assert_converged(region, name)  # the replacement took the free name
    down_leaves_nothing(name)


# --- what `up` leaves open ------------------------------------------------------


def launch_with_a_key_up_makes(tmp_path: Path, name: str) -> Path:
    """`up` until SSH from a cluster file without key_path: `up` creates the key."""
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIG.format(name=name, cidr=CIDR, size=1 + WORKERS, key=""))
    assert up_until_ssh(path) is None
    return path


@pytest.fixture
def secured(faults: Faults, name: str, tmp_path: Path) -> Path:
    return launch_with_a_key_up_makes(tmp_path, name)


def test_up_opens_ssh_to_the_configured_cidr_only_and_everything_else_to_the_group(
    region, name, secured
):
    group_id = cloud.describe_cluster(REGION, name).security_group_id
    group = region.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    rules = {
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), source)
        for p in group["IpPermissions"]
        for source in [r["CidrIp"] for r in p.get("IpRanges", [])]
        + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
        + [r["PrefixListId"] for r in p.get("PrefixListIds", [])]
        + [g["GroupId"] for g in p.get("UserIdGroupPairs", [])]
    }
    assert rules == {("tcp", 22, 22, CIDR), ("-1", None, None, group_id)}


def test_up_requires_imdsv2_and_encrypts_root_volumes(region, name, secured):
    ids = [i.instance_id for i in cloud.describe_cluster(REGION, name).alive]
    found = [
        i
        for r in region.describe_instances(InstanceIds=ids)["Reservations"]
        for i in r["Instances"]
    ]
    assert len(found) == 1 + WORKERS
    assert {i["MetadataOptions"]["HttpTokens"] for i in found} == {"required"}
    attached = [{"Name": "attachment.instance-id", "Values": ids}]
    volumes = region.describe_volumes(Filters=attached)["Volumes"]
    assert len(volumes) == len(ids)
    assert all(v["Encrypted"] for v in volumes), volumes


def test_up_writes_the_key_and_local_state_private(name, secured):
    key = load_config(secured).key_path
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
    d = state.cluster_dir(name, create=False)
    for directory in (state.root(), d.parent, d):
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory
    files = [p for p in d.rglob("*") if p.is_file()]
    assert files, "up wrote no local state"
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}


def test_no_aws_secret_or_private_key_reaches_logs_or_status_json(
    region, name, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a session that reads SECRET
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="provision")  # the CLI sets its own level
    cfg = launch_with_a_key_up_makes(tmp_path, name)
    assert boto3.DEFAULT_SESSION.get_credentials().secret_key == SECRET  # up really signed with it
    result = CliRunner().invoke(main, ["status", name, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["nodes"]) == 1 + WORKERS
    lines = load_config(cfg).key_path.read_text().splitlines()
    private = [line for line in lines if line and not line.startswith("-----")]
    assert private
    seen = caplog.text + result.output
    assert "botocore" in caplog.text  # DEBUG logs were captured, requests included
    assert SECRET not in seen
    assert not [line for line in private if line in seen]
