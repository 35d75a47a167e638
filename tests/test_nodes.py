"""Node setup, engines and the client, on namespace hosts with their own sshd.

The hosts here are made directly with `provision.sim.hosts` (no EC2 API): three
nodes at 10.77.0.201-203 on a bridge of their own (10.77.0.193/27, more specific
than the simulated region's /24), with their own namespace and veth prefixes,
so a simulated region running at the same time neither reaps nor routes them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib.metadata as md
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from conftest import namespace_hosts
from waits import wait_for

from provision import client
from provision.client import connect_client
from provision.nodes import engines, remote, setup, transfer
from provision.nodes import wheelhouse as wheelhouses
from provision.nodes.fanout import GroupError, GroupResult, on_hosts
from provision.nodes.python import PythonUnavailable
from provision.nodes.remote import Endpoint, NodeError
from provision.sim.state import GATEWAY

_NET = GATEWAY.rsplit(".", 1)[0]  # the simulated region's /24 (this checkout's region id)
BRIDGE_CIDR = f"{_NET}.193/27"
IPS = (f"{_NET}.201", f"{_NET}.202", f"{_NET}.203")
DEAD_IP = f"{_NET}.209"  # inside the /27, nothing there
ROOT = "/srv/provision"


@dataclass
class Nodes:
    endpoints: list[Endpoint]  # master first
    dead: Endpoint
    key: Path
    known_hosts: Path

    @property
    def master(self) -> Endpoint:
        return self.endpoints[0]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    tmp = tmp_path_factory.mktemp("nodes")
    names = {ip: f"node-{ip.rsplit('.', 1)[1]}" for ip in IPS}
    with namespace_hosts(tmp, "pnt", BRIDGE_CIDR, names) as key:
        kh = tmp / "known_hosts"
        eps = [Endpoint(f"node{i}", ip, "root", key, kh) for i, ip in enumerate(IPS)]
        dead = Endpoint("ghost", DEAD_IP, "root", key, kh)
        yield Nodes(eps, dead, key, kh)


@pytest.fixture(scope="module")
def spec() -> setup.EnvSpec:
    return setup.client_env_spec(remote_root=ROOT)


@pytest.fixture(scope="module")
def wheelhouse(spec: setup.EnvSpec) -> Path:
    """Built once per session on the client (the first build ever downloads from PyPI)."""
    return wheelhouses.build_wheelhouse(spec)


@pytest.fixture(scope="module")
def installed(nodes: Nodes, spec: setup.EnvSpec, wheelhouse: Path) -> GroupResult:
    for ep in nodes.endpoints:
        remote.wait_for_ssh(ep, 30)
    return on_hosts(lambda ep: setup.setup_node(ep, spec, wheelhouse), nodes.endpoints)


@dataclass
class Cluster:
    client_json: Path
    engine_json: Path
    local_dir: Path


@pytest.fixture(scope="module")
def cluster(
    nodes: Nodes, installed: GroupResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    installed.raise_for_failures()
    m = nodes.master
    engines.start_controller(m, ROOT, m.host)
    local = tmp_path_factory.mktemp("conn") / "security"
    client_json, engine_json = engines.fetch_connection_files(m, ROOT, local)
    on_hosts(
        lambda ep: engines.start_engines(ep, ROOT, 1, engine_json), nodes.endpoints
    ).raise_for_failures()
    yield Cluster(client_json, engine_json, local)
    alive = [ep for ep in nodes.endpoints if ep.host != IPS[2]]  # the last test kills node2
    on_hosts(lambda ep: engines.stop_engines(ep, ROOT), alive)
    engines.stop_controller(m, ROOT)


# --- without hosts ---------------------------------------------------------------


def test_env_spec_pins_the_clients_versions_including_transitive_dependencies() -> None:
    spec = setup.client_env_spec()
    pins = dict(r.split("==") for r in spec.requirements)
    assert pins["scikit-learn"] == md.version("scikit-learn")
    assert pins["ipyparallel"] == md.version("ipyparallel")
    assert pins["pyzmq"] == md.version("pyzmq")  # only reached through ipyparallel
    assert spec.python_minor == "3.11"
    assert spec.digest == setup.client_env_spec().digest
    assert spec.digest != setup.client_env_spec(remote_root="/opt/p").digest


def test_a_package_missing_on_the_client_is_named() -> None:
    with pytest.raises(
        ValueError, match="no-such-pkg-xyz is needed on the nodes but not installed"
    ):
        setup.client_env_spec(["no-such-pkg-xyz"])


def test_group_result_keeps_successes_next_to_failures() -> None:
    result = on_hosts(
        lambda ep: 1 / 0 if ep.name == "b" else ep.name,
        [Endpoint(n, n, "u", Path("k")) for n in "abc"],
    )
    assert result.succeeded == {"a": "a", "c": "c"}
    assert list(result.failed) == ["b"]
    with pytest.raises(GroupError, match="1 of 3 nodes failed: b: division by zero") as info:
        result.raise_for_failures()
    assert info.value.result.succeeded == {"a": "a", "c": "c"}


def test_a_stage_is_retried_once_when_ssh_drops() -> None:
    session = setup._Session(Endpoint("n", "192.0.2.9", "u", Path("k")))  # lazy: never dials
    calls = []

    def flaky(conn: object) -> str:
        calls.append(conn)
        if len(calls) == 1:
            raise EOFError("link dropped")
        return "done"

    assert session.stage("install", flaky) == "done"
    assert calls[0] is not calls[1]  # a fresh connection for the retry
    with pytest.raises(NodeError, match=r"n \(192.0.2.9\): SSH failed twice during install"):
        session.stage("install", lambda conn: (_ for _ in ()).throw(EOFError("gone")))


# --- on namespace hosts ----------------------------------------------------------


@pytest.mark.e2e
def test_wait_for_ssh_returns_once_a_live_host_answers(nodes: Nodes) -> None:
    waited = remote.wait_for_ssh(nodes.master, timeout=30)
    assert 0 <= waited < 30
    assert nodes.known_hosts.read_text().startswith(f"{nodes.master.host} ssh-ed25519 ")


@pytest.mark.e2e
def test_wait_for_ssh_on_a_dead_address_names_the_node_and_the_timeout(nodes: Nodes) -> None:
    start = time.monotonic()
    with pytest.raises(NodeError) as info:
        remote.wait_for_ssh(nodes.dead, timeout=2)
    assert str(info.value) == f"ghost ({DEAD_IP}) did not answer SSH within 2s"
    assert time.monotonic() - start < 4


@pytest.mark.e2e
def test_a_refused_key_is_one_line_after_a_short_grace_not_the_whole_timeout(
    nodes: Nodes,
) -> None:
    stranger = dataclasses.replace(nodes.master, user="nobody")  # no key of ours for them
    start = time.monotonic()
    with pytest.raises(NodeError) as info:
        remote.wait_for_ssh(stranger, timeout=120, auth_grace=1)
    assert str(info.value).startswith(
        f"node0 ({IPS[0]}): nobody@{IPS[0]} refused key {nodes.key}: set `user`"
    )
    assert time.monotonic() - start < 15


@pytest.mark.e2e
@pytest.mark.parametrize("via", ["openssh", "paramiko"])
def test_a_host_is_reached_through_a_jump_host_for_commands_and_pushes(
    nodes: Nodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    """node1 through node0, as a worker without a public address through the master."""
    if via == "paramiko":  # a client without ssh(1): the push goes over the gateway channel
        monkeypatch.setattr(transfer, "_openssh_argv", lambda ep, cmd: None)
    behind = dataclasses.replace(nodes.endpoints[1], via=nodes.master)
    assert remote.wait_for_ssh(behind, timeout=30) < 30
    # sshd sees the connection come from node0's address: it went through node0.
    assert remote.run(behind, "echo $SSH_CLIENT").split()[0] == IPS[0]
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a.txt").write_text("through the master\n")
    sent = transfer.push_tree(behind, src, f"/srv/jumped-{via}")
    assert sent is not None and sent >= (src / "a.txt").stat().st_size  # tar framing counts too
    assert remote.run(behind, f"cat /srv/jumped-{via}/a.txt") == "through the master\n"
    wrong = dataclasses.replace(behind, via=dataclasses.replace(nodes.master, user="nobody"))
    with pytest.raises(NodeError, match=rf"nobody@{re.escape(IPS[0])} \(the jump host to node1\)"):
        remote.wait_for_ssh(wrong, timeout=60, auth_grace=0)


@pytest.mark.e2e
def test_unreachable_host_does_not_hide_the_others(nodes: Nodes) -> None:
    def hostname(ep: Endpoint) -> str:
        remote.wait_for_ssh(ep, timeout=2)
        return remote.run(ep, "hostname").strip()

    result = on_hosts(hostname, [*nodes.endpoints[:2], nodes.dead])
    assert result.succeeded == {"node0": "node-201", "node1": "node-202"}
    assert list(result.failed) == ["ghost"]
    assert "did not answer SSH within 2s" in str(result.failed["ghost"])
    with pytest.raises(GroupError) as info:
        result.raise_for_failures()
    assert info.value.result is result


@pytest.mark.e2e
def test_a_changed_host_key_is_refused(nodes: Nodes, tmp_path: Path) -> None:
    forged = tmp_path / "known_hosts"
    other = paramiko.Ed25519Key.from_private_key_file(str(nodes.key))  # not the host's key
    forged.write_text(f"{nodes.master.host} ssh-ed25519 {other.get_base64()}\n")
    ep = dataclasses.replace(nodes.master, known_hosts=forged)
    with pytest.raises(paramiko.BadHostKeyException):
        remote.run(ep, "true")


@pytest.mark.e2e
def test_a_failing_command_names_node_exit_code_and_stderr(nodes: Nodes) -> None:
    with pytest.raises(NodeError) as info:
        remote.run(nodes.master, "echo oops >&2; exit 3")
    assert str(info.value) == f"node0 ({IPS[0]}): `echo oops >&2; exit 3` exited 3: oops"
    assert info.value.command_status == 3  # the remote exit code; exit_code is provision's (1)


@pytest.mark.e2e
@pytest.mark.parametrize("via", ["openssh", "paramiko"])
def test_push_tree_lands_the_directory_whole_or_names_the_failure(
    nodes: Nodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    import hashlib
    import os

    if via == "paramiko":  # a client without ssh(1)
        monkeypatch.setattr(transfer, "_openssh_argv", lambda ep, cmd: None)
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3 << 20))
    (src / "b.txt").write_text("hello")
    ep, seen = nodes.endpoints[1], []
    sent = transfer.push_tree(ep, src, f"/srv/pushed-{via}", on_bytes=seen.append)
    assert sent == sum(seen) > (3 << 20)
    listing = remote.run(
        ep, f"cd /srv/pushed-{via} && sha256sum a.bin b.txt; ls -d /srv/*.tmp 2>/dev/null || true"
    )
    expected = {
        f"{hashlib.sha256((src / n).read_bytes()).hexdigest()}  {n}" for n in ("a.bin", "b.txt")
    }
    assert set(listing.strip().splitlines()) == expected  # and no temp dir left
    again = transfer.push_tree(
        ep, src, f"/srv/pushed-{via}", unless_exists=f"/srv/pushed-{via}/b.txt"
    )
    assert again is None
    with pytest.raises(NodeError, match=rf"node1 \({re.escape(IPS[1])}\): `rm -rf /proc/x/y\.tmp"):
        transfer.push_tree(ep, src, "/proc/x/y")


@pytest.mark.e2e
def test_setup_installs_the_clients_versions_and_a_second_run_is_skipped(
    nodes: Nodes, spec: setup.EnvSpec, wheelhouse: Path, installed: GroupResult
) -> None:
    installed.raise_for_failures()
    assert not any(r.skipped for r in installed.values())
    check = (
        f"{ROOT}/venv/bin/python -c 'import sklearn, ipyparallel, numpy; "
        "print(sklearn.__version__, ipyparallel.__version__, numpy.__version__)'"
    )
    versions = on_hosts(lambda ep: remote.run(ep, check).split(), nodes.endpoints)
    expected = [md.version("scikit-learn"), md.version("ipyparallel"), md.version("numpy")]
    assert versions.raise_for_failures().succeeded == {ep.name: expected for ep in nodes.endpoints}

    again = on_hosts(lambda ep: setup.setup_node(ep, spec, wheelhouse), nodes.endpoints)
    assert all(r.skipped for r in again.raise_for_failures().values())
    assert max(r.seconds for r in again.values()) < 5


@pytest.mark.e2e
def test_python_minor_mismatch_says_what_to_use(
    nodes: Nodes, spec: setup.EnvSpec, wheelhouse: Path
) -> None:
    wrong = dataclasses.replace(spec, python_minor="3.99")  # no CPython 3.99 anywhere
    with pytest.raises(PythonUnavailable) as info:
        setup.setup_node(nodes.master, wrong, wheelhouse)
    assert str(info.value).startswith(
        f"node0 ({IPS[0]}): the image has Python 3.11, this client runs 3.99, and "
        "`uv python install 3.99` from uv's default source"
    )
    assert str(info.value).endswith(
        "Set python_install_mirror or python_downloads_json_url in the cluster file (a mirror "
        "the nodes reach), or use an image with Python 3.99"
    )


@pytest.mark.e2e
def test_connection_files_are_private_and_carry_a_curve_key(cluster: Cluster) -> None:
    assert cluster.local_dir.stat().st_mode & 0o777 == 0o700
    for path in (cluster.client_json, cluster.engine_json):
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(json.loads(path.read_text())["curve_serverkey"]) == 40  # Z85 of 32 bytes


@pytest.mark.e2e
def test_controller_listens_on_the_private_ip_only(nodes: Nodes, cluster: Cluster) -> None:
    info = json.loads(cluster.client_json.read_text())
    assert info["interface"] == f"tcp://{nodes.master.host}"
    listening = remote.run(nodes.master, "ss -Hltn").split("\n")
    local = {line.split()[3] for line in listening if line.strip()}
    assert f"{nodes.master.host}:{info['registration']}" in local
    assert not any(a.endswith(f":{info['registration']}") and a.startswith(("0.0.0.0", "*", "["))
                   for a in local)


@pytest.mark.e2e
def test_tunnelled_client_sees_one_engine_per_host(nodes: Nodes, cluster: Cluster) -> None:
    rc = connect_client(cluster.client_json, nodes.master, n_engines=3, timeout=60)
    try:
        names = rc[:].apply_sync(socket.gethostname)
    finally:
        rc.close()
    assert sorted(names) == ["node-201", "node-202", "node-203"]


@pytest.mark.e2e
def test_starting_engines_again_starts_none(nodes: Nodes, cluster: Cluster) -> None:
    def pids(ep: Endpoint) -> list[str]:
        return sorted(remote.run(ep, f"cat {ROOT}/run/engine-*.pid").split())

    before = on_hosts(pids, nodes.endpoints).raise_for_failures()
    counts = on_hosts(
        lambda ep: engines.start_engines(ep, ROOT, 1, cluster.engine_json), nodes.endpoints
    )
    assert counts.raise_for_failures() == {ep.name: 1 for ep in nodes.endpoints}
    assert on_hosts(pids, nodes.endpoints) == before
    assert engines.engine_counts(nodes.master, ROOT) == 1


@pytest.mark.e2e
def test_log_clues_show_each_engine_log_and_the_controllers_registrations(
    nodes: Nodes, cluster: Cluster
) -> None:
    on_master = engines.log_clues(nodes.master, ROOT, master=True)
    on_worker = engines.log_clues(nodes.endpoints[1], ROOT, master=False)
    assert [line for line in on_master if line.startswith("engine-0.log: ")], on_master
    assert [line for line in on_master if line.startswith("ipcontroller.log: ")
            and "registration::" in line], on_master
    assert on_worker and all(line.startswith("engine-0.log: ") for line in on_worker), on_worker


@pytest.mark.e2e
def test_too_few_engines_is_a_timeout_naming_how_many_registered(
    nodes: Nodes, cluster: Cluster
) -> None:
    with pytest.raises(TimeoutError, match=r"only 3 of 9 engines registered .* within 3s"):
        connect_client(cluster.client_json, nodes.master, n_engines=9, timeout=3)


def _registered(cluster: Cluster) -> int:
    """The controller's table now, from a fresh client's connection reply: a long-lived
    client in this session has missed unregistration notices."""
    fresh = connect_client(cluster.client_json, None, timeout=10, tunnel=False)
    try:
        return len(fresh.ids)
    finally:
        fresh.close()


@pytest.mark.e2e
def test_an_engine_that_exited_is_started_again_while_the_client_waits(
    nodes: Nodes, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an engine that gave up registering with a busy master: its process is gone.
    node = nodes.endpoints[1]
    remote.run(node, f"kill -9 $(cat {ROOT}/run/engine-*.pid)")
    wait_for(lambda: _registered(cluster) == 2, 20, "the controller to drop it", interval=0.2)
    monkeypatch.setattr(client, "REVIVE_S", 1)
    said: list[str] = []

    def revive(ids: set[int]) -> None:
        for ep in nodes.endpoints:
            said.extend(engines.revive_engines(ep, ROOT, 1, cluster.engine_json))

    rc = connect_client(cluster.client_json, nodes.master, n_engines=3, timeout=60, revive=revive)
    rc.close()
    assert len(said) == 1 and said[0].startswith("engine 0 exited"), said  # the others left be
    assert engines.engine_counts(node, ROOT) == 1


@pytest.mark.e2e
def test_an_engine_the_controller_dropped_is_started_again_while_the_client_waits(
    nodes: Nodes, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an engine on a starved host: its heart missed beats, the controller dropped it,
    # and when it beats again the controller ignores it; pinged, it never exits.
    node = nodes.endpoints[1]
    wait_for(lambda: _registered(cluster) == 3, 60, "all three engines to register", interval=0.2)
    pid = remote.run(node, f"cat {ROOT}/run/engine-*.pid").strip()
    ignored = f"grep -a -c 'ignoring new heart' {ROOT}/log/ipcontroller.log || true"
    before = int(remote.run(nodes.master, ignored).strip())
    remote.run(node, f"kill -STOP {pid}")
    try:
        wait_for(lambda: _registered(cluster) == 2, 20, "the controller to drop it", interval=0.2)
    finally:
        remote.run(node, f"kill -CONT {pid}")
    wait_for(lambda: int(remote.run(nodes.master, ignored).strip()) > before, 20,
             "the controller to ignore its heart beating again", interval=0.2)
    assert engines.engine_counts(node, ROOT) == 1 and _registered(cluster) == 2  # stranded
    # Stranded means older than the registration timeouts allow (60 s; here 20 s): a
    # restarted engine registers well within that, so it is never taken for stranded.
    age = f"ps -o etimes= -p {pid}"
    wait_for(lambda: int(remote.run(node, age).strip()) >= 20, 30, "the engine to be 20 s old")
    monkeypatch.setattr(client, "REVIVE_S", 1)
    said: list[str] = []

    def revive(ids: set[int]) -> None:
        for ep in nodes.endpoints:
            said.extend(engines.revive_engines(ep, ROOT, 1, cluster.engine_json, ids,
                                               stranded_after_s=20))

    rc = connect_client(cluster.client_json, nodes.master, n_engines=3, timeout=60, revive=revive)
    rc.close()
    assert len(said) == 1 and said[0].endswith("is alive but the controller dropped it"), said
    assert remote.run(node, f"cat {ROOT}/run/engine-*.pid").strip() != pid


@pytest.mark.e2e
def test_a_registration_the_client_was_not_told_of_is_found_while_it_waits(
    nodes: Nodes, cluster: Cluster
) -> None:
    # ipyparallel's client hears of engines registering after its connection reply only
    # on a SUB socket it connects after that reply: one registering in between is never
    # announced. Here its notifications are muted, so it misses the registration for sure.
    node = nodes.endpoints[2]
    wait_for(lambda: _registered(cluster) == 3, 60, "all three engines to register", interval=0.2)
    rc = connect_client(cluster.client_json, None, n_engines=3, timeout=60, tunnel=False)
    try:
        engines.stop_engines(node, ROOT)
        wait_for(lambda: len(rc.ids) == 2, 20, "the client to hear of the stop", interval=0.2)
        muted: concurrent.futures.Future[None] = concurrent.futures.Future()
        rc._io_loop.add_callback(
            lambda: muted.set_result(rc._notification_stream.stop_on_recv()))
        muted.result(timeout=10)
        engines.start_engines(node, ROOT, 1, cluster.engine_json)
        wait_for(lambda: _registered(cluster) == 3, 60, "the new engine to register", interval=0.2)
        assert len(rc.ids) == 2  # not told
        client._wait_for_engines(rc, 3, time.monotonic() + 30, None)
        fresh = connect_client(cluster.client_json, None, timeout=10, tunnel=False)
        try:
            assert rc.ids == fresh.ids
        finally:
            fresh.close()
    finally:
        rc.close()


@pytest.mark.e2e
def test_a_vanished_host_loses_its_engine_within_seconds(nodes: Nodes, cluster: Cluster) -> None:
    from provision.sim import hosts  # patched to this module's prefixes by the `nodes` fixture

    rc = connect_client(cluster.client_json, None, n_engines=3, timeout=60, tunnel=False)
    try:
        hosts.stop_host(hosts.netns_name(IPS[2]))
        start = time.monotonic()
        with contextlib.suppress(AssertionError):  # judged below, with the controller's log
            wait_for(lambda: _registered(cluster) <= 2, 15, "the engine to unregister",
                     interval=0.2)
        noticed = time.monotonic() - start
        if _registered(cluster) != 2:  # say why: the controller logs each missed beat
            log = remote.run(
                nodes.master,
                f"grep -a -i -e heart -e unregist {ROOT}/log/ipcontroller.log | tail -n 30",
            )
            pytest.fail(f"{IPS[2]} still registered after {noticed:.1f} s; controller log:\n{log}")
        assert noticed < 10
    finally:
        rc.close()
