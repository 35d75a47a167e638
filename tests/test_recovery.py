"""Without a cluster: the tunnel's watchdog takes a silent SSH connection for dead and
connects again, or gives up when EC2 says the master is gone (moto's EC2) and the
run ends at once with one line; the laptop never uses connection files of a master
since replaced. (End to end, with a real cut and a real replaced master:
test_recovery_e2e.py.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import offline_aws_env
from moto import mock_aws
from oracle import ec2_client
from test_network import _ctx  # an offline Context of cluster "c1"
from waits import wait_for

from provision import controller, state, tunnel
from provision.cli import running
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
    monkeypatch.setattr(tunnel, "DOWN_CHECK_S", 0.2)
    monkeypatch.setattr(tunnel, "SILENT_S", 0.2)


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
        assert tun.silent_for() is None  # a timeout then says nothing about the link
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


def test_a_tunnel_that_cannot_reconnect_gives_up_once_its_owner_says_the_server_is_gone(quick):
    made: list[FakeConnection] = []
    asked: list[float] = []
    answers = iter([None, "the master is gone"])  # still running at first, then gone

    def connect() -> FakeConnection:
        if made:
            raise ConnectionRefusedError("nobody listens")  # the host went with the master
        made.append(FakeConnection())
        return made[-1]

    def on_down() -> str | None:
        asked.append(time.monotonic())
        return next(answers)

    gone = threading.Event()
    reasons: list[str] = []
    tun = tunnel.Tunnel(connect, "10.0.0.4", [5000], on_down=on_down)  # type: ignore[arg-type]
    tun.on_gone = lambda reason: (reasons.append(reason), gone.set())
    try:
        made[0].transport.silence()
        assert gone.wait(10), "the tunnel never gave up"
        assert reasons == ["the master is gone"] and tun.gone == "the master is gone"
        assert len(asked) == 2 and asked[1] - asked[0] >= 0.2  # asked again after a while
        assert tun.lost.is_set() and tun.reconnects == 0
        assert (tun.silent_for() or 0) >= tunnel.DEAD_AFTER_S  # unanswered since the cut
    finally:
        tun.close()


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, moto_amis: None) -> Any:
    offline_aws_env(monkeypatch, tmp_path)
    with mock_aws():
        yield ec2_client()


def _launched(ec2: Any) -> InstanceInfo:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (inst,) = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                InstanceType="c5.large")["Instances"]
    return _master(inst["InstanceId"])


@pytest.mark.parametrize("end", ["terminate", "stop"])
def test_a_master_ec2_has_terminated_or_stopped_is_gone_in_one_line_that_says_what_to_do(
    ec2, tmp_path, end
):
    ctx = _ctx(tmp_path)
    master = _launched(ec2)
    assert controller.master_gone(ctx, master) is None  # running: the link is what failed
    getattr(ec2, f"{end}_instances")(InstanceIds=[master.instance_id])
    reason = controller.master_gone(ctx, master)
    assert reason is not None
    state = "terminated" if end == "terminate" else "stopped"
    assert f"master ({master.instance_id}), is gone ({state}, Client." in reason, reason
    assert "run `provision up c1` to replace it" in reason and "resumes from its journal" in reason
    assert "\n" not in reason


class GoneClient:
    """A client whose tunnel gives up on its master when `give_up` is called."""

    ids = [0, 1]

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def when_gone(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def give_up(self, reason: str) -> None:
        for callback in self.callbacks:
            callback(reason)


def test_a_run_whose_master_is_gone_ends_at_once_while_the_payload_still_waits():
    rc = GoneClient()
    started = threading.Event()
    release = threading.Event()

    def work() -> str:
        started.set()
        release.wait(60)  # a search waiting for replies that will never come
        return "finished"

    threading.Thread(target=lambda: (started.wait(10), rc.give_up("master gone")),
                     daemon=True).start()
    try:
        with pytest.raises(running.MasterGone, match="^master gone$"):
            running.until_gone(rc, work)
        assert started.is_set()
    finally:
        release.set()
    assert running.until_gone(GoneClient(), lambda: "finished") == "finished"


class SilentClient(GoneClient):
    """A client whose master has not answered for 16 s (a cut link)."""

    def silent_for(self) -> float:
        return 16.0


def test_a_run_that_times_out_on_a_silent_master_says_so_and_its_bar_stops_not_done(tmp_path):
    from rich.console import Console

    from payload.registry import PayloadKind, _keyword_options
    from provision.errors import ProvisionError
    from provision.progress import PlainReporter

    def stuck(client: Any, *, progress: Any = None) -> None:
        progress(4, 36)
        raise TimeoutError("search not finished within 15.0 s (4 of 36 fits)")

    kind = PayloadKind("stuck", stuck, "waits in vain", _keyword_options(stuck, 1))
    shown = tmp_path / "progress.txt"
    with open(shown, "w") as f, pytest.raises(ProvisionError) as raised:
        running.run_payload(kind, SilentClient(), {}, PlainReporter(Console(file=f)), "SVC")
    assert str(raised.value) == ("search not finished within 15.0 s (4 of 36 fits) (the master "
                                 "has not answered for 16 s)")
    lines = shown.read_text().splitlines()
    assert lines[0] == "SVC: 36 fits on 2 engines: started"
    assert lines[-1].startswith("SVC: 36 fits on 2 engines: stopped after "), lines
