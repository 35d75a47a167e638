"""Commands on a cluster's nodes: addnode, removenode, watch, restart-engines, ssh, put, get."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

from provision import files, lifecycle, locks, progress
from provision.cli.common import config_options, err, out, settings
from provision.errors import ProvisionError
from provision.nodes import transfer

WATCH_INTERVAL_S = 15


@click.command()
@click.argument("name")
@click.option("-n", "count", type=int, default=1, show_default=True,
              help="How many workers to add.")
@click.option("--spot-bid", type=float, metavar="PRICE",
              help="Max USD/hour (default: the cluster's bid).")
@config_options
def addnode(name: str, count: int, spot_bid: float | None, config_path: Path | None,
            template: str | None) -> None:
    """Add workers whose engines join the running controller (and running searches)."""
    cfg = settings(config_path, template, name)
    with progress.for_console(err) as reporter:
        result = lifecycle.addnode(name, count, bid=spot_bid, config=cfg, reporter=reporter)
    out.print(f"{name}: {len(result.cluster.nodes)} nodes, {result.engines} engines registered")


@click.command()
@click.argument("name")
@click.argument("node")
@config_options
def removenode(name: str, node: str, config_path: Path | None, template: str | None) -> None:
    """Stop NODE's engines (running tasks are retried elsewhere) and terminate it."""
    inst = lifecycle.removenode(name, node, config=settings(config_path, template, name))
    out.print(f"{name}: removed {inst.name} ({inst.instance_id})")


@click.command()
@click.argument("name")
@click.option("--interval", type=click.FloatRange(min=1), default=WATCH_INTERVAL_S,
              show_default=True, help="Seconds between checks.")
@click.option("--once", is_flag=True, help="Check and replace once, then exit.")
@click.option("--timeout", type=click.FloatRange(min=1), default=None,
              help="Stop watching after this many seconds.")
@config_options
def watch(name: str, interval: float, once: bool, timeout: float | None, config_path: Path | None,
          template: str | None) -> None:
    """Keep the cluster at its size: replace workers lost to spot interruptions.

    Replacements' engines join the running controller, so a running search uses
    them; the search's retries cover the tasks the lost node had.
    """
    cfg = settings(config_path, template, name)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with progress.for_console(err) as reporter:
            try:
                launched = lifecycle.keep_size(name, config=cfg, reporter=reporter)
            except locks.ClusterBusy as busy:  # e.g. an `up` or `addnode` at work: not fatal
                if once:
                    raise
                reporter.warn(f"{busy}; checking again in {interval:g} s")
                launched = 0
        if launched:
            out.print(f"{name}: replaced {launched} worker(s)")
        if once or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(interval)  # the user's polling interval, not a synchronisation


@click.command(name="restart-engines")
@click.argument("name")
@config_options
def restart_engines(name: str, config_path: Path | None, template: str | None) -> None:
    """Restart every engine (e.g. after a network cut)."""
    n = lifecycle.restart_engines(name, config=settings(config_path, template, name))
    out.print(f"{name}: {n} engines running")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("node", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@config_options
def ssh(name: str, node: str | None, command: tuple[str, ...], config_path: Path | None,
        template: str | None) -> None:
    """Open a shell on NODE (default: the master), or run COMMAND there."""
    ep = files.node_endpoint(settings(config_path, template, name), node)
    # As provision reaches it: the image's user, the cluster's known_hosts, a worker
    # without a public address through the master.
    args = transfer.ssh_argv(
        ep, " ".join(command) if command else None, batch=False, accept_new=True
    )
    if args is None:
        raise ProvisionError("ssh: no OpenSSH client (ssh) on PATH")
    sys.exit(subprocess.call(args))


@click.command()
@click.argument("name")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote_path", metavar="REMOTE")
@click.option("--node", help="Only this node (default: every node).")
@config_options
def put(name: str, local: Path, remote_path: str, node: str | None, config_path: Path | None,
        template: str | None) -> None:
    """Copy a LOCAL file to REMOTE on every node (or --node)."""
    group = files.put(settings(config_path, template, name), local, remote_path, node)
    for host in group.succeeded:
        out.print(f"{host}: {remote_path}")
    group.raise_for_failures()


@click.command()
@click.argument("name")
@click.argument("remote_path", metavar="REMOTE")
@click.argument("local", type=click.Path(path_type=Path))
@click.option("--node", help="Node to copy from (default: the master).")
@config_options
def get(name: str, remote_path: str, local: Path, node: str | None, config_path: Path | None,
        template: str | None) -> None:
    """Copy REMOTE from a node (default: the master) to LOCAL."""
    ep = files.get(settings(config_path, template, name), remote_path, local, node)
    out.print(f"{ep.name}:{remote_path} -> {local}")


COMMANDS = (addnode, removenode, watch, restart_engines, ssh, put, get)
