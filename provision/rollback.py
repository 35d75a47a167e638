"""What a failed node or a failed `up` leaves behind: nothing billing silently.

A worker that fails is terminated at once (its engines are missing, the rest
of the cluster works). A failure of the whole `up` (the master, or an image
whose nodes cannot get the client's Python) terminates every instance that
`up` launched, so a first `up` that cannot work costs minutes, not a night of
idle nodes. `keep_failed` keeps them for a look, and every message says what
still bills.
"""

from __future__ import annotations

from provision import cloud
from provision.cloud.common import WORKER, ClusterInfo
from provision.configure import Results
from provision.context import Context
from provision.errors import BadInput, ProvisionError
from provision.nodes.python import PythonUnavailable


def fail_workers(
    ctx: Context, info: ClusterInfo, results: Results, keep_failed: bool = False
) -> list[str]:
    """Terminate failed workers (kept with `keep_failed`, loudly): never a
    half-configured node left billing silently."""
    failed = [label for label, err in results.items() if err is not None]
    doomed = []
    for label in failed:
        inst = info.find(label)
        if inst is not None and inst.role == WORKER:
            fate = "kept (--keep-failed): it bills until removed" if keep_failed else "terminating"
            ctx.reporter.warn(
                f"{label} ({inst.instance_id}, {inst.private_ip}) failed: {results[label]}; {fate}"
            )
            doomed.append(inst.instance_id)
    if doomed and not keep_failed:
        cloud.terminate_instances(ctx.region, doomed, wait=False)
    return failed


def fatal(info: ClusterInfo, results: Results) -> str | None:
    """Why the whole `up` fails, if it does: the image cannot get the client's
    Python (true of every node), or the master failed."""
    for err in results.values():
        if isinstance(err, PythonUnavailable):
            return str(err)
    master = info.master
    if master is not None and results.get(master.label) is not None:
        return f"master {master.instance_id} ({master.private_ip}) failed: {results[master.label]}"
    return None


def roll_back(ctx: Context, err: ProvisionError, keep_failed: bool) -> ProvisionError:
    """The error of a failed `up`, once what it launched is terminated (or kept
    with `keep_failed`, saying it bills): a failed `up` leaves nothing billing silently."""
    ids = sorted(set(ctx.launched))
    if not ids:
        return err
    if keep_failed:
        note = (f"kept {len(ids)} instance(s) this up launched (--keep-failed): {', '.join(ids)}"
                f" bill until `provision down {ctx.name}`")
    else:
        ctx.reporter.note(f"terminating {len(ids)} instance(s) this up launched")
        try:
            cloud.terminate_instances(ctx.region, ids, timeout=ctx.config.launch_timeout)
            note = f"terminated the {len(ids)} instance(s) this up launched: {', '.join(ids)}"
        except cloud.CloudError as again:
            note = (f"terminating {', '.join(ids)} failed too ({again}): run "
                    f"`provision down {ctx.name}`")
    return (BadInput if isinstance(err, BadInput) else ProvisionError)(f"{err}; {note}")
