"""One error hierarchy: every module's exception says its own exit status, and the
CLI maps by `isinstance`, so a new exception class needs no list anywhere."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from provision.cli import Main
from provision.client import EnginesTimeout
from provision.cloud.common import CloudAPIError, CloudError
from provision.config import ConfigError
from provision.configure.playbook import AnsibleError
from provision.errors import BadInput, ProvisionError, one_line_tail
from provision.nodes.fanout import GroupError, GroupResult
from provision.nodes.remote import NodeError
from provision.sim.hosts import SimError


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigError("cluster.yaml: clusters.x.spot_bid: must be a positive number"), 2),
        (SimError("the simulated region is not running"), 2),
        (CloudError("no spot capacity"), 1),
        (CloudAPIError("EC2 RunInstances failed"), 1),
        (NodeError("node001 (10.0.0.5): `true` exited 1"), 1),
        (GroupError(GroupResult(node001=NodeError("down"))), 1),
        (AnsibleError("ansible-playbook not found"), 1),
        (EnginesTimeout("only 1 of 2 engines registered"), 1),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_every_module_error_is_a_provision_error_with_its_exit_status(error, status):
    assert isinstance(error, ProvisionError)
    assert isinstance(error, BadInput) == (status == 2)
    assert error.exit_code == status


def test_an_engines_timeout_is_still_a_timeout_error():
    assert isinstance(EnginesTimeout("late"), TimeoutError)


def _cli_raising(error: BaseException) -> click.Group:
    @click.group(cls=Main)
    def cli() -> None:
        """A CLI with one command that fails."""

    @cli.command()
    def fail() -> None:
        raise error

    return cli


class BrandNewBadInput(BadInput):
    """Declared here, unknown to the CLI: its class alone must decide the status."""


class BrandNewFailure(ProvisionError):
    """Likewise, for a failure."""


@pytest.mark.parametrize(("error", "status"), [(BrandNewBadInput("bad --thing"), 2),
                                               (BrandNewFailure("it broke"), 1)])
def test_the_cli_maps_any_provision_error_by_its_class_to_one_line_and_its_status(error, status):
    result = CliRunner().invoke(_cli_raising(error), ["fail"])
    assert result.exit_code == status, result.output
    assert result.output.strip() == f"error: {error}"


def test_an_unexpected_error_exits_1_and_points_to_debug():
    result = CliRunner().invoke(_cli_raising(KeyError("surprise")), ["fail"])
    assert result.exit_code == 1
    assert "KeyError; --debug shows the traceback" in result.output


def test_one_line_tail_keeps_the_last_non_empty_lines_on_one_line():
    assert one_line_tail("a\nb\n\nc\nd\n\n") == "b | c | d"
    assert one_line_tail("x" * 500, width=10) == "x" * 10
