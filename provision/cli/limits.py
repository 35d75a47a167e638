"""What stops a cluster by itself: the `autostop` command, and the lines `status`
and `list` print about it (the setting, minutes idle, spend against the budget,
and a cluster the agent already stopped)."""

from __future__ import annotations

from typing import Any

import click

from provision import autostop as limits_api
from provision import query
from provision.cli.common import config_options, out
from provision.context import context_for
from provision.durations import parse_duration, show_duration
from provision.errors import BadInput


def advice(name: str) -> str:
    return limits_api.ADVICE.format(name=name)


@click.command()
@click.argument("name")
@click.argument("idle", required=False, metavar="[DURATION]")
@click.option("--cancel", is_flag=True, help="The cluster no longer stops when idle.")
@click.option("--max-hours", type=float, metavar="H",
              help="Also stop after H hours of life, busy or not (fractions allowed).")
@click.option("--budget", type=float, metavar="USD", help="Also stop once it has cost USD.")
@config_options
def autostop(name: str, idle: str | None, cancel: bool, max_hours: float | None,
             budget: float | None, config_path: Any, template: Any) -> None:
    """Stop cluster NAME by itself after DURATION idle (30m, 40s, 1.5h; a number is
    minutes): no task queued or running and no client connected. An agent on the
    master watches, so it holds with your laptop closed; the instances then
    terminate and `provision down NAME` removes what is left (spot requests,
    security group). --cancel keeps the cluster up however long it idles."""
    if cancel and idle is not None:
        raise BadInput("--cancel: give either a DURATION or --cancel, not both")
    if not cancel and idle is None and max_hours is None and budget is None:
        raise BadInput("DURATION: missing (e.g. 30m), or --cancel, --max-hours, --budget")
    changes: dict[str, Any] = {"autostop": None} if cancel else {}
    for key, value in (("autostop", idle), ("max_hours", max_hours), ("budget", budget)):
        if value is not None:
            changes[key] = value
    ctx = limits_api.set_limits(name, changes)
    out.print(f"{name}: {describe(ctx.config.model_dump())}")


def describe(cfg: dict[str, Any], agent: dict[str, Any] | None = None,
             spent: float | None = None) -> str:
    """One line: the limits, and with the agent's state, how close each is."""
    parts = []
    if cfg.get("autostop"):
        idle = "" if agent is None else f" (idle {agent.get('idle_s', 0) / 60:.1f} min)"
        parts.append(f"autostop after {cfg['autostop']} idle{idle}")
    if cfg.get("max_hours"):
        parts.append(f"max {show_duration(cfg['max_hours'] * 3600)} of life")
    if cfg.get("budget"):
        so_far = "" if spent is None else f" (spent {_usd(spent, 4)})"
        parts.append(f"budget {_usd(cfg['budget'])}{so_far}")
    if not parts:
        return "no autostop, no max_hours, no budget: it runs until `provision down`"
    if agent is not None and agent.get("controller") not in (None, "ok"):
        parts.append(f"agent cannot see the controller: {agent['controller']}")
    return "; ".join(parts)


def plan_costs(cfg: Any, hourly: float | None) -> str | None:
    """For the plan before `up`: what each limit lets the cluster cost at `hourly`.

    The autostop window is what an idle cluster bills before it stops itself
    (after the last task, or when nothing is ever sent), `max_hours` the most it
    can bill in all; with no limit, what a day forgotten costs.
    """
    if hourly is None:
        return None
    parts = []
    if cfg.autostop:
        window = parse_duration(cfg.autostop) / 3600 * hourly
        parts.append(f"the autostop window ({cfg.autostop} idle) costs {_usd(window, 4)}")
    if cfg.max_hours:
        parts.append(f"max_hours {cfg.max_hours:g} caps it at {_usd(cfg.max_hours * hourly, 4)}")
    if cfg.budget:
        parts.append(f"budget {_usd(cfg.budget)} is {show_duration(cfg.budget / hourly * 3600)} "
                     "of this size")
    if not parts:
        return (f"no autostop: a day forgotten costs {_usd(24 * hourly)} "
                "(`up --autostop 30m`)")
    return "; ".join(parts)


def _usd(amount: float, digits: int = 2) -> str:
    """Dollars with cents, or with four decimals when less than a dollar (a test's budget)."""
    return f"${amount:.{2 if amount >= 1 else max(digits, 4)}f}"


def status_lines(cfg: Any, found: query.ClusterStatus) -> dict[str, Any]:
    """For `status`: the limits, the agent's state (over SSH to the master) and the
    spend so far; whether the agent already stopped the cluster."""
    info = found.info
    agent = None
    if info.master is not None:
        ctx = context_for(cfg)
        agent = limits_api.agent_state(ctx, info) if limits_api.wanted(ctx) else None
    spent = [c.so_far for c in found.costs.values() if c.so_far is not None]
    return {
        "setting": {k: getattr(cfg, k) for k in ("autostop", "max_hours", "budget")},
        "agent": agent, "spent": sum(spent) if spent else None,
        "stopped_by_autostop": query.stopped_by_autostop(info),
    }


def print_status(name: str, found: dict[str, Any]) -> None:
    if found["stopped_by_autostop"]:
        out.print(f"[yellow]{name}: {advice(name)}[/]")
        return
    out.print(describe(found["setting"], found["agent"], found["spent"]))


COMMANDS = (autostop,)
