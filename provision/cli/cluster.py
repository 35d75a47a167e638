"""Commands on a cluster as a whole: init, check, spothistory, up, status, list, down,
inventory."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click

from provision import check as checks
from provision import configure, inventory, lifecycle, locks, progress, query
from provision.cli import limits, plots, tables
from provision.cli.common import config_options, err, json_option, out, settings
from provision.config import load_config, write_starter
from provision.context import resolve_region
from provision.errors import BadInput
from provision.schema import ClusterConfig

MAX_HISTORY_DAYS = 90  # what DescribeSpotPriceHistory keeps


@click.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--path", type=click.Path(path_type=Path),
              help="Where to write (default: your config directory).")
def init(force: bool, path: Path | None) -> None:
    """Write a commented starter cluster file."""
    written = write_starter(path, force=force)
    out.print(f"wrote {written}\nedit it, then: provision up")


WHEN = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"])


@click.command()
@click.argument("instance_type")
@click.option("--region", help="AWS region, or `sim` (default: from the cluster file).")
@click.option("--days", type=click.FloatRange(min=0.01, max=MAX_HISTORY_DAYS), default=1.0,
              show_default=True, help="History window, ending at --end.")
@click.option("--start", type=WHEN, help="Window start, UTC (e.g. 2026-11-20T08:00); "
                                         "overrides --days.")
@click.option("--end", type=WHEN, help="Window end, UTC (default: now).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png",
              help="Also draw the price per zone over the window into FILE.png.")
@config_options
@json_option
def spothistory(instance_type: str, region: str | None, days: float, start: dt.datetime | None,
                end: dt.datetime | None, plot: Path | None, config_path: Path | None,
                template: str | None, as_json: bool) -> None:
    """Spot prices of INSTANCE_TYPE per availability zone: current, average, max."""
    first, last = _window(days, start, end)
    cfg = settings(config_path, template, region=region, instance_type=instance_type)
    where, prices = query.spot_prices(cfg, instance_type, (last - first) / ONE_DAY, last)
    if plot is not None:
        series = query.price_series(where, instance_type, [p.zone for p in prices], first, last)
        plots.price_history(series, plot, f"{instance_type} spot price, {where.name}")
    if as_json:
        out.print_json(json.dumps([p.__dict__ for p in prices]))
        return
    span = f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"
    out.print(tables.spot_prices(f"{instance_type} spot prices, {span}, {where.name} (USD/hour)",
                                 prices))
    if prices:
        out.print(f"cheapest zone: {prices[0].zone}")
    if plot is not None:
        out.print(f"plot: {plot}")


ONE_DAY = dt.timedelta(days=1)


def _window(days: float, start: dt.datetime | None,
            end: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end] in UTC from the options; `BadInput` for a window EC2 cannot answer."""
    now = dt.datetime.now(dt.timezone.utc)
    last = now if end is None else end.replace(tzinfo=dt.timezone.utc)
    first = last - days * ONE_DAY if start is None else start.replace(tzinfo=dt.timezone.utc)
    if last > now:
        raise BadInput(f"--end: {last:%Y-%m-%d %H:%M} is in the future")
    if first >= last:
        raise BadInput(f"--start: {first:%Y-%m-%d %H:%M} is not before the end of the window")
    if now - first > MAX_HISTORY_DAYS * ONE_DAY:
        raise BadInput(f"--start: EC2 keeps {MAX_HISTORY_DAYS} days of spot prices")
    return first, last


def _print_check(report: checks.CheckReport, cfg: ClusterConfig) -> None:
    out.print(tables.findings(f"checks for cluster {cfg.name} ({cfg.region})", report.findings))
    if report.plan:
        out.print(tables.plan("what `up` would launch", report.plan, report.hourly,
                              report.price_source))
        out.print("plus data transfer out of AWS (results, `get`), if any")
        _print_limits(cfg, report.hourly)


@click.command()
@config_options
def check(config_path: Path | None, template: str | None) -> None:
    """Check everything `up` needs, creating nothing: credentials, region, network,
    instance type, image and its user, spot prices against the bid, vCPU quotas,
    key pair; then the plan and its hourly cost. Exit 2 when a check fails."""
    cfg = load_config(config_path, template)
    report = checks.check(cfg)
    _print_check(report, cfg)
    report.raise_for_failures("fix it, then run `provision check` again")


@click.command()
@click.option("-n", "--cluster-size", type=int, help="Total nodes, master included.")
@click.option("--spot-bid", type=float, metavar="PRICE",
              help="Max USD/hour per spot node (unset: on-demand).")
@click.option("--spot-master/--on-demand-master", default=None,
              help="Master on spot too (default: on-demand).")
@click.option("--name", help="Cluster name (default: from the cluster file).")
@click.option("--instance-type", help="A c-family type, e.g. c5.xlarge.")
@click.option("--region", help="AWS region, or `sim` for the simulated region.")
@click.option("--engines-per-node", type=int, help="Engines per node (default: vCPUs).")
@click.option("--autostop", metavar="DURATION",
              help="Stop by itself after this long idle (30m, 40s, 1.5h; a number is minutes), "
                   "laptop closed or not.")
@click.option("--max-hours", type=float, metavar="H",
              help="Stop by itself after H hours, busy or not (fractions allowed).")
@click.option("--replace-failed", is_flag=True,
              help="Replace workers that fail setup instead of just removing them.")
@click.option("--keep-failed", is_flag=True,
              help="Keep what a failed up launched, to look at it (it bills until `down`).")
@click.option("--dry-run", is_flag=True,
              help="Run the checks of `provision check` and show the plan; launch nothing.")
@click.option("--yes", "-y", is_flag=True,
              help="Do not ask before launching more than the cluster file's `confirm_above:` "
                   "USD/hour.")
@click.option("--configure-with", type=click.Choice(list(configure.STRATEGIES)),
              default=configure.DEFAULT, show_default=True,
              help="Configure nodes over Fabric, or with ansible/site.yml (needs ansible-core); "
                   "same result.")
@config_options
def up(config_path: Path | None, template: str | None, replace_failed: bool, keep_failed: bool,
       dry_run: bool, yes: bool, configure_with: str, **flags: Any) -> None:
    """Launch the cluster, configure every node, start the controller and engines.

    Checks first (as `provision check`) and launches nothing when one fails;
    prints what it will launch and its price per hour, and asks first when that
    passes the cluster file's `confirm_above:` (--yes skips the question). A
    failed up terminates what it launched (unless --keep-failed). Idempotent:
    run it again after a crash or Ctrl-C and it finishes the job without
    launching duplicates.
    """
    cfg = load_config(config_path, template, {k: v for k, v in flags.items() if v is not None})
    configure.strategy(configure_with).check()  # a missing tool is bad input, before the plan
    if dry_run:
        report = checks.check(cfg)
        _print_check(report, cfg)
        report.raise_for_failures("nothing was launched (--dry-run launches nothing anyway)")
        return
    with locks.cluster_lock(cfg.name, "up"):  # the plan and the launch: one `up` at a time
        checked = checks.check(cfg)
        _plan_and_confirm(cfg, checked, yes)
        with progress.for_console(err) as reporter:
            result = lifecycle.up(cfg, reporter, replace_failed=replace_failed,
                                  keep_failed=keep_failed, configure_with=configure_with,
                                  checked=checked)
    info = result.cluster
    rows = query.node_rows(info, query.cluster_costs(info.region, info, cfg))
    out.print(tables.nodes(f"cluster {info.name} ({info.region.name})", rows))
    cost = "unknown" if result.hourly_cost is None else f"${result.hourly_cost:.4f}/hour"
    out.print(f"[bold]{cfg.name}[/]: {len(info.nodes)} nodes, {result.engines} engines "
              f"registered, estimated {cost}")
    if result.failed:
        out.print(f"[yellow]failed and removed:[/] {', '.join(result.failed)}")
    if any(getattr(cfg, k) is not None for k in ("autostop", "max_hours", "budget")):
        out.print(f"{cfg.name}: {limits.describe(cfg.model_dump())}")
    out.print(
        f"connect from a notebook:\n  import provision\n  rc = provision.connect({cfg.name!r})"
    )


def _print_limits(cfg: ClusterConfig, hourly: float | None) -> None:
    line = limits.plan_costs(cfg, hourly)
    if line:
        out.print(line)


def _plan_and_confirm(cfg: ClusterConfig, report: checks.CheckReport, yes: bool) -> None:
    """Print what `up` will launch; ask first when it costs more than `confirm_above`.

    A failed check stops here, as in `up` itself (what `up` fixes and `check`
    only reports, the spot service-linked role, is a warning).
    """
    report.raise_for_failures()
    if not any(line.count for line in report.plan):
        return  # nothing to launch: `up` finishes what a previous one started
    zone = cfg.zone or "any zone (spot priced at the cheapest)"
    out.print(tables.plan(f"`up` will launch {cfg.instance_type} in {cfg.region}, {zone}",
                          report.plan, report.hourly, report.price_source))
    _print_limits(cfg, report.hourly)
    limit, hourly = cfg.confirm_above, report.hourly
    if yes or limit is None or (hourly is not None and hourly <= limit):
        return
    cost = "an unknown price" if hourly is None else f"${hourly:.4f}/hour"
    if not sys.stdin.isatty():
        raise BadInput(f"--yes: {cost} passes confirm_above (${limit:.2f}/hour) and there is no "
                       "terminal to confirm on; nothing was launched")
    click.confirm(f"launch it, at {cost} (above confirm_above: ${limit:.2f}/hour)?", abort=True)


@click.command()
@click.argument("name", required=False)
@click.option("--memory", is_flag=True,
              help="Also each host's memory as its engines see it: total, available, per engine.")
@config_options
@json_option
def status(name: str | None, memory: bool, config_path: Path | None, template: str | None,
           as_json: bool) -> None:
    """Nodes of a cluster: id, role, type, zone, lifecycle, state, IPs, uptime, cost; then
    autostop, max_hours and budget, with minutes idle (from the master's agent) and spend."""
    cfg = settings(config_path, template, name)
    found = query.cluster_status(cfg)
    region = found.info.region.name
    hosts = _host_memory(cfg.name) if memory and found.info.instances else None
    stops = limits.status_lines(cfg, found)
    if as_json:
        extra = {} if hosts is None else {"memory": [
            {**dataclasses.asdict(h), "available_per_engine": h.available_per_engine}
            for h in hosts
        ]}
        out.print_json(json.dumps({
            "name": cfg.name, "region": region, "expected_engines": found.expected_engines,
            "datasets": found.datasets, "nodes": found.rows, "autostop": stops,
            "controller": found.info.master is not None, **extra,
        }))
        return
    if not found.info.instances:
        out.print(f"no instances tagged with cluster {cfg.name!r} in {region}")
        return
    out.print(tables.nodes(f"cluster {cfg.name} ({region})", found.rows))
    limits.print_status(cfg.name, stops)
    if found.info.master is None:  # workers outlive a spot master: say what that means
        out.print(f"cluster {cfg.name} has no controller: its master is gone; `provision up` "
                  "replaces it (the workers and a search's journal are kept)", highlight=False)
    if hosts is not None:
        out.print(tables.host_memory(f"memory per host, cluster {cfg.name}", hosts))


def _host_memory(name: str) -> list[Any]:
    """`payload.host_memory` through a client of the cluster: one call per engine."""
    from payload import host_memory

    rc = lifecycle.connect(name)
    try:
        return sorted(host_memory(rc).values(), key=lambda h: min(h.engines))
    finally:
        rc.close()


@click.command(name="list")
@config_options
@json_option
def list_(config_path: Path | None, template: str | None, as_json: bool) -> None:
    """Clusters in the region (from tags) and the ones this machine remembers."""
    region, rows = query.clusters(settings(config_path, template))
    if as_json:
        out.print_json(json.dumps(rows))
        return
    out.print(tables.clusters(f"clusters ({region.name})", rows))
    for row in rows:
        if row["stopped_by_autostop"]:
            out.print(f"[yellow]{row['name']}: {limits.advice(row['name'])}[/]")


@click.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@config_options
def down(name: str, yes: bool, config_path: Path | None, template: str | None) -> None:
    """Terminate everything of cluster NAME: instances, spot requests, group, key pair."""
    cfg = settings(config_path, template, name)
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput("--yes: needed when there is no terminal to confirm on")
        click.confirm(f"terminate every resource of cluster {name!r} in {cfg.region}?", abort=True)
    region = resolve_region(cfg)
    with progress.for_console(err) as reporter:  # what it removes, and what it still waits for
        removed = lifecycle.down(name, region=region, reporter=reporter)
    summary = ", ".join(f"{v} {k}" for k, v in removed.items() if v) or "nothing (already gone)"
    out.print(f"{name}: removed {summary}; nothing tagged with it is left in {region.name}")


@click.command(name="inventory")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(inventory.FORMATS), default="yaml",
              show_default=True, help="Inventory file format.")
@click.option("--list", "as_list", is_flag=True,
              help="Dynamic inventory: every group and host, as JSON.")
@click.option("--host", "host", metavar="HOST",
              help="Dynamic inventory: one host's variables, as JSON.")
@config_options
def inventory_(name: str, fmt: str, as_list: bool, host: str | None, config_path: Path | None,
               template: str | None) -> None:
    """Ansible inventory of cluster NAME from its tags (groups master, workers), for
    ansible/site.yml."""
    doc = inventory.inventory(settings(config_path, template, name))
    if host is not None:
        click.echo(json.dumps(inventory.host(doc, host), indent=2))
    else:
        click.echo(inventory.render(doc, "json" if as_list else fmt), nl=False)


COMMANDS = (init, check, spothistory, up, status, list_, down, inventory_)
