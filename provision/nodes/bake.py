"""A node about to be baked into an image: what it holds, and what must not go in.

An image keeps everything on the node's disk, and anyone who launches it gets
that. So the cluster's secrets and this cluster's runtime state leave the disk
for the moment of the capture (`stash`) and come back afterwards (`restore`):

- the master's cluster SSH key (`relay.KEY_DIR`) and the autostop agent with its
  key (`autostop`): a private key that logs in to, or powers off, every worker;
- the controller's profile, connection files and pid files (``ipython``,
  ``security``, ``run``): they hold the controller's HMAC key, and a stale pid
  file could make a new master believe its controller runs;
- the lines of ``~/.ssh/authorized_keys`` that let the cluster's keys in
  (comments ``provision-cluster`` and ``provision-autostop``).

They are held in this process's memory meanwhile, never written elsewhere on the
node (every directory of a disk is in its image). The environment (``venv``,
``wheels``, ``.env-digest``, a managed Python) stays: that is what an image is for.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

import fabric

from provision.nodes import autostop, relay
from provision.nodes.keys import AUTHORIZED_KEYS, authorize_script
from provision.nodes.remote import Borrowed, Endpoint, run

# Under remote_root: what must not be baked (see the module's docstring).
PRIVATE = (relay.KEY_DIR, "autostop", "ipython", "security", "run")
KEY_COMMENTS = (relay.COMMENT, autostop.KEY_COMMENT)
STASH_TIMEOUT_S = 120


@dataclass(frozen=True)
class Stash:
    """What `stash` took off a node: a gzipped tar of `PRIVATE` (relative to
    remote_root) and the removed authorized_keys lines."""

    tarball: bytes
    key_lines: str


def env_digest(target: Endpoint | fabric.Connection, remote_root: str) -> str:
    """The digest of the environment installed on the node ("" when none is complete)."""
    root = shlex.quote(remote_root)
    return run(target, f"cat {root}/.env-digest 2>/dev/null || true").strip()


def _key_pattern() -> str:
    return shlex.quote(" (" + "|".join(KEY_COMMENTS) + ")$")


def stash(target: Endpoint | fabric.Connection, remote_root: str) -> Stash:
    """Take the secrets and runtime state off the node; returns them to `restore`."""
    root = shlex.quote(remote_root)
    names = " ".join(shlex.quote(p) for p in PRIVATE)
    script = (
        f"cd {root} && set -- && for p in {names}; do [ -e \"$p\" ] && set -- \"$@\" \"$p\"; "
        "done; if [ $# -gt 0 ]; then tar czf - \"$@\" | base64 -w0; fi"
    )
    keys = AUTHORIZED_KEYS
    with Borrowed(target) as b:  # one connection for the three steps
        tarball = base64.b64decode(run(b.conn, script, timeout=STASH_TIMEOUT_S).strip() or b"")
        lines = run(b.conn, f"grep -E {_key_pattern()} {keys} 2>/dev/null || true")
        # Only once both are held here: remove them from the disk.
        run(b.conn, f"cd {root} && rm -rf {names} && if [ -f {keys} ]; then "
                    f"grep -vE {_key_pattern()} {keys} > {keys}.new || true; "
                    f"chmod 600 {keys}.new && mv {keys}.new {keys}; fi")
    return Stash(tarball, lines)


def restore(target: Endpoint | fabric.Connection, remote_root: str, stashed: Stash) -> None:
    """Put back what `stash` took (idempotent: lines already there are not repeated)."""
    root = shlex.quote(remote_root)
    with Borrowed(target) as b:  # one connection for the whole restore
        if stashed.tarball:  # by SFTP: a command line is limited to 128 KiB
            tmp = f"{remote_root}/.bake-restore.tgz"
            with b.conn.sftp().open(tmp, "w") as f:
                f.chmod(0o600)  # a secret is never readable in between
                f.set_pipelined(True)
                f.write(stashed.tarball)
            run(b.conn, f"cd {root} && tar xzf .bake-restore.tgz && rm -f .bake-restore.tgz",
                timeout=STASH_TIMEOUT_S)
        lines = stashed.key_lines.splitlines()
        if lines:
            run(b.conn, " && ".join(authorize_script(line) for line in lines))
