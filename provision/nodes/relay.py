"""The master as the cluster's relay: bytes from the laptop cross its uplink once.

The laptop sends an artefact (a dataset's split directory, the wheelhouse) to
the master; the master forwards it to each worker over the cluster network,
with ssh(1) from the master to the worker's private address.

A dataset streams: the master tees the laptop's bytes into its own copy and
every worker's pipe as they arrive (`provision.nodes.stream`, `provision.nodes.tee`),
each worker with its own answer, checks and error. Workers take the master's
installed environment (`provision.nodes.envcopy`) rather than the wheelhouse.
What is forwarded from the master's stored copy (`forward`, `forward_wheels`) is
what the stream or the copy could not give: a worker that refused the cluster key
mid-stream, and the wheelhouse of a worker that installs itself after a failed
environment copy.

The master reaches workers with a key of the cluster's own (`ensure_key`):
generated on the master, its private half never leaves it (0600 under
``{remote_root}/cluster-ssh``); the laptop authorises the public half on each
worker (`authorize`) and records the worker's host key, as the laptop's own
connection saw it, in the master's known_hosts for that private address, so
the master checks host keys strictly (EC2 reuses private addresses; a new
instance's key replaces the old line). The user's own key never reaches a node.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import fabric

from provision.nodes import keys
from provision.nodes.remote import Borrowed, Endpoint, NodeError, run
from provision.nodes.transfer import PUSH_TIMEOUT_S, own_dir, receive_script

KEY_DIR = "cluster-ssh"  # under remote_root, on the master
KEY_NAME = keys.KEY_NAME
COMMENT = "provision-cluster"
NO_SOURCE = 86  # the master's exit status when it lacks what it was asked to forward
REFUSED = ("Permission denied", "Host key verification failed", "No ED25519 host key")


@dataclass(frozen=True)
class Hop:
    """A worker as the master reaches it: its private address, the image's user."""

    name: str  # the worker's label, for messages
    host: str  # its private address
    user: str


def key_dir(remote_root: str) -> str:
    return f"{remote_root}/{KEY_DIR}"


def ensure_key(master: Endpoint | fabric.Connection, remote_root: str) -> str:
    """The cluster key's public half, generated on the master the first time (idempotent,
    safe to call from several threads: see `keys.ensure_key_script`)."""
    script = keys.ensure_key_script(key_dir(remote_root), COMMENT)
    return run(master, f"{own_dir(remote_root)} && {script}").strip()


def authorize(
    worker: Endpoint | fabric.Connection, master: Endpoint | fabric.Connection,
    private_ip: str, public_key: str, remote_root: str,
) -> None:
    """Let the master in to `worker` with the cluster key (idempotent).

    The worker's host key comes from this machine's own connection to it (checked
    against the cluster's known_hosts), and is written to the master's known_hosts
    for `private_ip`, replacing what an earlier instance at that address left.
    """
    q = shlex.quote
    with Borrowed(worker) as b:
        run(b.conn, keys.authorize_script(public_key))
        host_key = b.conn.transport.get_remote_server_key()
    line = f"{private_ip} {host_key.get_name()} {host_key.get_base64()}"
    known = f"{key_dir(remote_root)}/known_hosts"
    run(master, f"cd {q(key_dir(remote_root))} && flock .lock sh -c " + q(
        f"touch {q(known)} && awk -v ip={q(private_ip)} '$1 != ip' {q(known)} > known.new && "
        f"printf '%s\\n' {q(line)} >> known.new && mv known.new {q(known)}"
    ))


def ssh_to(hop: Hop, remote_root: str, command: str) -> str:
    """The shell command, run on the master, that runs `command` on `hop` with the
    cluster key and only the master's cluster known_hosts (strict, no agent, no
    user config)."""
    d = key_dir(remote_root)
    opts = {
        "IdentitiesOnly": "yes", "IdentityAgent": "none", "BatchMode": "yes",
        "UserKnownHostsFile": f"{d}/known_hosts", "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes", "LogLevel": "ERROR", "ConnectTimeout": "30",
        "ServerAliveInterval": "15", "ServerAliveCountMax": "4",
    }
    argv = ["ssh", "-F", "/dev/null", "-i", f"{d}/{KEY_NAME}", "-l", hop.user, "-T"]
    for k, v in opts.items():
        argv += ["-o", f"{k}={v}"]
    return shlex.join([*argv, hop.host, command])


def forward(
    master: Endpoint | fabric.Connection, hop: Hop, remote_root: str, src_dir: str,
    files: list[str] | None, receive: str, *, timeout: float | None = PUSH_TIMEOUT_S,
    require: str | None = None,
) -> str:
    """Stream `files` of the master's `src_dir` (all of it when None) as one tar into
    `receive` (a `transfer.receive_script`) on `hop`; the worker's first line.

    The pipeline's status is ssh's (the worker's script): when the worker answers
    that it has the files and exits, the master's tar ends on a broken pipe,
    which is not an error. `NodeError` names the master when its ssh fails. `require`:
    a shell test on the master; when it fails, nothing is sent (exit `NO_SOURCE`).
    """
    q = shlex.quote
    members = " ".join(q(f) for f in files) if files is not None else "."
    check = f"{{ {require}; }} || exit {NO_SOURCE}; " if require else ""
    script = (f"{check}cd {q(src_dir)} && tar -c -f - {members} | "
              f"{ssh_to(hop, remote_root, receive)}")
    out = run(master, script, timeout=timeout)
    return out.splitlines()[0] if out else ""


def refused(err: NodeError) -> bool:
    """Whether the master's ssh to a worker was refused (key not yet authorised there,
    or a host key the master does not know): worth authorising and trying again."""
    return err.command_status == 255 and any(r in err.stderr for r in REFUSED)


def forward_wheels(
    master: Endpoint | fabric.Connection, hop: Hop, remote_root: str, digest: str
) -> bool:
    """The master's wheelhouse (uv unpacked, its digest file last in) to `hop`, renamed
    into place whole; False when the master holds no wheelhouse of `digest`."""
    wheels = f"{remote_root}/wheels"
    receive, _ = receive_script(wheels, None, None, None)
    have = f'test "$(cat {shlex.quote(wheels)}/.digest 2>/dev/null)" = {shlex.quote(digest)}'
    try:
        forward(master, hop, remote_root, wheels, None, receive, require=have)
    except NodeError as err:
        if err.command_status == NO_SOURCE:
            return False
        raise
    return True
