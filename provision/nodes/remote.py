"""SSH to nodes: lazy Fabric connections, waiting for SSH, per-host results.

Running something on many nodes at once is `provision.nodes.fanout`.

A node without a public address is reached through another (the master): its
`Endpoint.via`. The connection then runs over a ``direct-tcpip`` channel of an
SSH connection to the jump host (OpenSSH's ProxyJump, done by paramiko), which
opens and closes with it.

Connections are lazy, as in Fabric: `connection()` does not touch the network;
the first `run`/`put` opens it and `close()` (or ``with``) ends it. Host keys
are trusted on first use and recorded in a per-cluster known_hosts file, never
in ``~/.ssh/known_hosts``: EC2 reuses private addresses across clusters, so a
global file would either fill with stale keys or reject a fresh instance, while
a per-cluster file still catches a key that changes under a running cluster.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import fabric
import invoke
import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from provision.errors import ProvisionError, one_line_tail

# Errors that mean "the SSH link dropped or is not up yet", worth one more try.
# (paramiko's AuthenticationException is an SSHException: `wait_for_ssh` tells it apart.)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    NoValidConnectionsError,
    paramiko.SSHException,
    EOFError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    OSError,
)


SSH_PORT = 22
CONNECT_TIMEOUT_S = 10  # TCP connect of an SSH connection
HANDSHAKE_TIMEOUT_S = 15  # banner and authentication, on a node still booting
# wait_for_ssh: a cheap TCP probe first, then polls backing off between these.
TCP_PROBE_S = 5
SSH_POLL_S, SSH_POLL_MAX_S, SSH_BACKOFF = 0.5, 5.0, 1.5
# How long sshd may refuse the key before that is taken for the answer. cloud-init
# writes the image user's authorized_keys in its init stage, which current images
# order before sshd (cloud-init.service: Before=sshd.service); where the two raced
# (cloud-init LP #1333920) the key followed within seconds. Past this, the user
# or the key is wrong, and waiting out ssh_timeout would not change that.
AUTH_GRACE_S = 15.0


@dataclass(frozen=True)
class Endpoint:
    """How to reach one node over SSH."""

    name: str  # node name or instance id, used in every message
    host: str  # address the client connects to
    user: str
    key_path: Path
    known_hosts: Path | None = None  # per-cluster TOFU file; None = trust, record nothing
    port: int = SSH_PORT
    # The host to jump through (ProxyJump) when this machine has no route to `host`:
    # the master, for a worker with only a private address.
    via: Endpoint | None = None

    @property
    def where(self) -> str:
        """How messages name the node: ``name (host)``, with the jump host if any."""
        hop = f" via {self.via.host}" if self.via is not None else ""
        return f"{self.name} ({self.host}{hop})"


class NodeError(ProvisionError):
    """One line naming the node, host, command, exit code and stderr tail.

    The remote command's exit code is `command_status`; `exit_code` stays the
    status `provision` itself exits with (1), as for every `ProvisionError`.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str = "",
        host: str = "",
        command: str = "",
        command_status: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.node, self.host, self.command = node, host, command
        self.command_status, self.stderr = command_status, stderr

    @classmethod
    def from_command(
        cls, ep: Endpoint, command: str, exit_code: int | None, stderr: str, what: str = ""
    ) -> NodeError:
        tail = one_line_tail(stderr)
        shown = _short(command)
        status = what or f"exited {exit_code}"
        return cls(
            f"{ep.name} ({ep.host}): `{shown}` {status}" + (f": {tail}" if tail else ""),
            node=ep.name, host=ep.host, command=command, command_status=exit_code, stderr=stderr,
        )


def _short(command: str, width: int = 80) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= width else first[: width - 3] + "..."


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Record an unknown host's key in the cluster file; refuse a changed one.

    Paramiko only consults the policy for hosts missing from the keys loaded when
    the connection was made, and other threads may have recorded the host since:
    re-read the file under a lock before deciding, and append (never rewrite) so
    concurrent connections cannot drop each other's entries.
    """

    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        with self._lock:
            known = paramiko.HostKeys()
            if self.path.exists():
                known.load(str(self.path))
            entry = known.lookup(hostname)
            if entry:
                ours = entry.get(key.get_name()) or next(iter(entry.values()))
                if ours != key:
                    raise paramiko.BadHostKeyException(hostname, key, ours)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a") as f:
                    f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _known_as(host: str, port: int) -> str:
    """How known_hosts files name a host: bare on port 22, else ``[host]:port``."""
    return host if port == SSH_PORT else f"[{host}]:{port}"


def forget_host(known_hosts: Path, host: str, port: int = SSH_PORT) -> None:
    """Drop a host from the cluster file, e.g. when its instance is terminated.

    EC2 hands the same private address to a later instance with a new key.
    """
    if not known_hosts.exists():
        return
    name = _known_as(host, port)
    with _TrustOnFirstUse._lock:
        keys = paramiko.HostKeys(str(known_hosts))
        if name in keys:
            del keys[name]
            keys.save(str(known_hosts))


class AuthFailed(paramiko.AuthenticationException):
    """sshd answered and refused the key, at `endpoint` (the node, or its jump host)."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(f"{endpoint.user}@{endpoint.host} refused the key {endpoint.key_path}")
        self.endpoint = endpoint


class _Connection(fabric.Connection):
    """A Fabric connection whose jump host is opened with a timeout and closed with it.

    Fabric opens the gateway's ``direct-tcpip`` channel without a timeout (a
    node that is not up yet could hold it for minutes) and leaves the gateway
    open after `close`.
    """

    def open_gateway(self) -> paramiko.Channel:
        gateway = self.gateway
        assert isinstance(gateway, fabric.Connection)
        try:
            gateway.open()
        except paramiko.AuthenticationException as e:
            raise AuthFailed(_endpoint_of(gateway)) from e
        transport = gateway.transport
        assert transport is not None
        return transport.open_channel(
            "direct-tcpip", (self.host, int(self.port)), ("", 0), timeout=self.connect_timeout
        )

    def open(self) -> object:
        try:
            return super().open()
        except AuthFailed:
            raise
        except paramiko.AuthenticationException as e:
            raise AuthFailed(_endpoint_of(self)) from e

    def close(self) -> None:
        try:
            super().close()
        finally:
            if isinstance(self.gateway, fabric.Connection):
                self.gateway.close()


def connection(ep: Endpoint, connect_timeout: float = CONNECT_TIMEOUT_S) -> fabric.Connection:
    """A lazy Fabric connection: key auth only, host keys per cluster, through
    `ep.via` when set (whose host key is checked against the same file).

    The config is built lazily (no ``~/.ssh/config``, no Fabric/Invoke yaml) so
    what reaches the node depends on the `Endpoint` alone, not on the user's
    dotfiles; agent and ``~/.ssh/id_*`` keys are off for the same reason.
    """
    conn = _Connection(
        ep.host,
        user=ep.user,
        port=ep.port,
        config=fabric.Config(lazy=True),
        gateway=connection(ep.via, connect_timeout) if ep.via is not None else False,
        connect_timeout=max(1, round(connect_timeout)),
        connect_kwargs={
            "key_filename": str(ep.key_path),
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": max(connect_timeout, HANDSHAKE_TIMEOUT_S),
            "auth_timeout": max(connect_timeout, HANDSHAKE_TIMEOUT_S),
        },
        inline_ssh_env=True,
    )
    if ep.known_hosts is not None:
        if ep.known_hosts.exists():
            conn.client.get_host_keys().load(str(ep.known_hosts))
        conn.client.set_missing_host_key_policy(_TrustOnFirstUse(ep.known_hosts))
    conn.endpoint = ep  # type: ignore[attr-defined]  # for messages when given a connection
    return conn


def _endpoint_of(conn: fabric.Connection) -> Endpoint:
    ep = getattr(conn, "endpoint", None)
    if ep is None:
        ep = Endpoint(
            name=conn.host, host=conn.host, user=conn.user, key_path=Path(), port=conn.port
        )
    return ep


class Borrowed:
    """Use a given connection as is, or open one for an Endpoint and close it after."""

    def __init__(self, target: Endpoint | fabric.Connection) -> None:
        self.owned = isinstance(target, Endpoint)
        self.conn = connection(target) if isinstance(target, Endpoint) else target
        self.ep = target if isinstance(target, Endpoint) else _endpoint_of(target)

    def __enter__(self) -> Borrowed:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.conn.close()


def auth_error(failed: AuthFailed, ep: Endpoint) -> NodeError:
    """The one line for a key sshd keeps refusing: which login, and what to change."""
    who = failed.endpoint
    hop = "" if who.host == ep.host else f" (the jump host to {ep.name})"
    return NodeError(
        f"{ep.where}: {who.user}@{who.host}{hop} refused key {who.key_path}: set `user` in "
        "the cluster file to the image's login user, and check that key_path is the key "
        "pair's private key",
        node=ep.name, host=ep.host,
    )


def wait_for_ssh(ep: Endpoint, timeout: float, *, auth_grace: float = AUTH_GRACE_S) -> float:
    """Wait until the node runs a command over SSH; return the seconds waited.

    A TCP probe first (cheap, and it fails fast while the instance boots; not
    through a jump host, where the channel open is the probe), then a real
    ``true`` over SSH, since sshd accepts TCP before it can authenticate us.
    Transient failures back off from `SSH_POLL_S` up to `SSH_POLL_MAX_S`; there
    is one overall deadline. A key refused for `auth_grace` seconds is a
    `NodeError` at once (see `AUTH_GRACE_S`), as is a host key that changed.
    """
    start = time.monotonic()
    deadline = start + timeout
    delay = SSH_POLL_S
    last: BaseException | None = None
    refused_since: float | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            if ep.via is None:
                probe = min(remaining, TCP_PROBE_S)
                with socket.create_connection((ep.host, ep.port), timeout=probe):
                    pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with connection(ep, connect_timeout=min(remaining, CONNECT_TIMEOUT_S)) as conn:
                conn.run("true", hide=True, in_stream=False, timeout=max(1, round(remaining)))
            return time.monotonic() - start
        except paramiko.BadHostKeyException:
            raise  # not transient: someone else answers at this address
        except AuthFailed as e:
            refused_since = refused_since or time.monotonic()
            if time.monotonic() - refused_since >= auth_grace:
                raise auth_error(e, ep) from e
            last = e
        except (*TRANSIENT_ERRORS, invoke.CommandTimedOut) as e:
            last = e
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * SSH_BACKOFF, SSH_POLL_MAX_S)
    if isinstance(last, AuthFailed):
        raise auth_error(last, ep) from last
    raise NodeError(
        f"{ep.where} did not answer SSH within {timeout:.0f}s", node=ep.name, host=ep.host
    ) from last


def run(
    target: Endpoint | fabric.Connection,
    cmd: str,
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run `cmd` on the node and return its stdout; `NodeError` on a nonzero exit.

    Commands run without a pty and with stdin closed, so a remote program that
    reads input fails instead of hanging the orchestrator.
    """
    with Borrowed(target) as b:
        try:
            result = b.conn.run(
                cmd, hide=True, warn=True, in_stream=False, env=env or {},
                timeout=None if timeout is None else max(1, round(timeout)),
            )
        except invoke.CommandTimedOut as e:
            raise NodeError.from_command(
                b.ep, cmd, None, e.result.stderr, what=f"timed out after {timeout:.0f}s"
            ) from None
        if not result.ok:
            raise NodeError.from_command(b.ep, cmd, result.exited, result.stderr or result.stdout)
        return result.stdout


def put(
    target: Endpoint | fabric.Connection, local: Path | str, remote: str, mode: int | None = None
) -> None:
    """Copy one file to the node (SFTP), optionally setting its mode before writing data."""
    with Borrowed(target) as b:
        sftp = b.conn.sftp()
        if mode is None:
            sftp.put(str(local), remote)
            return
        # Create it with the mode first, so a secret is never readable in between.
        with sftp.open(remote, "w") as f:
            f.chmod(mode)
            f.set_pipelined(True)
            f.write(Path(local).read_bytes())


def get(target: Endpoint | fabric.Connection, remote: str, local: Path | str) -> None:
    """Copy one file from the node (SFTP)."""
    with Borrowed(target) as b:
        b.conn.get(remote, str(local))


def host_known(ep: Endpoint) -> bool:
    """Whether the cluster's known_hosts file already holds `ep`'s key."""
    if ep.known_hosts is None or not ep.known_hosts.exists():
        return False
    name = _known_as(ep.host, ep.port)
    with _TrustOnFirstUse._lock:
        return paramiko.HostKeys(str(ep.known_hosts)).lookup(name) is not None
