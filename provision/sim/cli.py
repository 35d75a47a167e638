"""`provision sim ...`: parse, call `provision.sim`, print. No logic of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import click
from rich.console import Console
from rich.table import Table

from provision import sim as api
from provision.sim.hosts import SimError

T = TypeVar("T")


def _call(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Turn a SimError into a one-line CLI error (exit 1) instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except SimError as e:
        raise click.ClickException(str(e)) from e


@click.group()
def sim() -> None:
    """The simulated region: EC2 (moto) and namespace hosts on this machine."""


@sim.command()
@click.option("--boot-delay", type=float, default=1.0, show_default=True,
              help="Seconds between an instance running and its host booting.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the endpoint to answer.")
def up(boot_delay: float, timeout: float) -> None:
    """Start the simulated region in the background (reuses a healthy one)."""
    console = Console(soft_wrap=True)
    st = _call(api.up, boot_delay=boot_delay, timeout=timeout)
    verb = "already running, reusing it" if st.reused else "up"
    console.print(f"[green]simulated region {verb}[/]: {st.endpoint} (pid {st.pid})")
    console.print(f"subnet {st.subnet_id} ({st.cidr}), log {st.log}")
    console.print("use it with region [bold]sim[/] in a cluster file")


@sim.command()
def down() -> None:
    """Stop the region and remove every host, namespace, veth and the bridge."""
    _call(api.down)
    Console().print("simulated region down")


@sim.command()
def status() -> None:
    """Show the endpoint and the hosts (exit 1 if the region is not running)."""
    console = Console(soft_wrap=True)
    st = _call(api.status)
    if st is None:
        console.print("simulated region: [red]not running[/]")
        raise SystemExit(1)
    if not st.alive:
        console.print(f"simulated region: [red]stale[/] (daemon {st.pid} is gone); "
                      "`provision sim up` cleans up and starts afresh")
        raise SystemExit(1)
    uptime = time.time() - st.started_at
    console.print(f"simulated region [green]running[/]: {st.endpoint} (pid {st.pid}, "
                  f"up {uptime:.0f}s), subnet {st.subnet_id} ({st.cidr})")
    table = Table("instance", "ip", "hostname", "sshd")
    for h in st.hosts:
        table.add_row(h.instance_id or "?", h.ip, h.hostname,
                      "[green]alive[/]" if h.sshd_alive else "[red]dead[/]")
    if st.hosts:
        console.print(table)
    else:
        console.print("no hosts (no instance running in the subnet)")


@sim.command()
@click.argument("instance_id")
def interrupt(instance_id: str) -> None:
    """Simulate a spot interruption: terminate INSTANCE_ID, its host vanishes now."""
    _call(api.interrupt, instance_id)
    Console().print(f"interrupted {instance_id}: instance terminated, host gone")
