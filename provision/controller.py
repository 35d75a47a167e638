"""The controller the laptop talks to: its connection files, and `connect()`.

The files (the controller's ports, HMAC key and CurveZMQ public key) are cached
in the cluster's state directory, next to the id of the master they came from.
A master that is replaced (a spot interruption, then `up`) runs a new
controller with new keys and ports: files of the old one would have a client
wait on ports nobody listens on. So whenever the running master is not the one
recorded, the files are fetched again before anything connects.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from provision import cloud, state
from provision.client import CONNECT_TIMEOUT_S, connect_client
from provision.cloud.common import ALIVE_STATES, ClusterInfo, InstanceInfo
from provision.context import Context, context_for
from provision.errors import ProvisionError
from provision.nodes import engines

MASTER_ID_FILE = "controller-master"  # beside the connection files: the master they came from
# A master in one of these states runs no controller and will not again: `up` replaces it.


def expected_engines(ctx: Context, info: ClusterInfo) -> int:
    return sum(ctx.engines_on(i) for i in info.nodes)


def running_master(ctx: Context, missing: str) -> tuple[ClusterInfo, InstanceInfo]:
    """The cluster and its master; `ProvisionError(missing)` when it has none running."""
    info = cloud.describe_cluster(ctx.region, ctx.name)
    if info.master is None:
        raise ProvisionError(missing)
    return info, info.master


def recorded_master(name: str) -> str | None:
    """The instance id of the master whose connection files are cached, if known."""
    path = state.cluster_dir(name) / MASTER_ID_FILE
    return path.read_text().strip() or None if path.exists() else None


def record_master(name: str, master: InstanceInfo) -> None:
    """Say that the cached connection files are `master`'s controller's."""
    state.write_atomic(state.cluster_dir(name) / MASTER_ID_FILE, master.instance_id + "\n")


def refresh_connection_files(ctx: Context, master: InstanceInfo) -> None:
    """Fetch the controller's connection files from `master` unless the cached ones
    are its own (missing files, or files of a master since replaced, are fetched)."""
    have = all(p.exists() for p in ctx.connection_files)
    if have and recorded_master(ctx.name) == master.instance_id:
        return
    engines.fetch_connection_files(
        ctx.endpoint(master), ctx.config.remote_root, state.cluster_dir(ctx.name)
    )
    record_master(ctx.name, master)


def master_gone(ctx: Context, master: InstanceInfo) -> str | None:
    """Why `master` is gone for good, as EC2 says (None while it still runs), in one
    line that says what to do. Asked by id: tag queries lag behind (eventual
    consistency), and an id EC2 no longer knows at all is an instance long gone."""
    found = cloud.describe_instances(ctx.region, [master.instance_id])
    now = found[0] if found else None
    if now is not None and now.state in ALIVE_STATES:
        return None
    state = "no longer known to EC2" if now is None else now.state
    why = f", {now.state_reason}" if now is not None and now.state_reason else ""
    return (f"the master of cluster {ctx.name}, {master.label} ({master.instance_id}), is gone "
            f"({state}{why}): run `provision up {ctx.name}` to replace it, then the same "
            "`provision run` resumes from its journal")


def connect(name: str, *, timeout: float = CONNECT_TIMEOUT_S, n_engines: int | None = None) -> Any:
    """A ready `ipyparallel.Client` for a running cluster, through an SSH tunnel."""
    ctx = context_for(name)
    info, master = running_master(
        ctx, f"cluster {name!r} has no running master, so no controller: run `provision up` "
        "to replace it (the workers and a search's journal are kept)"
    )
    refresh_connection_files(ctx, master)
    want = n_engines if n_engines is not None else expected_engines(ctx, info)
    return connect_client(ctx.connection_files[0], ctx.endpoint(master), n_engines=want,
                          timeout=timeout, master_gone=partial(master_gone, ctx, master))
