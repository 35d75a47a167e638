"""A connected `ipyparallel.Client`, through an SSH tunnel to the master or direct.

Why not ``Client(path, sshserver=..., paramiko=True)``: in pyzmq/ipyparallel
9.x that path (a) checks host keys against ``~/.ssh/known_hosts`` only (the
tunnel processes even auto-accept unknown keys), not the cluster's own file,
(b) forks one process and opens one SSH connection per socket, left running
until the interpreter exits, and (c) connects the tunnelled sockets without
the CurveZMQ keys, so against a controller with ``IPP_ENABLE_CURVE=1`` only the
registration socket works. Instead, one SSH connection (host key checked
against the cluster's known_hosts) forwards each controller port from a local
port bound to 127.0.0.1, the client is given the connection info rewritten to
those ports, and ipyparallel connects "directly" with curve keys as usual.
Closing the client closes the tunnel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fabric
import ipyparallel
import paramiko
from traitlets.log import get_logger

from provision.errors import ProvisionError
from provision.nodes.remote import Endpoint, connection

KEEPALIVE_S = 30  # idle searches must not lose the tunnel to a NAT timeout
BACKLOG = 16  # pending connections per forwarded port (a client opens about seven)
CHANNEL_OPEN_TIMEOUT_S = 10
SELECT_S = 0.5  # how often the tunnel's threads look up from waiting, to notice close()
BUFFER = 1 << 16
JOIN_S = 2  # for the accept thread, on close
CONNECT_TIMEOUT_S = 120  # the controller answers and the engines register
# An engine that gave up registering (IPEngine.timeout, 30 s) has exited by then.
REVIVE_S = 45
# Ports of the client connection file that the client connects to.
CLIENT_PORTS = ("registration", "control", "mux", "task", "iopub", "notification", "broadcast")


class EnginesTimeout(ProvisionError, TimeoutError):
    """Fewer engines registered than expected in time (still a `TimeoutError`)."""


class Tunnel:
    """Local ports on 127.0.0.1 forwarded to ``remote_host:port`` over one SSH connection.

    One accept thread for all listeners, one pump thread per forwarded TCP
    connection (a client opens about seven). zmq reconnects on its own if a
    forwarded connection drops, and each reconnect opens a fresh channel.
    """

    def __init__(self, conn: fabric.Connection, remote_host: str, ports: list[int]) -> None:
        self.conn = conn
        self.remote_host = remote_host
        conn.open()
        transport = conn.transport
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_S)
        self.transport: paramiko.Transport = transport
        self.local_ports: dict[int, int] = {}
        self._listeners: dict[socket.socket, int] = {}
        self._closed = threading.Event()
        self._pairs: list[tuple[socket.socket, paramiko.Channel]] = []
        self._lock = threading.Lock()
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))  # loopback only: the tunnel is not offered to the LAN
            s.listen(BACKLOG)
            self._listeners[s] = port
            self.local_ports[port] = s.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="ssh-tunnel", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select(list(self._listeners), [], [], SELECT_S)
            except (OSError, ValueError):
                return  # listeners closed
            for listener in ready:
                try:
                    sock, peer = listener.accept()
                except OSError:
                    continue
                try:
                    chan = self.transport.open_channel(
                        "direct-tcpip", (self.remote_host, self._listeners[listener]), peer,
                        timeout=CHANNEL_OPEN_TIMEOUT_S,
                    )
                except (paramiko.SSHException, OSError, EOFError):
                    sock.close()  # zmq will retry; the next attempt may find the link back
                    continue
                with self._lock:
                    self._pairs.append((sock, chan))
                threading.Thread(target=self._pump, args=(sock, chan), daemon=True).start()

    def _pump(self, sock: socket.socket, chan: paramiko.Channel) -> None:
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([sock, chan], [], [], SELECT_S)
                if sock in ready:
                    data = sock.recv(BUFFER)
                    if not data:
                        break
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(BUFFER)
                    if not data:
                        break
                    sock.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # either end closed: this forwarded connection is over, zmq reconnects
        finally:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                chan.close()  # the transport may already be gone
            sock.close()
            with self._lock:
                if (sock, chan) in self._pairs:
                    self._pairs.remove((sock, chan))

    def close(self) -> None:
        """Stop forwarding and close the SSH connection (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        for s in self._listeners:
            s.close()
        with self._lock:
            pairs = list(self._pairs)
        for sock, chan in pairs:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                chan.close()
            sock.close()
        self._thread.join(timeout=JOIN_S)
        self.conn.close()


class TunneledClient(ipyparallel.Client):
    """An `ipyparallel.Client` that also closes its SSH tunnel."""

    _provision_tunnel: Tunnel | None = None

    def close(self, linger: int | None = None) -> None:
        try:
            super().close(linger=linger)
        finally:
            if self._provision_tunnel is not None:
                self._provision_tunnel.close()


def _tunnelled_info(info: dict[str, Any], tunnel: Tunnel) -> dict[str, Any]:
    cfg = dict(info)
    for key in CLIENT_PORTS:
        if isinstance(cfg.get(key), int):
            cfg[key] = tunnel.local_ports[cfg[key]]
    cfg["interface"] = "tcp://127.0.0.1"
    cfg["location"] = "127.0.0.1"
    cfg["ssh"] = ""
    return cfg


class _DropSigningWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Message signing is disabled" not in record.getMessage()


@contextlib.contextmanager
def _curve_replaces_signing(info: dict[str, Any]) -> Iterator[None]:
    """Silence jupyter_client's "signing is disabled" warning when CurveZMQ is on.

    With curve, ipyparallel leaves the HMAC key empty on purpose: every message
    is already encrypted and authenticated (its controller log says to ignore
    the warning), so showing it to users would only teach them to ignore warnings.
    """
    if not info.get("curve_serverkey"):
        yield
        return
    log = get_logger()
    log = getattr(log, "logger", log)  # a LoggerAdapter wraps the logger that filters
    drop = _DropSigningWarning()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def connect_client(
    client_json: Path,
    master: Endpoint | None,
    *,
    n_engines: int | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
    tunnel: bool = True,
    revive: Callable[[], object] | None = None,
) -> ipyparallel.Client:
    """A client connected to the controller, with at least `n_engines` registered.

    `revive` is called every `REVIVE_S` while engines are missing: it starts again
    engines that exited before registering (`provision.nodes.engines.revive_engines`).

    ``tunnel=True`` reaches the controller through SSH to `master` (its ports are
    open only inside the VPC); ``tunnel=False`` connects to the address in the
    connection file, for a client inside the VPC (or the simulated region).
    Raises `EnginesTimeout` (a `TimeoutError`) saying how many engines registered in time.
    """
    start = time.monotonic()
    info = json.loads(Path(client_json).read_text())
    remote_host = info["interface"].split("://", 1)[1]
    if remote_host in ("*", "0.0.0.0", ""):
        remote_host = info["location"]
    tun: Tunnel | None = None
    if tunnel:
        if master is None:
            raise ValueError("an SSH tunnel needs the master's Endpoint (or pass tunnel=False)")
        ports = [info[k] for k in CLIENT_PORTS if isinstance(info.get(k), int)]
        tun = Tunnel(connection(master), remote_host, ports)
        try:
            with _curve_replaces_signing(info):
                rc: ipyparallel.Client = TunneledClient(
                    _tunnelled_info(info, tun), timeout=max(1, timeout)
                )
        except BaseException:
            tun.close()
            raise
        rc._provision_tunnel = tun
    else:
        with _curve_replaces_signing(info):
            rc = ipyparallel.Client(str(client_json), timeout=max(1, timeout))
    if n_engines:
        try:
            _wait_for_engines(rc, n_engines, start + timeout, revive)
        except TimeoutError:
            got = len(rc.ids)
            rc.close()
            where = f"{master.name} ({master.host})" if master else remote_host
            raise EnginesTimeout(
                f"only {got} of {n_engines} engines registered with the controller on "
                f"{where} within {timeout:.0f}s (engine logs: <remote_root>/log/engine-*.log "
                "on each node)"
            ) from None
    return rc


def _wait_for_engines(
    rc: ipyparallel.Client, n: int, deadline: float, revive: Callable[[], object] | None
) -> None:
    """Until `n` engines registered (TimeoutError at `deadline`), reviving between waits."""
    while True:
        remaining = deadline - time.monotonic()
        step = remaining if revive is None else min(remaining, REVIVE_S)
        try:
            rc.wait_for_engines(n, timeout=max(0.0, step))
            return
        except TimeoutError:
            if revive is None or time.monotonic() >= deadline:
                raise
            revive()
