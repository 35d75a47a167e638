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

When the laptop's network drops, the tunnel connects again by itself
(`provision.tunnel`) and zmq comes back through it; the replies the controller
sent meanwhile went to the old connection and are gone, so the client fetches
them from the hub's result store (`provision.hubresults`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import ipyparallel
from traitlets.log import get_logger

from provision.errors import ProvisionError
from provision.hubresults import HubRecovery, in_io
from provision.nodes.remote import Endpoint, connection
from provision.tunnel import Tunnel

CONNECT_TIMEOUT_S = 120  # the controller answers and the engines register
# An engine that gave up registering (IPEngine.timeout, 30 s) has exited by then.
REVIVE_S = 45
SYNC_S = 5  # how often a wait for engines asks the hub for its table (`sync_engines`)
SYNC_TIMEOUT_S = 10  # for the hub's answer
# Ports of the client connection file that the client connects to.
CLIENT_PORTS = ("registration", "control", "mux", "task", "iopub", "notification", "broadcast")


class EnginesTimeout(ProvisionError, TimeoutError):
    """Fewer engines registered than expected in time (still a `TimeoutError`)."""


class TunneledClient(ipyparallel.Client):
    """An `ipyparallel.Client` that also closes its SSH tunnel, and fetches from the
    hub the replies a dropped tunnel lost."""

    _provision_tunnel: Tunnel | None = None
    _provision_recovery: HubRecovery | None = None

    def _provision_reconnected(self) -> None:
        """The tunnel is back: recover what was outstanding (see `HubRecovery`)."""
        if self._provision_recovery is None:
            self._provision_recovery = HubRecovery(self)
        self._provision_recovery.recover()

    def when_gone(self, callback: Callable[[str], object]) -> None:
        """Have `callback(reason)` called once the tunnel gives up on a master gone for
        good (at once if it already has): a command can then end instead of waiting."""
        tun = self._provision_tunnel
        if tun is None:
            return
        tun.on_gone = callback  # before looking: a reason found meanwhile reaches it
        if tun.gone is not None:
            callback(tun.gone)

    def silent_for(self) -> float | None:
        """Seconds since the master last answered, once a probe went unanswered, else None."""
        tun = self._provision_tunnel
        return None if tun is None else tun.silent_for()

    def close(self, linger: int | None = None) -> None:
        tun = self._provision_tunnel
        if linger is None and tun is not None and tun.lost.is_set():
            linger = 0  # nothing queued can leave while the link is down: do not wait for it
        try:
            if self._provision_recovery is not None:
                self._provision_recovery.stop()
            super().close(linger=linger)
        finally:
            if tun is not None:
                tun.close()


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
    revive: Callable[[set[int]], object] | None = None,
    master_gone: Callable[[], str | None] | None = None,
) -> ipyparallel.Client:
    """A client connected to the controller, with at least `n_engines` registered.

    `revive` is called every `REVIVE_S` while engines are missing, with the ids the
    controller holds: it starts again engines that exited before registering, or
    that the controller dropped (`provision.nodes.engines.revive_engines`).
    `master_gone` is asked while the tunnel cannot reconnect: why the master is
    gone for good, or None (`provision.tunnel.Tunnel`'s ``on_down``).

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
        tun = Tunnel(partial(connection, master), remote_host, ports, name=master.where,
                     on_down=master_gone)
        try:
            with _curve_replaces_signing(info):
                rc: ipyparallel.Client = TunneledClient(
                    _tunnelled_info(info, tun), timeout=max(1, timeout)
                )
        except BaseException:
            tun.close()
            raise
        rc._provision_tunnel = tun
        tun.on_reconnect = rc._provision_reconnected
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
    rc: ipyparallel.Client, n: int, deadline: float,
    revive: Callable[[set[int]], object] | None,
) -> None:
    """Until `n` engines registered (TimeoutError at `deadline`): the client's table is
    made the hub's every `SYNC_S` (see `sync_engines`), and `revive` is called every
    `REVIVE_S` with the ids the hub holds."""
    revived = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        try:
            rc.wait_for_engines(n, timeout=max(0.0, min(remaining, SYNC_S)))
            return
        except (TimeoutError, ipyparallel.error.EngineError):  # or one unregistered meanwhile
            pass
        with contextlib.suppress(TimeoutError):  # a hub slow to answer: the next round
            sync_engines(rc)
        if len(rc.ids) >= n:
            return
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"{len(rc.ids)} of {n} engines")
        if revive is not None and now - revived >= REVIVE_S:
            revive(set(rc.ids))
            revived = time.monotonic()


def sync_engines(rc: ipyparallel.Client, timeout: float = SYNC_TIMEOUT_S) -> None:
    """Make the client's engine table the hub's.

    ipyparallel's client takes the table from the hub's reply to its connection
    request and learns of later registrations from notifications on a SUB socket
    it connects only after that reply. An engine registering in between is never
    announced: the client waits for it until its timeout (the window is a few
    milliseconds on a LAN, seconds through an SSH tunnel to a busy master). An
    unregistration notice can be missed the same way. So the table is asked again.
    """
    reply = rc._send(rc._query_stream, "connection_request").result(timeout=timeout)
    hub = {int(k): v for k, v in reply["content"]["engines"].items()}

    def apply() -> None:
        rc._update_engines({k: v for k, v in hub.items() if k not in rc._engines})
        for eid in set(rc._ids) - set(hub):
            rc._unregister_engine({"content": {"id": eid}})

    in_io(rc, apply, timeout)
