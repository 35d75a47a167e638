"""The minimal IAM policy (provision/iam-policy.json) allows every AWS action a session
makes, and holds nothing else.

A user's whole session runs on moto through the CLI: check, up, status,
put-data, addnode, image create/list/delete, down. Every API call is recorded from botocore's
``before-call`` event as ``prefix:Action`` (the signing name is the IAM
prefix for these services). Where a node would need SSH, a configure strategy
that reports success and a push that sends nothing stand in; the cloud side
runs as it does on AWS.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import test_cli
from test_cli import invoke

from provision import assets, configure, context, imaging, lifecycle, shipping, state
from provision.config import load_config

aws, cfg_file = test_cli.aws, test_cli.cfg_file  # moto, a cluster file of 1 + 2 spot nodes
README = Path(__file__).resolve().parents[1] / "README.md"

# In the policy for paths this session does not take, each with the reason.
NOT_REACHED = {
    "ec2:CancelSpotInstanceRequests": "down, when a spot request outlived its instance",
    "ec2:DeleteVolume": "down, when a volume was detached from its instance",
    "ec2:RevokeSecurityGroupIngress": "up from a new address replaces the old SSH rule",
    "servicequotas:GetAWSDefaultServiceQuota": "a quota with no applied value",
    "iam:CreateServiceLinkedRole": "the first spot launch of an account (moto names it wrong)",
}


class Ready(configure.Strategy):
    """Every node configured (no wheelhouse, no SSH)."""

    name = "ready"

    def start(self, ctx: Any) -> None:
        pass

    def configure(self, ctx: Any, nodes: Any) -> configure.Results:
        return {n.label: None for n in nodes}


class _Client:
    ids = [0, 1, 2]

    def close(self) -> None:
        pass


def allowed(policy: dict[str, Any]) -> list[str]:
    actions: list[str] = []
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        found = statement["Action"]
        actions += [found] if isinstance(found, str) else found
    return actions


@pytest.fixture
def recorded(aws, monkeypatch) -> set[str]:
    """Every AWS action called from here on, as IAM names it."""
    calls: set[str] = set()
    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register(
        "before-call",
        lambda model, **kw: calls.add(f"{model.service_model.signing_name}:{model.name}"),
    )
    monkeypatch.setitem(configure.STRATEGIES, "fabric", Ready)
    monkeypatch.setattr(lifecycle, "connect_client", lambda *a, **kw: _Client())
    monkeypatch.setattr(shipping.transfer, "push_tree", lambda *a, **kw: None)
    monkeypatch.setattr(shipping.stream, "relay_stream",  # laptop -> master -> workers
                        lambda master, workers, *a, **kw: shipping.stream.Outcome(
                            bytes_to={leg.ep.name: 0 for leg in [master, *workers]}))
    # `image create` reads the node's digest and moves its keys aside over SSH.
    monkeypatch.setattr(imaging.bake, "env_digest", lambda *a: "0123456789abcdef")
    monkeypatch.setattr(imaging.bake, "stash", lambda *a: imaging.bake.Stash(b"", ""))
    monkeypatch.setattr(imaging.bake, "restore", lambda *a: None)
    return calls


def test_the_policy_allows_every_call_of_a_session_and_nothing_else(recorded, cfg_file):
    cfg = ["--config", str(cfg_file)]
    assert invoke("check", *cfg).exit_code == 0
    assert invoke("up", *cfg).exit_code == 0
    assert invoke("status", "unit", "--json").exit_code == 0
    assert invoke("put-data", "unit", "digits").exit_code == 0
    ctx = context.context_for(load_config(cfg_file))  # addnode needs the controller's files
    for path in ctx.connection_files:
        path.write_text("{}")
    assert invoke("addnode", "unit", "-n", "1", "--spot-bid", "0.1").exit_code == 0
    baked = invoke("image", "create", "unit", "--name", "unit-baked")
    assert baked.exit_code == 0, baked.output
    assert invoke("image", "list", *cfg).exit_code == 0
    assert invoke("image", "delete", "unit-baked", *cfg).exit_code == 0
    assert invoke("down", "unit", "--yes").exit_code == 0
    assert state.load("unit") == {}

    policy = json.loads(assets.iam_policy_path().read_text())
    actions = allowed(policy)
    missing = sorted(a for a in recorded if not any(fnmatch.fnmatchcase(a, p) for p in actions))
    assert not missing, f"add to provision/iam-policy.json (and the README): {missing}"
    unused = sorted(set(actions) - recorded - set(NOT_REACHED))
    assert not unused, f"not called by a session: remove from the policy, or say why: {unused}"
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "servicequotas:GetServiceQuota",
            "sts:GetCallerIdentity", "pricing:GetProducts", "iam:GetRole"} <= recorded


def test_the_readme_shows_the_policy_as_shipped():
    shipped = json.loads(assets.iam_policy_path().read_text())
    text = README.read_text()
    start = text.index("```json\n", text.index("## On AWS")) + len("```json\n")
    assert json.loads(text[start:text.index("```", start)]) == shipped
