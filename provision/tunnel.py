"""Local ports forwarded over one SSH connection that comes back by itself.

A laptop's network drops (Wi-Fi, a VPN, a suspended lid) while a search runs
for hours. A silent drop kills nothing at once: TCP retransmits for ~15 minutes
before it gives up, and paramiko's own keepalive only sends, it never checks
for an answer. So the tunnel asks the server itself, every `PROBE_S`, with
OpenSSH's ``keepalive@openssh.com`` global request (sshd answers every global
request, even one it refuses): no answer for `DEAD_AFTER_S` means the SSH
connection is dead. The tunnel then drops it and every forwarded connection,
and opens a new SSH connection (retrying every `RETRY_S` until it answers or the
tunnel is closed). The local ports stay the same, so zmq, which reconnects on
its own, comes back through the new connection; `on_reconnect` tells the
owner (the client fetches from the hub what was lost in between).

A server that is gone for good (a terminated master) never answers again, and
retrying until a run's timeout would keep its user waiting for nothing. While
the connection cannot be made, the tunnel asks its owner's `on_down` (which asks
the cloud) at once and every `DOWN_CHECK_S`: a reason back means give up; the
tunnel records it in `gone`, stops retrying and hands it to `on_gone` (or logs
it, when nobody set one).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable

import fabric
import paramiko

from provision.nodes.remote import TRANSIENT_ERRORS

log = logging.getLogger("provision.client")

PROBE_S = 5.0  # how often the server is asked for an answer (also keeps NATs open)
DEAD_AFTER_S = 10.0  # unanswered this long: the connection is dead (a busy sshd answers in <1 s)
SILENT_S = PROBE_S + 2.0  # no answer for longer: a probe went unanswered (not yet dead)
RETRY_S = 2.0  # between attempts to connect again
DOWN_CHECK_S = 30.0  # between two questions to `on_down` while the server stays unreachable
BACKLOG = 16  # pending connections per forwarded port (a client opens about seven)
CHANNEL_OPEN_TIMEOUT_S = 10
SELECT_S = 0.5  # how often the tunnel's threads look up from waiting, to notice close()
BUFFER = 1 << 16
JOIN_S = 2  # for the tunnel's threads, on close


def answers(transport: paramiko.Transport, timeout: float) -> bool:
    """Whether the SSH server answers a global request within `timeout` seconds.

    paramiko's `global_request` waits without a timeout while the transport
    looks active, so it runs in a thread of its own; a dead transport's thread
    returns once the caller closes the transport.
    """
    done = threading.Event()

    def ask() -> None:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            transport.global_request("keepalive@openssh.com", wait=True)
        done.set()

    threading.Thread(target=ask, name="ssh-probe", daemon=True).start()
    return done.wait(timeout) and transport.is_active()


class Tunnel:
    """Local ports on 127.0.0.1 forwarded to ``remote_host:port`` over one SSH
    connection, made by `connect` (again after a drop).

    One accept thread for all listeners, one pump thread per forwarded TCP
    connection (a client opens about seven), one watchdog. zmq reconnects on its
    own if a forwarded connection drops, and each reconnect opens a fresh channel.
    """

    def __init__(
        self,
        connect: Callable[[], fabric.Connection],
        remote_host: str,
        ports: list[int],
        *,
        name: str = "",
        on_reconnect: Callable[[], object] | None = None,
        on_down: Callable[[], str | None] | None = None,
    ) -> None:
        self._connect = connect
        self.remote_host = remote_host
        self.name = name or remote_host
        self.on_reconnect = on_reconnect
        self.on_down = on_down  # why the server is gone for good, or None (see the module)
        self.on_gone: Callable[[str], object] | None = None  # set by the tunnel's owner
        self.gone: str | None = None  # set once `on_down` gave a reason: no more retries
        self.answered_at = time.monotonic()  # the server's last answer to a probe
        self.conn, self.transport = self._open()
        self.local_ports: dict[int, int] = {}
        self.reconnects = 0
        self.lost = threading.Event()  # set while the SSH connection is down
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
        self._threads = [
            threading.Thread(target=self._accept, name="ssh-tunnel", daemon=True),
            threading.Thread(target=self._watch, name="ssh-tunnel-watch", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _open(self) -> tuple[fabric.Connection, paramiko.Transport]:
        conn = self._connect()
        try:
            conn.open()
        except BaseException:
            conn.close()
            raise
        transport = conn.transport
        assert transport is not None
        return conn, transport

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
                transport = self.transport
                try:
                    if self.lost.is_set():
                        raise EOFError("the SSH connection is down")
                    chan = transport.open_channel(
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
            self._close_pair(sock, chan)

    def _close_pair(self, sock: socket.socket, chan: paramiko.Channel) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.close()  # the transport may already be gone
        sock.close()
        with self._lock:
            if (sock, chan) in self._pairs:
                self._pairs.remove((sock, chan))

    def _drop(self, conn: fabric.Connection) -> None:
        """Close the SSH connection, then every forwarded connection. In that order:
        on a dead link a pump can be stuck writing into the full TCP buffer, holding
        paramiko's write lock that closing a channel needs; closing the transport
        first ends that write."""
        conn.close()
        with self._lock:
            pairs = list(self._pairs)
        for sock, chan in pairs:
            self._close_pair(sock, chan)

    def _watch(self) -> None:
        """Probe the server; when it stops answering, connect again."""
        while not self._closed.wait(PROBE_S):
            if answers(self.transport, DEAD_AFTER_S) or self._closed.is_set():
                self.answered_at = time.monotonic()
                continue
            self.lost.set()
            log.warning("SSH tunnel to %s: no answer for %.0f s, reconnecting", self.name,
                        DEAD_AFTER_S)
            self._drop(self.conn)
            if not self._reconnect():
                return
            self.reconnects += 1
            log.warning("SSH tunnel to %s reconnected, %.0f s after its last answer",
                        self.name, time.monotonic() - self.answered_at)
            self.answered_at = time.monotonic()
            if self.on_reconnect is not None:
                try:
                    self.on_reconnect()
                except Exception as err:  # noqa: BLE001 - the watchdog must keep watching
                    log.warning("SSH tunnel to %s: after reconnecting: %s", self.name, err)

    def _reconnect(self) -> bool:
        """A new SSH connection, tried until it opens (True), the tunnel is closed or
        the server is gone for good (False)."""
        checked = float("-inf")
        while not self._closed.is_set():
            try:
                conn, transport = self._open()
            except TRANSIENT_ERRORS as err:
                log.debug("SSH tunnel to %s: still down (%s)", self.name, err)
                if time.monotonic() - checked >= DOWN_CHECK_S:
                    checked = time.monotonic()
                    if self._is_gone():
                        return False
                self._closed.wait(RETRY_S)
                continue
            if self._closed.is_set():
                conn.close()
                return False
            self.conn, self.transport = conn, transport
            self.lost.clear()
            return True
        return False

    def _is_gone(self) -> bool:
        """Ask `on_down` whether the server is gone for good; if so say so, once."""
        if self.on_down is None:
            return False
        try:
            reason = self.on_down()
        except Exception as err:  # noqa: BLE001 - unknown is not gone: keep trying
            log.debug("SSH tunnel to %s: could not tell whether it is gone: %s", self.name, err)
            return False
        if reason is None:
            return False
        self.gone = reason
        if self.on_gone is None:
            log.error("%s", reason)  # nobody else will say it
            return True
        try:
            self.on_gone(reason)
        except Exception as err:  # noqa: BLE001 - the reason is recorded in `gone`
            log.warning("SSH tunnel to %s: after giving up: %s", self.name, err)
        return True

    def silent_for(self) -> float | None:
        """Seconds since the server last answered, once that is longer than a probe
        period allows (`SILENT_S`: a probe went unanswered), else None."""
        silent = time.monotonic() - self.answered_at
        return silent if self.lost.is_set() or silent > SILENT_S else None

    def close(self) -> None:
        """Stop forwarding and close the SSH connection (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        for s in self._listeners:
            s.close()
        self._drop(self.conn)
        for t in self._threads:
            t.join(timeout=JOIN_S)
