"""Put files on every host once, through ipyparallel alone (payload never uses SSH).

A dataset lives on the engines in a directory named by the hash of its content
(``<data_dir>/<digest>/``), so "does this host have it?" is a listing of that
directory on one engine per host, and content that is already there is never
sent again. Files a host lacks go out through a *broadcast view*: the client
sends each file once to the controller, whose broadcast scheduler fans it out
to one engine per host that needs it; that engine writes it under a temporary
name and renames it into place (`payload._engine_files.receive_file`).

`data_dir` defaults to the first of ``/srv/provision/data`` (what provision's
nodes provide) and a per-user directory under the engines' temp dir that every
host can write at the same path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib

from . import _engine_files
from ._remote import call_on
from .hosts import DEFAULT_TIMEOUT, client_of, engines_by_host, leaders

DEFAULT_DATA_DIRS = ("/srv/provision/data", "{tmp}/payload-data-{user}")
FILE_TIMEOUT = 600.0  # seconds for one file to reach every host that needs it

Stage = Callable[[Sequence[str], Path], Mapping[str, Path]]


@dataclass
class Shipment:
    """Where a dataset is on the engines, and what it took to get it there."""

    directory: str  # on every host
    hosts: dict[str, list[int]]  # host name -> its engine ids
    bytes_per_host: dict[str, int] = field(default_factory=dict)  # bytes written on each host
    bytes_sent: int = 0  # bytes that left the client: each file once, whatever the host count

    def path(self, name: str) -> str:
        """A file's path as the engines see it."""
        return f"{self.directory}/{name}"


def resolve_data_dir(
    client: Any,
    hosts: Mapping[str, list[int]],
    data_dir: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """The data directory, writable at the same path on every host.

    With ``data_dir`` given, that one or a clear error; otherwise the first of
    `DEFAULT_DATA_DIRS` that works everywhere.
    """
    candidates = [str(data_dir)] if data_dir is not None else list(DEFAULT_DATA_DIRS)
    heads = list(leaders(hosts).items())
    found = call_on(client[[e for _, e in heads]], _engine_files.writable_dirs, candidates)
    per_host = dict(zip([h for h, _ in heads], found.get(timeout=timeout), strict=True))
    for i in range(len(candidates)):
        paths = {dirs[i] for dirs in per_host.values()}
        if None not in paths and len(paths) == 1:
            return paths.pop()
    detail = "; ".join(f"{host}: {dirs}" for host, dirs in per_host.items())
    raise ValueError(
        f"data_dir: no directory among {candidates} is writable at the same path on every "
        f"host ({detail}); pass data_dir= a directory every engine can write"
    )


def ship(
    view_or_client: Any,
    digest: str,
    names: Sequence[str],
    stage: Stage,
    *,
    data_dir: str | os.PathLike | None = None,
    placement: Mapping[str, Sequence[str]] | None = None,
    timeout: float = FILE_TIMEOUT,
) -> Shipment:
    """Make ``<data_dir>/<digest>/<name>`` exist on every host that needs it.

    ``names`` are the dataset's files; ``placement`` (host -> names) restricts
    what each host gets (data partitions), by default every host gets all.
    ``stage(needed_names, tmpdir)`` writes the needed files locally and returns
    name -> local path; it is called only if some host lacks something, so a
    dataset every host has costs one listing per host and no local work.
    """
    client = client_of(view_or_client)
    hosts = engines_by_host(client)
    directory = f"{resolve_data_dir(client, hosts, data_dir)}/{digest}"
    wanted = {host: list(names) for host in hosts}
    if placement is not None:
        wanted = {host: list(placement.get(host, ())) for host in hosts}
    heads = leaders(hosts)
    listings = {
        host: call_on(client[heads[host]], _engine_files.missing_files, directory, wanted[host])
        for host in hosts
        if wanted[host]
    }
    missing = {host: ar.get(timeout=DEFAULT_TIMEOUT) for host, ar in listings.items()}
    shipment = Shipment(directory, hosts, {host: 0 for host in hosts})
    needed = [name for name in names if any(name in m for m in missing.values())]
    if not needed:
        return shipment
    with tempfile.TemporaryDirectory(prefix="payload-ship-") as tmp:
        local = stage(needed, Path(tmp))
        for name in needed:
            targets = sorted(host for host, m in missing.items() if name in m)
            data = local[name].read_bytes()
            view = _fan_out_view(client, [heads[h] for h in targets])
            call_on(view, _engine_files.receive_file, directory, name, data=(data,)).get(
                timeout=timeout
            )
            shipment.bytes_sent += len(data)
            for host in targets:
                shipment.bytes_per_host[host] += len(data)
    return shipment


def _fan_out_view(client: Any, targets: list[int]) -> Any:
    """A broadcast view (the client sends once, the controller fans out), or a
    direct view for a single target or a controller without broadcast."""
    if len(targets) > 1 and hasattr(client, "broadcast_view"):
        return client.broadcast_view(targets=targets)
    return client[targets]


def ship_objects(
    view_or_client: Any,
    objects: Mapping[str, Any],
    *,
    data_dir: str | os.PathLike | None = None,
    placement: Mapping[str, Sequence[str]] | None = None,
) -> Shipment:
    """Ship in-memory objects (``name -> obj``), each as an uncompressed,
    memory-mappable joblib file, in a directory named by their content hash."""
    from .splits import dump_atomic

    digest = joblib.hash(sorted(objects.items()), hash_name="sha1")

    def stage(needed: Sequence[str], tmp: Path) -> dict[str, Path]:
        local = {}
        for name in needed:
            local[name] = tmp / name
            dump_atomic(objects[name], local[name])
        return local

    return ship(
        view_or_client, digest, list(objects), stage, data_dir=data_dir, placement=placement
    )
