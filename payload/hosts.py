"""The cluster's hosts as ipyparallel sees them: which engines share a host, and
how much memory each host has left.

Engines with the same host name share a filesystem and a page cache, so data
is shipped once per host (to one engine there) and memory-mapped by all of
them; and a host's free memory, divided by its engines, is what each fit may
use. Everything here goes through the client alone, no SSH.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ipyparallel as ipp

from . import _engine_files
from ._remote import call_on

DEFAULT_TIMEOUT = 60.0


def client_of(view_or_client: Any) -> ipp.Client:
    """The ``ipyparallel.Client`` behind a client or a view."""
    return view_or_client if isinstance(view_or_client, ipp.Client) else view_or_client.client


def engines_by_host(view_or_client: Any, timeout: float = DEFAULT_TIMEOUT) -> dict[str, list[int]]:
    """Host name -> ids of the engines running there (sorted), from every engine."""
    client = client_of(view_or_client)
    ids = sorted(client.ids)
    if not ids:
        raise RuntimeError("no engines are registered with the controller")
    names = call_on(client[ids], _engine_files.hostname).get(timeout=timeout)
    hosts: dict[str, list[int]] = {}
    for engine, name in zip(ids, names, strict=True):
        hosts.setdefault(name, []).append(engine)
    return hosts


def leaders(hosts: Mapping[str, list[int]]) -> dict[str, int]:
    """One engine per host (the lowest id): the one that receives the host's files."""
    return {name: ids[0] for name, ids in hosts.items()}


@dataclass(frozen=True)
class HostMemory:
    """One host's memory, in bytes, as its engines see it."""

    hostname: str
    total: int
    available: int
    engines: tuple[int, ...]
    engines_rss: int  # resident memory of those engines together

    @property
    def available_per_engine(self) -> int:
        """What each engine may use if all of them fit at once."""
        return self.available // max(1, len(self.engines))


def host_memory(view_or_client: Any, timeout: float = DEFAULT_TIMEOUT) -> dict[str, HostMemory]:
    """Free memory per host and the engines on it, for sizing data and ``n_jobs``.

    One call to every engine: the host's figures come from any of its engines,
    the resident sizes are summed.
    """
    client = client_of(view_or_client)
    ids = sorted(client.ids)
    if not ids:
        raise RuntimeError("no engines are registered with the controller")
    reports = call_on(client[ids], _engine_files.host_memory).get(timeout=timeout)
    hosts: dict[str, HostMemory] = {}
    for engine, report in zip(ids, reports, strict=True):
        name = report["hostname"]
        seen = hosts.get(name)
        hosts[name] = HostMemory(
            hostname=name,
            total=report["total"],
            available=report["available"],
            engines=(*seen.engines, engine) if seen else (engine,),
            engines_rss=report["engine_rss"] + (seen.engines_rss if seen else 0),
        )
    return hosts
