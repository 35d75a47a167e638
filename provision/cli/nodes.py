"""Commands on a cluster's nodes: addnode, removenode, watch, restart-engines, ssh, exec,
put, get."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.markup import escape

from provision import files, lifecycle, locks, progress, removal
from provision.cli.common import config_options, err, json_option, out, settings
from provision.errors import BadInput, ProvisionError
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
@click.argument("nodes", nargs=-1, metavar="[NODE]...")
@click.option("-n", "newest", type=click.IntRange(min=1), metavar="K",
              help="Remove the K most recently launched workers instead of named ones.")
@config_options
def removenode(name: str, nodes: tuple[str, ...], newest: int | None, config_path: Path | None,
               template: str | None) -> None:
    """Remove workers: the NODEs named (node001, an index, an id or IP) or the newest K.

    Their engines are stopped first (ipyparallel has no drain: tasks they were
    running are retried on the other engines), then the instances are terminated.
    """
    gone = removal.removenode(name, list(nodes), newest=newest,
                              config=settings(config_path, template, name))
    for inst in gone:
        out.print(f"{name}: removed {inst.label} ({inst.instance_id})")


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


class _DashDash(click.Command):
    """Everything after ``--`` is the remote command, never NAME or NODE."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            args, ctx.meta["remote_command"] = args[:cut], args[cut + 1:]
        return super().parse_args(ctx, args)


def _remote_command(before: tuple[str, ...]) -> str | None:
    words = [*before, *click.get_current_context().meta.get("remote_command", [])]
    return " ".join(words) if words else None


@click.command(cls=_DashDash)
@click.argument("name")
@click.argument("node", required=False)
@click.argument("command", nargs=-1, metavar="[-- COMMAND...]")
@click.option("-A", "forward_agent", is_flag=True,
              help="Forward your SSH agent to the node (opt-in: root there can use it).")
@click.option("-u", "--user", help="Log in as USER (default: the image's user).")
@config_options
def ssh(name: str, node: str | None, command: tuple[str, ...], forward_agent: bool,
        user: str | None, config_path: Path | None, template: str | None) -> None:
    """Open a shell on NODE (default: the master), or run COMMAND there.

    \b
    NODE: master, node001, an index (0 is the master, 2 is node002), an id or IP.
      provision ssh c1                      # a shell on the master
      provision ssh c1 node002 -A           # with your agent forwarded
      provision ssh c1 1 -- df -h /srv      # a command (after --) on node001
    """
    ep = files.node_endpoint(settings(config_path, template, name), node)
    if user:
        ep = dataclasses.replace(ep, user=user)  # the jump host keeps the image's user
    # As provision reaches it: the cluster's known_hosts, a worker without a public
    # address through the master.
    args = transfer.ssh_argv(ep, _remote_command(command), batch=False, accept_new=True)
    if args is None:
        raise ProvisionError("ssh: no OpenSSH client (ssh) on PATH")
    if forward_agent:
        # The agent's socket itself: `IdentityAgent=none` (keep the agent out of
        # provision's own logins) makes ssh drop SSH_AUTH_SOCK, so `-A` would forward nothing.
        sock = os.environ.get("SSH_AUTH_SOCK")
        if not sock:
            raise BadInput("-A: no SSH agent to forward (SSH_AUTH_SOCK is not set)")
        args[1:1] = ["-o", f"ForwardAgent={sock}"]
    sys.exit(subprocess.call(args))


@click.command(name="exec", cls=_DashDash)
@click.argument("name")
@click.argument("command", nargs=-1, metavar="-- COMMAND...")
@click.option("--node", help="Only this node (default: every node).")
@click.option("--timeout", type=click.FloatRange(min=1), help="Seconds each node may take.")
@config_options
@json_option
def exec_(name: str, command: tuple[str, ...], node: str | None, timeout: float | None,
          config_path: Path | None, template: str | None, as_json: bool) -> None:
    """Run COMMAND on every node at once; each node's output and exit status.

    Exits 0 when COMMAND exited 0 on every node, else 1.

    \b
      provision exec c1 -- nproc
      provision exec c1 -- 'df -h /srv | tail -1'
    """
    line = _remote_command(command)
    if line is None:
        raise BadInput("COMMAND: give the command to run after --")
    ran = files.run_everywhere(settings(config_path, template, name), line, node, timeout)
    if as_json:
        out.print_json(json.dumps({k: _as_dict(v) for k, v in ran.items()}))
    else:
        for host, result in ran.items():
            _print_ran(host, result)
    failed = [h for h, r in ran.items() if not isinstance(r, files.Ran) or r.exit_status]
    if failed:
        err.print(f"{len(failed)} of {len(ran)} nodes failed: {', '.join(failed)}",
                  highlight=False)
        sys.exit(1)


def _as_dict(result: files.Ran | BaseException) -> dict[str, object]:
    if isinstance(result, files.Ran):
        return dataclasses.asdict(result)
    return {"exit_status": None, "stdout": "", "stderr": "", "error": str(result)}


def _print_ran(host: str, result: files.Ran | BaseException) -> None:
    if not isinstance(result, files.Ran):
        out.print(f"[bold]{escape(host)}[/]: [red]not run[/]: {escape(str(result))}")
        return
    style = "green" if result.exit_status == 0 else "red"
    out.print(f"[bold]{escape(host)}[/]: [{style}]exit {result.exit_status}[/]")
    for text, console in ((result.stdout, out), (result.stderr, err)):
        for row in text.splitlines():
            console.print(f"  {escape(row)}", highlight=False, soft_wrap=True)


@click.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, metavar="LOCAL... REMOTE")
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.option("--node", help="Only this node (default: every node).")
@config_options
def put(name: str, paths: tuple[str, ...], recursive: bool, node: str | None,
        config_path: Path | None, template: str | None) -> None:
    """Copy LOCAL files (globs, directories with -r) to REMOTE on every node (or --node).

    As scp: into REMOTE when it is a directory (or several LOCALs are given),
    else to REMOTE itself.
    """
    if len(paths) < 2:
        raise BadInput("REMOTE: give LOCAL... and then REMOTE")
    sources = files.expand_local(list(paths[:-1]), recursive)
    group = files.put(settings(config_path, template, name), sources, paths[-1], node)
    for host, n in group.succeeded.items():
        out.print(f"{host}: {paths[-1]} ({n} file{'s' * (n != 1)})")
    group.raise_for_failures()


@click.command()
@click.argument("name")
@click.argument("remote_path", metavar="REMOTE")
@click.argument("local", type=click.Path(path_type=Path))
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.option("--node", help="Node to copy from (default: the master).")
@config_options
def get(name: str, remote_path: str, local: Path, recursive: bool, node: str | None,
        config_path: Path | None, template: str | None) -> None:
    """Copy REMOTE (a glob is expanded on the node; directories with -r) from a node
    (default: the master) to LOCAL."""
    ep, n = files.get(settings(config_path, template, name), remote_path, local, node, recursive)
    out.print(f"{ep.name}:{remote_path} -> {local} ({n} file{'s' * (n != 1)})")


COMMANDS = (addnode, removenode, watch, restart_engines, ssh, exec_, put, get)
