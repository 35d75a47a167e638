"""Without a cluster: the tunnel's watchdog takes a silent SSH connection for dead and
connects again; the laptop never uses connection files of a master since replaced.
(End to end, with a real cut and a real replaced master: test_recovery_e2e.py.)"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from test_network import _ctx  # an offline Context of cluster "c1"
from waits import wait_for

from provision import controller, state, tunnel
from provision.cloud.common import MASTER, InstanceInfo


class SilentableTransport:
    """A paramiko transport's surface the tunnel uses: answers global requests
    until `silence()` (a cut), then never again, as a dead link does."""

    def __init__(self) -> None:
        self.answering = threading.Event()
        self.answering.set()
        self.closed = threading.Event()
        self.requests = 0

    def silence(self) -> None:
        self.answering.clear()

    def global_request(self, kind: str, wait: bool = True) -> None:
        self.requests += 1
        while not (self.answering.is_set() or self.closed.is_set()):
            self.closed.wait(0.01)

    def is_active(self) -> bool:
        return not self.closed.is_set()

    def open_channel(self, *args: Any, **kwargs: Any) -> Any:
        raise EOFError("no channels here")


class FakeConnection:
    def __init__(self) -> None:
        self.transport = SilentableTransport()

    def open(self) -> None:
        pass

    def close(self) -> None:
        self.transport.closed.set()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnel, "PROBE_S", 0.05)
    monkeypatch.setattr(tunnel, "DEAD_AFTER_S", 0.3)
    monkeypatch.setattr(tunnel, "RETRY_S", 0.05)


def test_a_tunnel_whose_server_stops_answering_connects_again_on_the_same_ports(quick):
    made: list[FakeConnection] = []

    def connect() -> FakeConnection:
        made.append(FakeConnection())
        return made[-1]

    back = threading.Event()
    tun = tunnel.Tunnel(connect, "10.0.0.4", [5000, 5001], on_reconnect=back.set)  # type: ignore[arg-type]
    try:
        ports = dict(tun.local_ports)
        made[0].transport.silence()
        assert back.wait(10), "the tunnel never reconnected"
        assert tun.reconnects == 1 and len(made) == 2
        assert made[0].transport.closed.is_set(), "the dead connection is closed"
        assert tun.transport is made[1].transport and not tun.lost.is_set()
        assert tun.local_ports == ports  # zmq comes back through the same local ports
    finally:
        tun.close()
    assert made[1].transport.closed.is_set()


def test_a_tunnel_that_keeps_answering_stays_on_its_first_connection(quick):
    made: list[FakeConnection] = []

    def connect() -> FakeConnection:
        made.append(FakeConnection())
        return made[-1]

    tun = tunnel.Tunnel(connect, "10.0.0.4", [5000])  # type: ignore[arg-type]
    try:
        wait_for(lambda: made[0].transport.requests >= 5, 10, "five probes, all answered")
        assert tun.reconnects == 0 and len(made) == 1
    finally:
        tun.close()


def _master(iid: str) -> InstanceInfo:
    return InstanceInfo(iid, MASTER, "c5.large", "running", "us-east-1a", "spot", "10.0.0.4",
                        "198.51.100.4", None, name="master")


def test_connection_files_of_a_replaced_master_are_fetched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    ctx = _ctx(tmp_path)
    fetched: list[str] = []

    def fetch(ep: Any, remote_root: str, local_dir: Path) -> None:
        fetched.append(ep.host)
        for path in ctx.connection_files:
            path.write_text("{}")

    monkeypatch.setattr(controller.engines, "fetch_connection_files", fetch)
    old, new = _master("i-old"), _master("i-new")
    controller.refresh_connection_files(ctx, old)  # none cached: fetched
    controller.refresh_connection_files(ctx, old)  # cached, from this master: kept
    assert len(fetched) == 1 and controller.recorded_master("c1") == "i-old"
    controller.refresh_connection_files(ctx, new)  # the master was replaced: fetched again
    assert len(fetched) == 2 and controller.recorded_master("c1") == "i-new"
    (state.cluster_dir("c1") / controller.MASTER_ID_FILE).unlink()
    controller.refresh_connection_files(ctx, new)  # files of an unknown master: fetched
    assert len(fetched) == 3
