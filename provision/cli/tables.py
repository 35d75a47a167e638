"""Every table the CLI prints, built from the rows the Python API returns."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from provision.cloud.common import FAIL, OK, Finding, ZonePrice

NODE_COLUMNS = ("id", "name", "role", "type", "zone", "market", "state", "private ip",
                "public ip", "uptime", "$/hour", "cost so far")


def _money(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def nodes(title: str, rows: list[dict[str, Any]]) -> Table:
    """Nodes of a cluster (`query.node_rows`): where, what state, how long, what cost."""
    table = Table(title=title, title_justify="left")
    for c in NODE_COLUMNS:
        table.add_column(c, no_wrap=True)
    for r in rows:
        table.add_row(
            r["id"], r["name"], r["role"], r["type"], r["zone"], r["lifecycle"], r["state"],
            r["private_ip"] or "-", r["public_ip"] or "-", f"{r['uptime_hours'] * 60:.0f} min",
            _money(r["price_per_hour"], "{:.4f}"), _money(r["cost_so_far"], "${:.4f}"),
        )
    return table


def spot_prices(title: str, prices: list[ZonePrice]) -> Table:
    """Spot prices per zone: current, time-weighted average, maximum, samples."""
    table = Table(title=title)
    for col in ("zone", "current", "average", "max", "samples"):
        table.add_column(col, justify="left" if col == "zone" else "right")
    for p in prices:
        table.add_row(
            p.zone, f"{p.current:.4f}", f"{p.average:.4f}", f"{p.maximum:.4f}", str(p.samples)
        )
    return table


def clusters(title: str, rows: list[dict[str, Any]]) -> Table:
    """Clusters live in the region and known locally: size, engines, age, cost so far."""
    table = Table(title=title)
    for c in ("name", "live", "nodes", "engines", "age", "cost so far", "autostop",
              "local record"):
        table.add_column(c, justify="right" if c in ("nodes", "engines", "age") else "left")
    for r in rows:
        engines = "-" if r["engines"] is None else str(r["engines"])
        age = "-" if r["age_hours"] is None else _age(r["age_hours"])
        live = "stopped by autostop" if r["stopped_by_autostop"] else "yes" if r["live"] else "no"
        table.add_row(r["name"], live, str(r["nodes"]), engines, age,
                      _money(r["cost_so_far"], "${:.4f}"), _limits(r["autostop"]),
                      "yes" if r["local_record"] else "no")
    return table


def _limits(found: dict[str, Any] | None) -> str:
    """autostop, max_hours, budget of a cluster in a few characters: `30m, 8h, $5`."""
    if not found:
        return "-"
    shown = [found.get("autostop"),
             found.get("max_hours") and f"{found['max_hours']:g}h",
             found.get("budget") and f"${found['budget']:g}"]
    return ", ".join(str(s) for s in shown if s)


def _age(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes} min" if minutes < 120 else f"{hours:.1f} h"


STATUS_STYLE = {OK: "green", FAIL: "red"}  # anything else (a warning) is yellow


def findings(title: str, found: list[Finding]) -> Table:
    """What `provision check` found, one check per row."""
    table = Table(title=title, title_justify="left", show_lines=False)
    for col in ("check", "", "detail"):
        table.add_column(col, overflow="fold")
    for f in found:
        style = STATUS_STYLE.get(f.status, "yellow")
        table.add_row(f.check, f"[{style}]{f.status}[/]", f.detail)
    return table


def plan(title: str, lines: list[Any], hourly: float | None, source: str) -> Table:
    """What `up` would launch (`check.PlannedNodes`) and what it costs per hour."""
    table = Table(title=title, title_justify="left", caption=f"prices: {source}",
                  caption_justify="left")
    for col in ("nodes", "market", "$/hour each", "$/hour"):
        table.add_column(col, justify="left" if col in ("nodes", "market") else "right")
    for line in lines:
        if line.count:
            each = line.hourly_each
            table.add_row(f"{line.count} {line.role}", line.market, _money(each, "{:.4f}"),
                          _money(None if each is None else each * line.count, "{:.4f}"))
    table.add_row("total", "", "", _money(hourly, "[bold]{:.4f}[/]"))
    return table


def host_memory(title: str, hosts: list[Any]) -> Table:
    """Memory per host (`payload.HostMemory`): what is free, and per engine if all fit at once."""
    table = Table(title=title, title_justify="left")
    for c in ("host", "engines", "total", "available", "per engine", "engines' RSS"):
        table.add_column(c, justify="left" if c in ("host", "engines") else "right")
    for h in hosts:
        table.add_row(
            h.hostname, ", ".join(map(str, h.engines)), _mib(h.total), _mib(h.available),
            _mib(h.available_per_engine), _mib(h.engines_rss),
        )
    return table


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
