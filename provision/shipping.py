"""Shipping a content-named data directory to a cluster's nodes: once over the laptop's uplink.

The laptop streams the directory to the master as one tar; the master writes it
into its own copy and, as it arrives, into every worker that needs it over the
cluster network (`provision.nodes.stream`): each node with its own content-hash
skip, free-space check, hashes checked where the copy lands, and atomic rename.
So the laptop link carries one copy whatever the number of nodes, the forward
hides behind the upload, and a node added later gets its copy from the master's,
not from the laptop.

Hosts that are not a cluster's nodes (no role: test hosts), and per-node
file selections (partitions: each node's shard crosses the uplink once anyway),
are pushed directly from the laptop, as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from provision import cloud
from provision.cloud.common import MASTER, WORKER, InstanceInfo
from provision.context import Context
from provision.nodes import fanout, relay, stream, transfer
from provision.nodes.remote import Endpoint, NodeError

BLOCK = 4096  # a file takes whole blocks of the node's filesystem
# One push at a time into one directory of one host: two pipelines of an `up`
# (the master's and a worker's) may both ask for the master's copy.
_INTO: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def remote_dir(remote_root: str, digest: str) -> str:
    return f"{remote_root}/data/{digest}"


@dataclass
class ShipResult:
    """Bytes each host received (0 for a host that already had everything), and how
    many crossed the laptop's link and the cluster network."""

    digest: str
    remote_dir: str
    files: list[str]
    bytes_per_host: dict[str, int] = field(default_factory=dict)
    shards: dict[str, str] = field(default_factory=dict)  # node name -> its shard (partitions)
    laptop_bytes: int = 0  # sent by this machine (to the master, or to each host directly)
    cluster_bytes: int = 0  # forwarded by the master to workers

    @property
    def remote_paths(self) -> list[str]:
        return [f"{self.remote_dir}/{f}" for f in self.files if f != "manifest.json"]

    @property
    def bytes_moved(self) -> int:
        return sum(self.bytes_per_host.values())


@dataclass
class _Payload:
    """What is shipped: the local directory, its files' sizes and hashes, where it goes."""

    local_dir: Path
    names: list[str]
    size: dict[str, int]
    sums: dict[str, str]
    target: str
    digest: str


def ship(
    ctx: Context,
    nodes: Sequence[InstanceInfo],
    local_dir: Path,
    digest: str,
    files_for: dict[str, list[str]] | None = None,
    *,
    direct: bool = False,
) -> ShipResult:
    """Put the data directory on each node once; skip nodes that have it.

    Through the master when `nodes` are a cluster's (see the module); ``files_for``
    (node name -> file names) gives each node only those files, pushed directly.
    `direct`: push from this machine to every node (what the benchmark compares with).
    """
    names = sorted(p.name for p in local_dir.iterdir())
    size = {n: (local_dir / n).stat().st_size for n in names}
    load = _Payload(local_dir, names, size, file_hashes(local_dir, names),
                    remote_dir(ctx.config.remote_root, digest), digest)
    result = ShipResult(digest=digest, remote_dir=load.target,
                        files=[n for n in names if n != "manifest.json"])
    master = None if files_for is not None or direct else _relay_master(ctx, nodes)
    if master is None:
        wanted = {n.label: (files_for or {}).get(n.label, names) for n in nodes}
        group = _push(ctx, load, [ctx.endpoint(n) for n in nodes], wanted)
        result.bytes_per_host = dict(group.succeeded)
        result.laptop_bytes = result.bytes_moved
        group.raise_for_failures()
        return result
    result.laptop_bytes, relayed = _relay(
        ctx, load, master, [n for n in nodes if n.instance_id != master.instance_id])
    if not any(n.instance_id == master.instance_id for n in nodes) and master.label in \
            relayed.succeeded:  # the master's own failure still fails the ship, as it must
        relayed.pop(master.label)
    result.bytes_per_host.update(relayed.succeeded)
    result.cluster_bytes = sum(v for k, v in relayed.succeeded.items() if k != master.label)
    relayed.raise_for_failures()
    return result


def _relay_master(ctx: Context, nodes: Sequence[InstanceInfo]) -> InstanceInfo | None:
    """The running master to relay through, or None when `nodes` are not a cluster's."""
    roles = {getattr(n, "role", None) for n in nodes}
    if not roles & {MASTER, WORKER}:
        return None
    master = next((n for n in nodes if n.role == MASTER and n.public_ip), None)
    return master or cloud.describe_cluster(ctx.region, ctx.name).master


def _push(
    ctx: Context, load: _Payload, endpoints: list[Endpoint], wanted: dict[str, list[str]]
) -> fanout.GroupResult:
    """Laptop -> each endpoint in parallel, one tar stream each; bytes per host."""
    per_node = {name: sum(load.size[f] for f in files) for name, files in wanted.items()}
    lock, done_bytes = threading.Lock(), [0]
    each = max(per_node.values(), default=0)
    where = (f"{endpoints[0].name}, {each / 1e6:.1f} MB" if len(endpoints) == 1
             else f"{len(endpoints)} hosts, {each / 1e6:.1f} MB each")
    with ctx.reporter.wait(
        f"put-data {load.digest}: laptop -> {where}",
        total=sum(per_node.values()), unit="bytes",
    ) as advance:

        def progress(n: int) -> None:
            with lock:
                done_bytes[0] += n
                advance(done_bytes[0])

        def one(ep: Endpoint) -> int:
            # One connection: nothing is sent where the marker file is there, else one
            # tar stream into a temp dir renamed into place (a directory is complete).
            total, sent = per_node[ep.name], [0]

            def step(n: int) -> None:  # tar headers and padding are not data: cap at `total`
                grow = min(n, total - sent[0])
                sent[0] += grow
                if grow:
                    progress(grow)

            files = wanted[ep.name]
            whole = files is load.names
            marker = "manifest.json" if whole else files[-1]
            with _INTO[(ep.host, load.target)], _staged(load.local_dir, files, whole) as source:
                moved = transfer.push_tree(
                    ep, source, load.target, unless_exists=f"{load.target}/{marker}",
                    on_bytes=step, verify={f: load.sums[f] for f in files},
                    need_bytes=footprint(load.size, files), on_resend=_resend(ctx, ep.name, load),
                )
            progress(total - sent[0])
            return 0 if moved is None else total

        return fanout.on_hosts(one, endpoints)


def _resend(ctx: Context, name: str, load: _Payload) -> Callable[[], None]:
    def said() -> None:
        ctx.reporter.warn(f"{name}: {load.target} failed its manifest's hashes; sending it again")

    return said


def _relay(
    ctx: Context, load: _Payload, master: InstanceInfo, workers: list[InstanceInfo]
) -> tuple[int, fanout.GroupResult]:
    """Laptop -> master, streamed on to every worker as it arrives (`provision.nodes.stream`);
    the bytes that crossed the laptop's link, and the bytes (or the error) per node."""
    master_ep = ctx.endpoint(master)
    root = ctx.config.remote_root
    legs, result = {}, fanout.GroupResult()
    for w in workers:
        shown = Endpoint(w.label, w.private_ip or "?", ctx.user, master_ep.key_path, via=master_ep)
        if not w.private_ip:
            result[w.label] = NodeError(f"{w.label}: no private address for the master to reach "
                                        "it by", node=w.label)
            continue
        legs[w.label] = (w, stream.Leg(shown, relay.Hop(w.label, w.private_ip, ctx.user)))
    total, need = sum(load.size.values()), footprint(load.size, load.names)
    with _INTO[(master_ep.host, load.target)], ctx.reporter.wait(
        f"put-data {load.digest}: laptop -> {master.label}, streamed on to {len(legs)} "
        f"worker(s) over the cluster network, {total / 1e6:.1f} MB", total=total, unit="bytes",
    ) as advance:
        sent = [0]

        def progress(n: int) -> None:
            sent[0] = min(total, sent[0] + n)
            advance(sent[0])

        out = stream.relay_stream(
            stream.Leg(master_ep), [leg for _, leg in legs.values()], load.local_dir,
            load.target, load.names, load.sums, need, root, on_bytes=progress,
            on_resend=lambda name: _resend(ctx, name, load))
        advance(total)
    result.update(out.bytes_to)
    result.update(out.errors)
    refused = [legs[name] for name, err in out.errors.items()
               if name in legs and relay.refused(err) and master.label not in out.errors]
    if refused:  # workers set up before the cluster key (or otherwise): authorise, resend
        result.update(_from_master_copy(ctx, master, master_ep, refused, load, need))
    return out.laptop_bytes, result


def _from_master_copy(
    ctx: Context, master: InstanceInfo, master_ep: Endpoint,
    refused: list[tuple[InstanceInfo, stream.Leg]], load: _Payload, need: int,
) -> fanout.GroupResult:
    """Authorise the cluster key on workers that refused it, then forward the master's
    verified copy to them, in parallel; the bytes each received (or its error)."""
    root = ctx.config.remote_root
    try:
        key = relay.ensure_key(master_ep, root)
    except NodeError as err:
        return fanout.GroupResult({worker.label: err for worker, _ in refused})
    script, cmd = transfer.receive_script(
        load.target, f"{load.target}/manifest.json", load.sums, need, check=True)

    def one(pair: tuple[InstanceInfo, stream.Leg]) -> int:
        worker, leg = pair
        assert leg.hop is not None
        relay.authorize(ctx.endpoint(worker, master), master_ep, leg.hop.host, key, root)
        try:
            line = relay.forward(master_ep, leg.hop, root, load.target, load.names, script)
        except NodeError as err:
            raise transfer.failure(leg.ep, cmd, err.command_status, err.stderr, load.target,
                                   need) from None
        have = transfer.answer(leg.ep, line.encode(), load.target, need,
                               _resend(ctx, leg.ep.name, load))
        return 0 if have else sum(load.size.values())

    return fanout.fan_out(one, refused, key=lambda pair: pair[0].label,
                          limit=fanout.MAX_PARALLEL_HOSTS)


def footprint(size: dict[str, int], files: list[str]) -> int:
    """Bytes `files` take on a node's disk (whole blocks, and one for the directory)."""
    return BLOCK + sum(-(-size[f] // BLOCK) * BLOCK for f in files)


def file_hashes(local_dir: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each file: the manifest's where it lists the file (written with
    the splits, so never read again here), else computed."""
    from payload import read_manifest

    listed = read_manifest(local_dir)["files"]
    sums = {}
    for name in names:
        known = listed.get(name, {}).get("sha256")
        if known is None:
            with open(local_dir / name, "rb") as f:
                known = hashlib.file_digest(f, "sha256").hexdigest()
        sums[name] = known
    return sums


@contextmanager
def _staged(local_dir: Path, files: list[str], whole: bool) -> Iterator[Path]:
    """`local_dir` itself, or a sibling temp dir holding hard links to `files` only."""
    if whole:
        yield local_dir
        return
    tmp = Path(tempfile.mkdtemp(dir=local_dir.parent, prefix=".stage-"))
    try:
        for name in files:
            try:
                os.link(local_dir / name, tmp / name)
            except OSError:
                shutil.copy2(local_dir / name, tmp / name)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

