"""The `provision` command: parse, call the Python API, print with Rich.

Nothing here decides what happens in the cloud; it only turns flags into
config overrides, calls `provision.lifecycle` (or `provision.data`, the
payload), and renders the result. Errors become one line and an exit status:
2 for bad input (nothing was created), 1 for a failure, 130 for Ctrl-C.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from provision import cloud, context, lifecycle, state
from provision.config import ClusterConfig, load_config, write_starter
from provision.errors import BadInput, ProvisionError
from provision.progress import RichReporter

# Wide enough for the node table when output goes to a file or a pipe.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

# Besides ProvisionError (which carries its own exit status): failures raised
# by the payload, which cannot import provision, that still deserve one line.
PAYLOAD_FAILURES = (TimeoutError,)


class Main(click.Group):
    """Turns known errors into one line; `--debug` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:  # one line, like every other bad input
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            err.print(f"[red]error:[/] {escape(e.format_message())}{where}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]: run the same command again to finish, "
                      "or `provision down NAME --yes` to remove everything")
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - every error becomes one line
            if os.environ.get("PROVISION_DEBUG"):
                traceback.print_exc()
            known = isinstance(e, (ProvisionError, *PAYLOAD_FAILURES))
            hint = "" if known else f" ({type(e).__name__}; --debug shows the traceback)"
            err.print(f"[red]error:[/] {escape(str(e))}{hint}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code if isinstance(e, ProvisionError) else 1)


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["PROVISION_DEBUG"] = "1"


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config and --template, accepted by every command."""
    fn = click.option("--template", "-t", "template", metavar="NAME", help="Cluster template in the file (default: its `default:`).")(fn)
    fn = click.option(
        "--config", "-c", "config_path", type=click.Path(path_type=Path), metavar="PATH",
        help="Cluster file (default: the one `provision init` wrote).",
    )(fn)
    return fn


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def _config(config_path: Path | None, template: str | None, name: str | None = None, **overrides: Any) -> ClusterConfig:
    """Settings for a command: the cluster's cached record, else the file, then flags."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if name is not None:
        overrides["name"] = name
    record = state.load(name) if name else {}
    if record.get("config") and config_path is None and template is None:
        base = record["config"] | overrides
        try:
            return ClusterConfig.model_validate(base)
        except Exception as e:  # the cached record was valid; an override is not
            raise BadInput(str(e).splitlines()[0]) from e
    return load_config(config_path, template, overrides)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_debug, help="Show tracebacks.")
@click.version_option(package_name="provision")
def main() -> None:
    """Disposable EC2 spot clusters for scikit-learn model selection.

    \b
    A typical session (on the simulated region, no AWS account needed):
      provision sim up                      # EC2 API + real SSH hosts on this machine
      provision up -n 3 --spot-bid 0.10     # master + 2 workers, engines running
      provision put-data provision digits   # memmapped CV splits, once per host
      provision run provision gridsearch --data digits --model sklearn.svm.SVC \\
          --param 'C=logspace(-1,2,4)' --param 'gamma=logspace(-4,0,5)'
      provision down provision --yes        # nothing left billing

    On AWS, set `region:` in the cluster file (`provision init` writes one).
    """
    logger = logging.getLogger("provision")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=err, show_time=False, show_path=False, markup=False))
    logger.setLevel(logging.DEBUG if os.environ.get("PROVISION_DEBUG") else logging.WARNING)


@main.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--path", type=click.Path(path_type=Path), help="Where to write (default: your config directory).")
def init(force: bool, path: Path | None) -> None:
    """Write a commented starter cluster file."""
    written = write_starter(path, force=force)
    out.print(f"wrote {written}\nedit it, then: provision up")


@main.command()
@click.argument("instance_type")
@click.option("--region", help="AWS region, or `sim` (default: from the cluster file).")
@click.option("--days", type=click.FloatRange(min=0.01, max=90), default=1.0, show_default=True, help="History window.")
@config_options
@json_option
def spothistory(instance_type: str, region: str | None, days: float, config_path: Path | None,
                template: str | None, as_json: bool) -> None:
    """Spot prices of INSTANCE_TYPE per availability zone: current, average, max."""
    cfg = _config(config_path, template, region=region, instance_type=instance_type)
    reg = context.resolve_region(cfg)
    try:
        cloud.describe_instance_type(reg, instance_type)
    except cloud.CloudError as e:
        raise BadInput(f"INSTANCE_TYPE: {e}") from e
    prices = cloud.spot_price_history(reg, instance_type, days=days)
    if as_json:
        out.print_json(json.dumps([p.__dict__ for p in prices]))
        return
    table = Table(title=f"{instance_type} spot prices, last {days:g} day(s), {reg.name} (USD/hour)")
    for col in ("zone", "current", "average", "max", "samples"):
        table.add_column(col, justify="left" if col == "zone" else "right")
    for p in prices:
        table.add_row(p.zone, f"{p.current:.4f}", f"{p.average:.4f}", f"{p.maximum:.4f}", str(p.samples))
    out.print(table)
    if prices:
        out.print(f"cheapest zone: {prices[0].zone}")




@main.command()
@click.option("-n", "--cluster-size", type=int, help="Total nodes, master included.")
@click.option("--spot-bid", type=float, metavar="PRICE", help="Max USD/hour per spot node (unset: on-demand).")
@click.option("--spot-master/--on-demand-master", default=None, help="Master on spot too (default: on-demand).")
@click.option("--name", help="Cluster name (default: from the cluster file).")
@click.option("--instance-type", help="A c-family type, e.g. c5.xlarge.")
@click.option("--region", help="AWS region, or `sim` for the simulated region.")
@click.option("--engines-per-node", type=int, help="Engines per node (default: vCPUs).")
@click.option("--replace-failed", is_flag=True, help="Replace workers that fail setup instead of just removing them.")
@click.option("--configure-with", type=click.Choice(["fabric", "ansible"]), default="fabric", show_default=True,
              help="Configure nodes over Fabric, or with ansible/site.yml (needs ansible-core); same result.")
@config_options
def up(config_path: Path | None, template: str | None, replace_failed: bool, configure_with: str, **flags: Any) -> None:
    """Launch the cluster, configure every node, start the controller and engines.

    Idempotent: run it again after a crash or Ctrl-C and it finishes the job
    without launching duplicates.
    """
    cfg = load_config(config_path, template, {k: v for k, v in flags.items() if v is not None})
    with RichReporter(err) as reporter:
        result = lifecycle.up(cfg, reporter, replace_failed=replace_failed, configure_with=configure_with)
    _print_nodes(result.cluster, cfg)
    cost = "unknown" if result.hourly_cost is None else f"${result.hourly_cost:.4f}/hour"
    out.print(f"[bold]{cfg.name}[/]: {len(result.cluster.nodes)} nodes, {result.engines} engines registered, estimated {cost}")
    if result.failed:
        out.print(f"[yellow]failed and removed:[/] {', '.join(result.failed)}")
    out.print(f"connect from a notebook:\n  import provision\n  rc = provision.connect({cfg.name!r})")


def _print_nodes(info: Any, cfg: ClusterConfig) -> None:
    out.print(_nodes_table(info, _prices(info.region, cfg.instance_type)))


def _prices(region: Any, instance_type: str) -> dict[str, float]:
    """Spot price per zone, plus "on-demand": the approximate list price."""
    try:
        prices = {p.zone: p.current for p in cloud.spot_price_history(region, instance_type, days=0.1)}
        od = cloud.describe_instance_type(region, instance_type).on_demand_price
    except cloud.CloudError:
        return {}
    if od is not None:
        prices["on-demand"] = od
    return prices


def _node_rows(info: Any, prices: dict[str, float]) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in sorted(info.instances, key=lambda i: (i.role != "master", i.name, i.instance_id)):
        hours = (now - i.launch_time).total_seconds() / 3600 if i.launch_time and i.state != "terminated" else 0.0
        price = prices.get(i.zone) if i.lifecycle == "spot" else prices.get("on-demand")
        rows.append({
            "id": i.instance_id, "name": i.name, "role": i.role, "type": i.instance_type, "zone": i.zone,
            "lifecycle": i.lifecycle, "state": i.state, "private_ip": i.private_ip, "public_ip": i.public_ip,
            "uptime_hours": round(hours, 3), "price_per_hour": price,
            "cost_so_far": None if price is None else round(price * hours, 6),
        })
    return rows


def _nodes_table(info: Any, prices: dict[str, float]) -> Table:
    table = Table(title=f"cluster {info.name} ({info.region.name})", title_justify="left")
    for c in ("id", "name", "role", "type", "zone", "market", "state", "private ip", "public ip",
              "uptime", "$/hour", "cost so far"):
        table.add_column(c, no_wrap=True)
    for r in _node_rows(info, prices):
        table.add_row(
            r["id"], r["name"], r["role"], r["type"], r["zone"], r["lifecycle"], r["state"],
            r["private_ip"] or "-", r["public_ip"] or "-", f"{r['uptime_hours'] * 60:.0f} min",
            "-" if r["price_per_hour"] is None else f"{r['price_per_hour']:.4f}",
            "-" if r["cost_so_far"] is None else f"${r['cost_so_far']:.4f}",
        )
    return table


@main.command()
@click.argument("name", required=False)
@config_options
@json_option
def status(name: str | None, config_path: Path | None, template: str | None, as_json: bool) -> None:
    """Nodes of a cluster: id, role, type, zone, lifecycle, state, IPs, uptime, cost."""
    cfg = _config(config_path, template, name)
    reg = context.resolve_region(cfg)
    info = cloud.describe_cluster(reg, cfg.name)
    prices = _prices(reg, cfg.instance_type)
    record = state.load(cfg.name)
    if as_json:
        out.print_json(json.dumps({
            "name": cfg.name, "region": reg.name, "expected_engines": record.get("expected_engines"),
            "datasets": sorted(record.get("datasets", {})), "nodes": _node_rows(info, prices),
        }))
        return
    if not info.instances:
        out.print(f"no instances tagged with cluster {cfg.name!r} in {reg.name}")
        return
    out.print(_nodes_table(info, prices))


@main.command(name="list")
@config_options
@json_option
def list_(config_path: Path | None, template: str | None, as_json: bool) -> None:
    """Clusters in the region (from tags) and the ones this machine remembers."""
    cfg = _config(config_path, template)
    reg = context.resolve_region(cfg)
    live = cloud.list_clusters(reg)
    rows = [{"name": n, "region": reg.name, "live": n in live, "local_record": n in state.known_clusters()}
            for n in sorted(set(live) | set(state.known_clusters()))]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"clusters ({reg.name})")
    for c in ("name", "live", "local record"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["name"], "yes" if r["live"] else "no", "yes" if r["local_record"] else "no")
    out.print(table)


@main.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@config_options
def down(name: str, yes: bool, config_path: Path | None, template: str | None) -> None:
    """Terminate everything of cluster NAME: instances, spot requests, group, key pair."""
    cfg = _config(config_path, template, name)
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput("--yes: needed when there is no terminal to confirm on")
        click.confirm(f"terminate every resource of cluster {name!r} in {cfg.region}?", abort=True)
    reg = context.resolve_region(cfg)
    removed = lifecycle.down(name, region=reg)
    summary = ", ".join(f"{v} {k}" for k, v in removed.items() if v) or "nothing (already gone)"
    out.print(f"{name}: removed {summary}; nothing tagged with it is left in {reg.name}")


@main.command()
@click.argument("name")
@click.option("-n", "count", type=int, default=1, show_default=True, help="How many workers to add.")
@click.option("--spot-bid", type=float, metavar="PRICE", help="Max USD/hour (default: the cluster's bid).")
@config_options
def addnode(name: str, count: int, spot_bid: float | None, config_path: Path | None, template: str | None) -> None:
    """Add workers whose engines join the running controller (and running searches)."""
    cfg = _config(config_path, template, name)
    with RichReporter(err) as reporter:
        result = lifecycle.addnode(name, count, bid=spot_bid, config=cfg, reporter=reporter)
    out.print(f"{name}: {len(result.cluster.nodes)} nodes, {result.engines} engines registered")


@main.command()
@click.argument("name")
@click.argument("node")
@config_options
def removenode(name: str, node: str, config_path: Path | None, template: str | None) -> None:
    """Stop NODE's engines (running tasks are retried elsewhere) and terminate it."""
    cfg = _config(config_path, template, name)
    inst = lifecycle.removenode(name, node, config=cfg)
    out.print(f"{name}: removed {inst.name} ({inst.instance_id})")


@main.command()
@click.argument("name")
@click.option("--interval", type=click.FloatRange(min=1), default=15, show_default=True, help="Seconds between checks.")
@click.option("--once", is_flag=True, help="Check and replace once, then exit.")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Stop watching after this many seconds.")
@config_options
def watch(name: str, interval: float, once: bool, timeout: float | None, config_path: Path | None,
          template: str | None) -> None:
    """Keep the cluster at its size: replace workers lost to spot interruptions.

    Replacements' engines join the running controller, so a running search uses
    them; the search's retries cover the tasks the lost node had.
    """
    cfg = _config(config_path, template, name)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with RichReporter(err) as reporter:
            launched = lifecycle.keep_size(name, config=cfg, reporter=reporter)
        if launched:
            out.print(f"{name}: replaced {launched} worker(s)")
        if once or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(interval)


@main.command(name="restart-engines")
@click.argument("name")
@config_options
def restart_engines(name: str, config_path: Path | None, template: str | None) -> None:
    """Restart every engine (e.g. after a network cut)."""
    cfg = _config(config_path, template, name)
    n = lifecycle.restart_engines(name, config=cfg)
    out.print(f"{name}: {n} engines running")


@main.command(name="inventory")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["yaml", "ini", "json"]), default="yaml", show_default=True,
              help="Inventory file format.")
@click.option("--list", "as_list", is_flag=True, help="Dynamic inventory: every group and host, as JSON.")
@click.option("--host", "host", metavar="HOST", help="Dynamic inventory: one host's variables, as JSON.")
@config_options
def inventory_(name: str, fmt: str, as_list: bool, host: str | None, config_path: Path | None,
               template: str | None) -> None:
    """Ansible inventory of cluster NAME from its tags (groups master, workers), for ansible/site.yml."""
    from provision import inventory

    doc = inventory.inventory(_config(config_path, template, name))
    if host is not None:
        click.echo(json.dumps(inventory.host(doc, host), indent=2))
    else:
        click.echo(inventory.render(doc, "json" if as_list else fmt), nl=False)


def _node_endpoint(name: str, node: str | None, config_path: Path | None, template: str | None) -> Any:
    cfg = _config(config_path, template, name)
    ctx = context.context_for(cfg)
    info = cloud.describe_cluster(ctx.region, name)
    inst = info.find(node) if node else info.master
    if inst is None:
        raise BadInput(f"NODE: no node {node!r} in cluster {name!r}" if node else f"cluster {name!r} has no master")
    return ctx.endpoint(inst)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("node", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@config_options
def ssh(name: str, node: str | None, command: tuple[str, ...], config_path: Path | None, template: str | None) -> None:
    """Open a shell on NODE (default: the master), or run COMMAND there."""
    ep = _node_endpoint(name, node, config_path, template)
    args = ["ssh", "-i", str(ep.key_path), "-o", f"UserKnownHostsFile={ep.known_hosts}",
            "-o", "StrictHostKeyChecking=accept-new", f"{ep.user}@{ep.host}", *command]
    sys.exit(subprocess.call(args))


@main.command()
@click.argument("name")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote_path", metavar="REMOTE")
@click.option("--node", help="Only this node (default: every node).")
@config_options
def put(name: str, local: Path, remote_path: str, node: str | None, config_path: Path | None, template: str | None) -> None:
    """Copy a LOCAL file to REMOTE on every node (or --node)."""
    from provision.nodes import remote

    cfg = _config(config_path, template, name)
    ctx = context.context_for(cfg)
    info = cloud.describe_cluster(ctx.region, name)
    nodes = [info.find(node)] if node else info.nodes
    if None in nodes:
        raise BadInput(f"--node: no node {node!r} in cluster {name!r}")
    from provision.nodes import fanout

    group = fanout.on_hosts(lambda ep: remote.put(ep, local, remote_path), [ctx.endpoint(i) for i in nodes])
    for host in group.succeeded:
        out.print(f"{host}: {remote_path}")
    group.raise_for_failures()


@main.command()
@click.argument("name")
@click.argument("remote_path", metavar="REMOTE")
@click.argument("local", type=click.Path(path_type=Path))
@click.option("--node", help="Node to copy from (default: the master).")
@config_options
def get(name: str, remote_path: str, local: Path, node: str | None, config_path: Path | None, template: str | None) -> None:
    """Copy REMOTE from a node (default: the master) to LOCAL."""
    from provision.nodes import remote

    ep = _node_endpoint(name, node, config_path, template)
    remote.get(ep, remote_path, local)
    out.print(f"{ep.name}:{remote_path} -> {local}")


def _register_optional() -> None:
    """Sub-commands that live in their own modules."""
    from provision.sim.cli import sim

    main.add_command(sim)
    try:
        from provision.cli_data import put_data, run
    except ImportError:  # pragma: no cover - during development only
        return
    main.add_command(put_data)
    main.add_command(run)


_register_optional()


if __name__ == "__main__":  # pragma: no cover
    main()

