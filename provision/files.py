"""Files to and from a cluster's nodes, commands on them, and how to reach one: what
`put`, `get`, `exec` and `ssh` do, as functions a notebook can call too.

Nodes are named as StarCluster users name them: ``master``, ``node001``, or an
index (0 is the master, N is ``nodeNNN``); an instance id or an IP address works
too. Copies go over SFTP on the connection provision itself uses (so a worker
with only a private address is reached through the master), directories
recursively with their files' modes, globs expanded on the side that has the
files: locally for `put`, on the node for `get`.
"""

from __future__ import annotations

import fnmatch
import glob
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import invoke

from provision import cloud
from provision.cloud.common import ClusterInfo, InstanceInfo
from provision.context import Context, context_for
from provision.errors import BadInput
from provision.nodes import fanout, remote
from provision.schema import ClusterConfig

GLOB_CHARS = frozenset("*?[")


def alias(ref: str) -> str:
    """StarCluster's node aliases: an index becomes a name (0 the master, N ``nodeNNN``)."""
    if ref.isdigit():
        return "master" if int(ref) == 0 else f"node{int(ref):03d}"
    return ref


def find_node(info: ClusterInfo, ref: str, what: str = "NODE") -> InstanceInfo:
    """The running node `ref` names (alias, name, id or IP); `BadInput` listing the nodes."""
    inst = info.find(alias(ref))
    if inst is None:
        have = ", ".join(i.label for i in info.nodes) or "none running"
        raise BadInput(f"{what}: no node {ref!r} in cluster {info.name!r} (have: {have})")
    return inst


def _cluster(config: ClusterConfig) -> tuple[Context, ClusterInfo]:
    ctx = context_for(config)
    return ctx, cloud.describe_cluster(ctx.region, ctx.name)


def node_endpoint(config: ClusterConfig, node: str | None = None) -> remote.Endpoint:
    """How to reach `node` of the cluster (see `alias`), or its master."""
    ctx, info = _cluster(config)
    inst = find_node(info, node or "master")
    return ctx.endpoint(inst, info.master)


def _endpoints(config: ClusterConfig, node: str | None) -> list[remote.Endpoint]:
    """Every running node's endpoint, master first, or only `node`'s."""
    ctx, info = _cluster(config)
    nodes = [find_node(info, node, "--node")] if node else info.nodes
    if not nodes:
        raise BadInput(f"cluster {ctx.name!r} has no running nodes")
    return [ctx.endpoint(i, info.master) for i in nodes]


@dataclass(frozen=True)
class Ran:
    """One node's outcome of `run_everywhere`."""

    exit_status: int
    stdout: str
    stderr: str


def run_everywhere(
    config: ClusterConfig, command: str, node: str | None = None, timeout: float | None = None
) -> dict[str, Ran | BaseException]:
    """Run `command` on every node at once (or on `node`): node name -> its exit
    status and output, or the exception that kept it from running (no SSH)."""

    def one(ep: remote.Endpoint) -> Ran:
        with remote.connection(ep) as conn:
            try:
                r = conn.run(command, hide=True, warn=True, in_stream=False,
                             timeout=None if timeout is None else max(1, round(timeout)))
            except invoke.CommandTimedOut as e:
                return Ran(124, e.result.stdout, e.result.stderr + f"\ntimed out after {timeout}s")
            return Ran(r.exited, r.stdout, r.stderr)

    return dict(fanout.on_hosts(one, _endpoints(config, node)))


def expand_local(patterns: list[str], recursive: bool) -> list[Path]:
    """Local sources: globs expanded (a pattern matching nothing is an error, as in
    a shell with ``failglob``); a directory needs `recursive`."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if GLOB_CHARS & set(pattern) else [pattern]
        if not matches or not Path(matches[0]).exists():
            raise BadInput(f"LOCAL: {pattern}: no such file or directory")
        for m in map(Path, matches):
            if m.is_dir() and not recursive:
                raise BadInput(f"LOCAL: {m} is a directory (use -r to copy it)")
            found.append(m)
    return found


def _is_dir(sftp: Any, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except OSError:
        return False


def _put_tree(sftp: Any, local: Path, target: str) -> int:
    """Copy a file, or a directory recursively, to `target`; files copied."""
    if not local.is_dir():
        sftp.put(str(local), target)
        sftp.chmod(target, stat.S_IMODE(local.stat().st_mode))
        return 1
    if not _is_dir(sftp, target):
        sftp.mkdir(target)
    return sum(_put_tree(sftp, child, posixpath.join(target, child.name))
               for child in sorted(local.iterdir()))


def _mkdirs(sftp: Any, path: str) -> None:
    """``mkdir -p`` over SFTP."""
    if path in ("", "/") or _is_dir(sftp, path):
        return
    _mkdirs(sftp, posixpath.dirname(path.rstrip("/")))
    sftp.mkdir(path)


def _into(is_dir: bool, many: bool, dest: str, name: str, join: Any) -> str:
    """Where one source lands, as cp/scp decide: inside `dest` when it is a
    directory (or several sources go there), else at `dest` itself."""
    return join(dest, name) if is_dir or many else dest


def put(
    config: ClusterConfig, sources: list[Path] | Path, remote_path: str,
    node: str | None = None,
) -> fanout.GroupResult:
    """Copy files and directories to `remote_path` on every node (or `node`), as
    ``scp -r`` would; each node's outcome (files copied, or the exception)."""
    local = [sources] if isinstance(sources, Path) else list(sources)
    many = len(local) > 1

    def one(ep: remote.Endpoint) -> int:
        with remote.connection(ep) as conn:
            sftp = conn.sftp()
            if many:
                _mkdirs(sftp, remote_path)
            is_dir = _is_dir(sftp, remote_path)
            return sum(
                _put_tree(sftp, src, _into(is_dir, many, remote_path, src.name, posixpath.join))
                for src in local
            )

    return fanout.on_hosts(one, _endpoints(config, node))


def expand_remote(sftp: Any, pattern: str) -> list[str]:
    """`pattern` expanded on the node, one path component at a time (no shell involved)."""
    parts = pattern.split("/")
    paths = ["/" if pattern.startswith("/") else "."]
    for part in filter(None, parts):
        nxt = []
        for base in paths:
            if GLOB_CHARS & set(part):
                try:
                    names = sorted(sftp.listdir(base))
                except OSError:
                    continue
                nxt += [posixpath.join(base, n) for n in fnmatch.filter(names, part)
                        if not n.startswith(".") or part.startswith(".")]
            else:
                nxt.append(posixpath.join(base, part))
        paths = nxt
    return [p[2:] if p.startswith("./") else p for p in paths]


def _get_tree(sftp: Any, source: str, target: Path, recursive: bool) -> int:
    attrs = sftp.stat(source)
    if not stat.S_ISDIR(attrs.st_mode):
        sftp.get(source, str(target))
        target.chmod(stat.S_IMODE(attrs.st_mode))
        return 1
    if not recursive:
        raise BadInput(f"REMOTE: {source} is a directory (use -r to copy it)")
    target.mkdir(exist_ok=True)
    return sum(_get_tree(sftp, posixpath.join(source, name), target / name, recursive)
               for name in sorted(sftp.listdir(source)))


def get(
    config: ClusterConfig, remote_path: str, local: Path, node: str | None = None,
    recursive: bool = False,
) -> tuple[remote.Endpoint, int]:
    """Copy `remote_path` (a glob expanded on the node; a directory with
    `recursive`) from `node` (default: the master) to `local`, as ``scp -r``
    would; the node copied from and how many files came."""
    ep = node_endpoint(config, node)
    with remote.connection(ep) as conn:
        sftp = conn.sftp()
        sources = expand_remote(sftp, remote_path) if GLOB_CHARS & set(remote_path) else [
            remote_path]
        existing = [s for s in sources if _exists(sftp, s)]
        if not existing:
            raise BadInput(f"REMOTE: {remote_path}: no such file or directory on {ep.name}")
        many = len(existing) > 1
        if many:
            local.mkdir(parents=True, exist_ok=True)
        copied = sum(
            _get_tree(sftp, s, Path(_into(local.is_dir(), many, str(local),
                                          posixpath.basename(s.rstrip("/")), os_join)), recursive)
            for s in existing
        )
    return ep, copied


def os_join(a: str, b: str) -> str:
    return str(Path(a) / b)


def _exists(sftp: Any, path: str) -> bool:
    try:
        sftp.stat(path)
    except OSError:
        return False
    return True
