"""`provision sim ...`: parse, call `provision.sim`, print. No logic of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import click
from rich.console import Console
from rich.table import Table

from provision import sim as api
from provision.sim import net
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


def _wan(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Bad input is exit 2 naming the option, before anything is touched."""
    try:
        net.check_wan(value, None) if param.name == "uplink" else net.check_wan(None, value)
    except SimError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1]) from e
    return value


@sim.command()
@click.option("--instant/--aws-timing", default=None,
              help="Instant, consistent API (quick unit runs), or AWS's delays and eventual "
                   "consistency (the default for a new region).")
@click.option("--uplink", metavar="RATE", callback=_wan,
              help="Shape laptop -> region to RATE (e.g. 20mbit); `off` removes it.")
@click.option("--rtt", metavar="DELAY", callback=_wan,
              help="Add DELAY of round trip on the laptop <-> region path (e.g. 40ms); `off`.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the endpoint to answer.")
def up(instant: bool | None, uplink: str | None, rtt: str | None, timeout: float) -> None:
    """Start the simulated region in the background (reuses a healthy one).

    The region is as unkind as AWS: instances pend, SSH answers later, new ids
    are briefly unknown, only instances launched with a public address are
    reachable from here (the others through one that is), and images log in as
    their own user (ubuntu, ec2-user, admin), never root.
    """
    console = Console(soft_wrap=True)
    st = _call(api.up, instant=instant, uplink=uplink, rtt=rtt, timeout=timeout)
    verb = "already running, reusing it" if st.reused else "up"
    console.print(f"[green]simulated region {verb}[/]: {st.endpoint} (pid {st.pid})")
    _describe(console, st)
    console.print("use it with region [bold]sim[/] in a cluster file")


def _describe(console: Console, st: api.SimState) -> None:
    console.print(f"subnet {st.subnet_id}: private {st.cidr} (hosts only), "
                  f"public {st.public_cidr} (this machine is {st.public_gateway})")
    console.print(f"timing: {st.timings.describe()}")
    wan = ", ".join(x for x in (st.uplink and f"uplink {st.uplink}", st.rtt and f"rtt {st.rtt}")
                    if x)
    console.print(f"WAN (laptop -> region): {wan or 'not shaped'}")


@sim.command()
def down() -> None:
    """Stop the region and remove every host, namespace, veth and bridge."""
    _call(api.down)
    Console().print("simulated region down")


@sim.command()
def status() -> None:
    """Show the endpoint, timing, WAN and the hosts (exit 1 if the region is not running)."""
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
                  f"up {uptime:.0f}s)")
    _describe(console, st)
    faults = any(_faults(h) for h in st.hosts)  # the column only when there is something to say
    table = Table("instance", "private ip", "public ip", "user", "hostname", "sshd",
                  *(["faults"] if faults else []))
    for h in st.hosts:
        table.add_row(h.instance_id or "?", h.ip, h.public_ip or "-", h.user, h.hostname,
                      "[green]alive[/]" if h.sshd_alive else "[red]dead[/]",
                      *([_faults(h) or "-"] if faults else []))
    if st.hosts:
        console.print(table)
    else:
        console.print("no hosts (no instance running in the subnet)")


def _faults(h: api.SimHost) -> str:
    out = ["halted"] if h.halted else []
    if h.cut_until is not None:
        left = h.cut_until - time.time()
        out.append("cut" if left == float("inf") else f"cut ({max(left, 0):.0f}s left)")
    return ", ".join(out)


@sim.command()
@click.argument("instance_id")
@click.option("--notice", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds between the interruption notice (on the instance's metadata, "
                   "spot/instance-action) and the termination; AWS gives 120.")
def interrupt(instance_id: str, notice: float) -> None:
    """Simulate a spot interruption of INSTANCE_ID: notice, then termination."""
    when = _call(api.interrupt, instance_id, notice)
    if notice:
        Console().print(f"interruption of {instance_id} announced: terminates at {when}")
    else:
        Console().print(f"interrupted {instance_id}: instance terminated, host gone")


@sim.command()
@click.argument("instance_id")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True),
              help="Heal by itself after this many seconds (default: until `sim heal`).")
def cut(instance_id: str, seconds: float | None) -> None:
    """Cut this machine's link to INSTANCE_ID's host: packets vanish, as in an outage.

    New connections time out and established ones stall (no reset); traffic
    between hosts on the private plane is untouched. The instance must have a
    public address (the others are reached through one that has).
    """
    until = _call(api.cut, instance_id, seconds)
    when = "until `provision sim heal`" if seconds is None else f"for {seconds:g}s"
    Console().print(f"link to {instance_id} cut {when}" + (f" (heals at {time.ctime(until)})"
                                                          if seconds is not None else ""))


@sim.command()
@click.argument("instance_id")
def heal(instance_id: str) -> None:
    """Restore this machine's link to INSTANCE_ID's host (no-op if it is not cut)."""
    was = _call(api.heal, instance_id)
    Console().print(f"link to {instance_id} " + ("restored" if was else "was not cut"))


def _size(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from provision.sim.disks import parse_size

    try:
        parse_size(value)
    except SimError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1]) from e
    return value


@sim.command()
@click.argument("instance_id")
@click.option("--size", required=True, callback=_size,
              help="The new size of the host's /srv, e.g. 5M, 512k, 1G (its files are kept).")
def disk(instance_id: str, size: str) -> None:
    """Shrink (or grow) INSTANCE_ID's data disk, /srv, so a test can fill it.

    Writing past it fails with ENOSPC on the host. Refused if /srv already holds
    more; lasts until the host restarts.
    """
    total, used = _call(api.disk, instance_id, size)
    Console().print(f"/srv on {instance_id}: {total} bytes, {used} used")
