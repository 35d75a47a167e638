"""A worker's environment copied from the master's, installed once per cluster.

``uv pip install`` on a node unzips every wheel (numpy, scipy, scikit-learn:
~280 MB unpacked), and on nodes that share cores (burstable or dense
instances; the simulated region's hosts share two) the installs of all workers
serialise on that CPU. The master installs anyway (its engines and controller
need the venv), so workers take its result instead: the master streams its
installed ``venv`` (and the managed interpreter under ``python/``, when the
image lacked the client's minor) as one uncompressed tar over the cluster
network, the worker unpacks it into a staging directory, and the laptop, over
its own connection to the worker, checks that the venv starts there and
renames it into place, the digest written last as for an install. A worker's
cost is then one tar extraction instead of decompressing every wheel; it needs
neither the wheelhouse nor uv's cache.

The copy is the same venv at the same absolute path: `EnvSpec.remote_root` is
the same on every node, so the scripts' shebangs, ``pyvenv.cfg``'s ``home`` and
the interpreter symlink stay valid, and every node of a cluster boots the same
image, so the image's ``python3`` the venv points at is there too (checked:
the staged venv must start before it goes in). The ``__pycache__`` the master's
engines already wrote comes along, saving the workers their first compile.

Any failure (the master lacks that digest, its tar or ssh fails, the copy does
not start on the worker) leaves the worker as it was, staging removed, and
the caller installs on the node as before.
"""

from __future__ import annotations

import shlex

import fabric

from provision.nodes import relay
from provision.nodes.python import INSTALL_DIR
from provision.nodes.remote import Endpoint, NodeError, run
from provision.nodes.transfer import PUSH_TIMEOUT_S

STAGING = "env.tmp"  # under remote_root on the worker: the copy before it goes in
TAR_FAILED = 87  # the master's exit status when its tar failed (a file it could not read)


def stream_script(hop: relay.Hop, remote_root: str, digest: str) -> str:
    """The master's side: its venv (and managed Python) as a tar into `hop`'s staging.

    Exits `relay.NO_SOURCE` (nothing sent) unless the master's own environment is
    complete and of `digest`. The pipeline's status is ssh's, so tar's own status
    is kept aside: GNU tar exits 1 when a file changed while read (an engine
    writing a ``.pyc``; Python replaces it atomically, so either copy is whole)
    and 2 on a fatal error, which must not pass for a complete copy.
    """
    q = shlex.quote
    root = q(remote_root)
    staging = q(f"{remote_root}/{STAGING}")
    receive = (f"rm -rf {staging} && mkdir -p {staging} && "
               f"{{ tar -x -f - -C {staging} || {{ s=$?; rm -rf {staging}; exit $s; }}; }}")
    return "\n".join([
        f'test "$(cat {root}/.env-digest 2>/dev/null)" = {q(digest)} || exit {relay.NO_SOURCE}',
        f"cd {root}",
        f"m=venv; [ -d {INSTALL_DIR} ] && m=\"venv {INSTALL_DIR}\"",
        'st=$(mktemp)',
        '{ tar -c -f - $m; echo $? > "$st"; } | ' + relay.ssh_to(hop, remote_root, receive),
        's=$?; t=$(cat "$st"); rm -f "$st"',
        '[ "$s" = 0 ] || exit "$s"',
        f'[ "$t" -le 1 ] || {{ echo "tar exited $t on the master" >&2; exit {TAR_FAILED}; }}',
    ])


def commit_script(remote_root: str, digest: str) -> str:
    """The worker's side, after the stream: the staged copy into place if it starts here.

    The interpreter goes first (the venv's symlink points at it), then the venv,
    then the digest, written last so that an interrupted commit never looks complete.
    """
    q = shlex.quote
    root = q(remote_root)
    staging = q(f"{remote_root}/{STAGING}")
    managed = f"{staging}/{INSTALL_DIR}"
    return "\n".join([
        "set -e",
        f"rm -f {root}/.env-digest",
        f"if [ -d {managed} ]; then rm -rf {root}/{INSTALL_DIR} && "
        f"mv {managed} {root}/{INSTALL_DIR}; fi",
        f"{staging}/venv/bin/python -c '' || {{ rm -rf {staging}; "
        "echo 'the venv copied from the master does not start here' >&2; exit 4; }",
        f"rm -rf {root}/venv && mv {staging}/venv {root}/venv && rm -rf {staging}",
        f"printf %s {q(digest)} > {root}/.env-digest.tmp && "
        f"mv {root}/.env-digest.tmp {root}/.env-digest",
    ])


def copy_env(
    master: Endpoint | fabric.Connection, hop: relay.Hop, worker: fabric.Connection,
    remote_root: str, digest: str,
) -> bool:
    """Give `hop` (reached by this machine as `worker`) the master's environment.

    False when the master holds no complete environment of `digest` (nothing
    sent); `NodeError` when the stream or the commit failed, after removing the
    staging directory (the caller installs on the node instead).
    """
    try:
        run(master, stream_script(hop, remote_root, digest), timeout=PUSH_TIMEOUT_S)
        run(worker, commit_script(remote_root, digest))
    except NodeError as err:
        if err.command_status == relay.NO_SOURCE:  # the master sent nothing: nothing staged
            return False
        run(worker, f"rm -rf {shlex.quote(f'{remote_root}/{STAGING}')}")
        raise
    return True
