"""Fault injection for `up` against moto: every request `up` makes can be answered
with an error instead, as AWS (or checkip) would answer it.

What is hooked, in the order `up` makes its requests:

- **EC2 and SSM**: moto answers every boto3 request from a ``before-send``
  handler; ours answers the armed one with the error body the service's protocol
  uses (EC2's XML, SSM's JSON), so botocore parses and retries it exactly as it
  would an answer from AWS.
- **the caller-address lookup** (checkip, when no ``ssh_cidr`` is set): the
  provider's URL points at a local HTTP server that answers this machine's address,
  or, when armed, an HTTP error, a body that is no address, or nothing at all.
- **after SSH**: `ReachWithoutSSH` configures nodes as the Fabric strategy starts
  to (wait for each to run, find its address), with the SSH probe and the engines'
  client replaced, so the EC2 calls of reaching nodes, finishing `up` and its cost
  run for real.

Fixtures (``pytest_plugins = ["faultkit"]``): `region` (moto with the hooks; a
plain boto3 EC2 client to check with), `faults` (the switch), `name`, `key`, `cfg`.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import itertools
import json
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import botocore.retries.bucket
import botocore.retries.standard
import moto.kms.models
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber
from oracle import assert_nothing_left

from provision import configure, lifecycle, state
from provision.cloud.aws import api, network
from provision.cloud.common import CLUSTER_TAG, MASTER, ROLE_TAG, WORKER, Region
from provision.config import load_config
from provision.configure.base import Gateway, failed, reach
from provision.errors import ProvisionError
from provision.nodes import remote

REGION = Region("us-east-1")
CALLER_IP = "203.0.113.7"  # what the local checkip answers
CIDR = f"{CALLER_IP}/32"
WORKERS = 2
CHECKIP = "checkip"  # the caller-address lookup, among the operations of a sequence

CONFIG = """\
default: aws
clusters:
  aws:
    region: us-east-1
    name: {name}
    instance_type: c5.large
    cluster_size: {size}
    spot_bid: 0.10
{extra}"""

# Per service: kind -> (error code, HTTP status, whether `up` must get past it).
KINDS: dict[str, dict[str, tuple[str, int, bool]]] = {
    "ec2": {
        "throttling": ("RequestLimitExceeded", 503, True),
        "capacity": ("InsufficientInstanceCapacity", 500, True),
        "generic": ("UnauthorizedOperation", 403, False),
    },
    "ssm": {
        "throttling": ("ThrottlingException", 400, True),
        "generic": ("AccessDeniedException", 400, False),
    },
    # No retries: a failed lookup is one line saying to set ssh_cidr.
    CHECKIP: {
        "http-error": ("", 503, False),
        "not-an-address": ("", 200, False),
        "no-answer": ("", 0, False),
    },
}


def service(op: str) -> str:
    """"ec2" for EC2's operations, else the prefix (``ssm:GetParameter``) or checkip."""
    return op if op == CHECKIP else op.split(":", 1)[0] if ":" in op else "ec2"


class _Raw:
    """The body of a fake HTTP response, as botocore reads it."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


class Faults:
    """Counts `up`'s requests and answers the armed one with an error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.calls: list[str] = []
        self.zones: list[str | None] = []  # where each RunInstances went: zone or subnet, in order
        self.fail_at: int | None = None
        self.kind = "generic"
        self.injected: str | None = None

    def arm(self, k: int, kind: str) -> None:
        self.reset()
        self.fail_at, self.kind = k, kind

    def disarm(self) -> None:
        self.fail_at = None

    def take(self, op: str) -> str | None:
        """Count a request; the kind of fault to answer it with, or None."""
        with self._lock:
            self.calls.append(op)
            if len(self.calls) != self.fail_at:
                return None
            self.injected = op
            return self.kind

    def answer(self, request: Any, op: str) -> AWSResponse | None:
        """The error response for this boto3 request, or None to let moto act on it."""
        if op == "RunInstances":
            body = urllib.parse.parse_qs(_text(request.body))
            # the zone, or the subnet that pins it (a launch through a network interface)
            where = body.get("Placement.AvailabilityZone") or body.get(
                "NetworkInterface.1.SubnetId"
            )
            self.zones.append(where[0] if where else None)
        kind = self.take(op)
        if kind is None:
            return None
        code, status, _ = KINDS[service(op)][kind]
        message = f"fault injected at call {self.fail_at}"
        if service(op) == "ec2":
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>{code}</Code><Message>{message}</Message>"
                f"</Error></Errors><RequestID>fault-{self.fail_at}</RequestID></Response>"
            ).encode()
        else:  # JSON protocols
            body = json.dumps({"__type": code, "message": message}).encode()
        return AWSResponse(request.url, status, {}, _Raw(body))


def _text(body: Any) -> str:
    return body.decode() if isinstance(body, bytes) else str(body or "")


FAULTS = Faults()
# boto3 builds a client class afresh for every client (~0.1 s for EC2's ~700
# operations) and the AWS provider asks for one per function; reusing them (same
# retry configs, made by api.client itself) keeps the fault matrix cheap.
_CLIENTS: dict[Any, Any] = {}
_NAMES = itertools.count(1)
_KMS_KEYS = functools.cache(moto.kms.models.generate_private_key)


class _CheckIP(http.server.BaseHTTPRequestHandler):
    """checkip.amazonaws.com on loopback: this machine's address, or the armed fault."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        kind = FAULTS.take(CHECKIP)
        if kind == "no-answer":
            self.server.hung.wait(5)  # type: ignore[attr-defined] - until the test ends
            return
        status = 503 if kind == "http-error" else 200
        body = b"<html>busy</html>" if kind == "not-an-address" else f"{CALLER_IP}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def checkip() -> Iterator[str]:
    """The URL of the local checkip."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CheckIP)
    server.hung = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.hung.set()  # type: ignore[attr-defined]
    server.shutdown()


@pytest.fixture
def region(
    moto_amis: None, checkip: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Any]:
    """moto's EC2 and SSM and a local checkip, answering the armed request with an
    error; retries keep their logic but not their waits. Yields a boto3 client for checks.

    boto3's default session is kept across tests (moto would drop it): a new
    one re-reads EC2's service model, which costs more than a run of `up`.
    """
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_SSM",
                "AWS_PROFILE", "AWS_SESSION_TOKEN", "http_proxy", "HTTP_PROXY", "https_proxy",
                "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION.name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(network, "CHECKIP_URL", checkip)
    monkeypatch.setattr(network, "CHECKIP_TIMEOUT_S", 0.5)  # for "no-answer"
    moto_answer = BotocoreStubber.__call__

    def answer(self: BotocoreStubber, event_name: str, request: Any, **kwargs: Any) -> Any:
        # moto's handler on every client's before-send. All handlers run and the
        # first response wins, so the fault must replace moto's, not precede it.
        _, svc, op = event_name.split(".", 2)
        if self.enabled and svc in KINDS:
            fault = FAULTS.answer(request, op if svc == "ec2" else f"{svc}:{op}")
            if fault is not None:
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


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess

    path = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def cluster_file(path: Path, name: str, key: Path | None = None, **fields: str) -> Path:
    """A cluster file for `name`: 1 + WORKERS nodes on c5.large, spot workers; no
    image_id and no ssh_cidr unless given (so SSM and checkip are asked)."""
    extra = {**({"key_path": str(key)} if key else {}), **fields}
    path.write_text(CONFIG.format(name=name, size=1 + WORKERS,
                                  extra="".join(f"    {k}: {v}\n" for k, v in extra.items())))
    return path


@pytest.fixture
def cfg(tmp_path: Path, key: Path, name: str) -> Path:
    return cluster_file(tmp_path / "cluster.yaml", name, key)


@pytest.fixture
def faults(region: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    """The fault switch, with the AWS provider's clients reused across tests, and no
    SSH: `ReachWithoutSSH` finds nodes as if they answered, `up` finds its engines."""
    make = api.client

    def client(service: str, region: Region, *, fail_fast: bool = False) -> Any:
        key = (service, region.name, region.endpoint_url, fail_fast)
        if key not in _CLIENTS:
            _CLIENTS[key] = make(service, region, fail_fast=fail_fast)
        return _CLIENTS[key]

    monkeypatch.setattr(api, "client", client)
    monkeypatch.setattr(remote, "wait_for_ssh", lambda ep, timeout: 0.0)
    monkeypatch.setattr(lifecycle, "connect_client", _EnginesClient)
    FAULTS.reset()
    yield FAULTS
    FAULTS.reset()


class _EnginesClient:
    """What `up` asks of the engines' client: as many engines as it expects."""

    def __init__(
        self, client_json: Path, master: Any, *, n_engines: int, timeout: float,
        revive: Any = None,
    ) -> None:
        self.ids = list(range(n_engines))

    def close(self) -> None:
        pass


class StopBeforeSSH(Exception):
    """Raised where `up` would start SSH to the nodes: the cloud phase is over."""


class StopAtSSH(configure.Strategy):
    """A configure strategy that builds no wheelhouse and stops where SSH would start."""

    name = "stop-at-ssh"

    def start(self, ctx: Any) -> None:
        pass

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        raise StopBeforeSSH


class ReachWithoutSSH(StopAtSSH):
    """Reach every node as the built-in strategies do (wait until it runs, find its
    address, claim it), one after the other so the requests keep their order, with
    the SSH probe replaced (`faults`); a node that fails is reported as they report it.

    moto's instances run at once; on AWS they are still pending when configuration
    starts, so the nodes are handed to `reach` as pending, as AWS would describe them.
    """

    name = "reach-without-ssh"

    def configure(self, ctx: Any, nodes: Sequence[Any]) -> configure.Results:
        claim = threading.Lock()
        gateway = Gateway(ctx, has_master=any(n.role == MASTER for n in nodes))
        results: configure.Results = {}
        for node in nodes:
            try:
                reach(ctx, dataclasses.replace(node, state="pending"), claim, gateway)
                results[node.label] = None
            except Exception as err:  # noqa: BLE001 - reported per node, as Fabric does
                failed(ctx, node.label, err)
                results[node.label] = err
        return results


def run_up(cfg: Path, strategy: configure.Strategy | None = None, **kwargs: Any) -> Any:
    """Run `up` (by default through `ReachWithoutSSH`): its result, the one-line
    error it raised, or None when a `StopAtSSH` stopped it where SSH would start."""
    try:
        return lifecycle.up(load_config(cfg), configure_with=strategy or ReachWithoutSSH(),
                            **kwargs)
    except StopBeforeSSH:
        return None
    except ProvisionError as err:
        return err


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


def down_leaves_nothing(client: Any, name: str) -> None:
    """`down`, then the tests' own oracle: nothing tagged with the cluster is left,
    and the local record is gone."""
    lifecycle.down(name, region=REGION)
    assert_nothing_left(client, name)
    assert state.load(name) == {}
