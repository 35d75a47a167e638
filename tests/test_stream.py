"""The streaming relay (`provision.nodes.stream`, `provision.nodes.tee`) end to end on this
machine, with no hosts: the laptop's ssh to the master and the master's ssh to each
worker are replaced by ``sh -c``, each node's remote root is a scratch directory of its
own. Everything else is what runs on a cluster: the laptop's tar stream, the tee on the
master, each receiver's free-space and hash checks, the atomic rename."""

from __future__ import annotations

import os
import shlex
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from waits import wait_for

from provision import shipping
from provision.cloud.common import MASTER, WORKER
from provision.nodes import relay, transfer
from provision.nodes.fanout import GroupError
from provision.nodes.remote import Endpoint, NodeError
from provision.progress import Reporter

DIGEST = "abc"
WAIT_S = 30  # for a worker's first bytes, before calling the relay store-then-forward


def _node(name: str, role: str, n: int) -> SimpleNamespace:
    return SimpleNamespace(label=name, name=name, role=role, instance_id=f"i-{name}",
                           private_ip=f"10.0.0.{n}", public_ip="198.18.0.10" if n == 4 else None)


MASTER_NODE = _node("master", MASTER, 4)
WORKERS = [_node(f"node00{i}", WORKER, 4 + i) for i in (1, 2)]


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    d = tmp_path / "laptop" / DIGEST
    d.mkdir(parents=True)
    for i in range(2):
        (d / f"split_00{i}.joblib").write_bytes(os.urandom(1 << 20))
    (d / "manifest.json").write_text('{"files": {}}')
    return d


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Each node's remote root under `tmp_path`; `broken` names workers whose stream is cut
    after a few kilobytes (their ssh drops mid-stream)."""
    root = str(tmp_path / "master")
    broken: set[str] = set()
    refusing: set[str] = set()  # workers that refuse the cluster key until authorised
    late: dict[str, Path] = {}  # worker -> a file its ssh waits for before it connects

    def ssh_to(hop: relay.Hop, remote_root: str, command: str) -> str:
        local = shlex.join(["sh", "-c", command.replace(remote_root, str(tmp_path / hop.name))])
        if hop.name in refusing:
            return "echo 'ubuntu@10.0.0.6: Permission denied (publickey).' >&2; exit 255"
        if hop.name in late:  # waits for the file (bounded: 600 x 0.05 s), then connects
            flag = shlex.quote(str(late[hop.name]))
            local = (f"i=0; while [ ! -e {flag} ] && [ $i -lt 600 ]; do sleep 0.05; "
                     f"i=$((i+1)); done; {local}")
        return f"head -c 5000 | {local}" if hop.name in broken else local

    def forward(master_ep, hop, remote_root, src, files, receive, **kw) -> str:
        tar = f"cd {shlex.quote(src)} && tar -c -f - {shlex.join(files)}"
        ran = subprocess.run(["sh", "-c", f"{tar} | {ssh_to(hop, remote_root, receive)}"],
                             capture_output=True, text=True, timeout=60)
        if ran.returncode:
            raise NodeError("forward failed", command_status=ran.returncode, stderr=ran.stderr)
        return ran.stdout.splitlines()[0]

    authorised = []
    monkeypatch.setattr(relay, "forward", forward)
    monkeypatch.setattr(relay, "ensure_key", lambda ep, root: "ssh-ed25519 AAAA provision")
    monkeypatch.setattr(relay, "authorize", lambda worker, master, ip, key, root: (
        authorised.append(ip), refusing.discard(worker.name)))

    monkeypatch.setattr(relay, "ssh_to", ssh_to)
    monkeypatch.setattr(transfer, "_openssh_argv", lambda ep, command: ["sh", "-c", command])
    monkeypatch.setattr(transfer, "host_known", lambda ep: True)
    monkeypatch.setattr(shipping.cloud, "describe_cluster",
                        lambda region, name: SimpleNamespace(master=MASTER_NODE))
    ctx = SimpleNamespace(
        config=SimpleNamespace(remote_root=root), reporter=Reporter(), user="ubuntu",
        region="sim", name="unit",
        endpoint=lambda n, m=None: Endpoint(n.label, n.public_ip or n.private_ip, "ubuntu",
                                            Path("/k")),
    )
    return SimpleNamespace(ctx=ctx, broken=broken, refusing=refusing, authorised=authorised,
                           late=late, copy=lambda name: tmp_path / name / "data" / DIGEST)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_workers_get_the_stream_while_the_masters_own_copy_is_still_arriving(
    cluster: SimpleNamespace, split_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    seen = {}
    tmp = cluster.copy("node001").with_suffix(".tmp")

    def write_tar_pausing(sink, local_dir: Path) -> None:
        # The laptop stops after the first split file until node001 holds some of it.
        with tarfile.open(fileobj=sink, mode="w|", bufsize=transfer.TAR_BUFFER) as tar:
            for path in sorted(local_dir.iterdir()):
                tar.add(str(path), arcname=path.name)
                if path.name == "split_000.joblib":
                    seen["bytes"] = wait_for(
                        lambda: _bytes_under(tmp), WAIT_S, "node001's first bytes while the "
                        "laptop is still sending (does the master store, then forward?)")
                    seen["master_done"] = cluster.copy("master").exists()

    monkeypatch.setattr(transfer, "_write_tar", write_tar_pausing)
    result = shipping.ship(cluster.ctx, [MASTER_NODE, *WORKERS], split_dir, DIGEST)

    assert seen["bytes"] > 0 and not seen["master_done"], seen
    size = sum(len(b) for b in _files(split_dir).values())
    assert result.laptop_bytes == size and result.cluster_bytes == 2 * size
    for name in ("master", "node001", "node002"):
        assert _files(cluster.copy(name)) == _files(split_dir), name


def _bytes_under(tmp: Path) -> int:
    return sum(p.stat().st_size for p in tmp.glob("*") if p.is_file()) if tmp.exists() else 0


def test_a_worker_broken_mid_stream_keeps_no_copy_is_named_and_the_others_finish(
    cluster: SimpleNamespace, split_dir: Path
):
    cluster.broken.add("node002")
    with pytest.raises(GroupError) as info:
        shipping.ship(cluster.ctx, [MASTER_NODE, *WORKERS], split_dir, DIGEST)
    assert set(info.value.result.failed) == {"node002"}, info.value
    assert "node002" in str(info.value) and "\n" not in str(info.value)
    broken = cluster.copy("node002")
    assert not broken.exists() and not broken.with_suffix(".tmp").exists()
    for name in ("master", "node001"):
        assert _files(cluster.copy(name)) == _files(split_dir), name

    # Run again with the link whole: only node002 receives (from the master's copy).
    cluster.broken.clear()
    again = shipping.ship(cluster.ctx, [MASTER_NODE, *WORKERS], split_dir, DIGEST)
    assert again.laptop_bytes == 0
    assert again.bytes_per_host["master"] == again.bytes_per_host["node001"] == 0
    assert _files(broken) == _files(split_dir)


def test_a_node_added_later_gets_the_masters_copy_and_the_laptop_sends_nothing(
    cluster: SimpleNamespace, split_dir: Path
):
    first = shipping.ship(cluster.ctx, [MASTER_NODE, WORKERS[0]], split_dir, DIGEST)
    assert first.laptop_bytes > 0 and first.cluster_bytes > 0
    added = shipping.ship(cluster.ctx, [WORKERS[1]], split_dir, DIGEST)
    size = sum(len(b) for b in _files(split_dir).values())
    assert added.laptop_bytes == 0 and added.bytes_per_host == {"node002": size}
    assert _files(cluster.copy("node002")) == _files(split_dir)
    nothing = shipping.ship(cluster.ctx, [MASTER_NODE, *WORKERS], split_dir, DIGEST)
    assert nothing.bytes_moved == 0 and nothing.laptop_bytes == 0


def test_a_worker_refusing_the_cluster_key_is_authorised_and_gets_the_masters_copy(
    cluster: SimpleNamespace, split_dir: Path
):
    cluster.refusing.add("node002")
    result = shipping.ship(cluster.ctx, [MASTER_NODE, *WORKERS], split_dir, DIGEST)
    size = sum(len(b) for b in _files(split_dir).values())
    assert cluster.authorised == ["10.0.0.6"] and result.laptop_bytes == size
    assert result.bytes_per_host == {"master": size, "node001": size, "node002": size}
    assert _files(cluster.copy("node002")) == _files(split_dir)


def test_a_worker_that_connects_after_the_upload_ended_catches_up_from_the_masters_spool(
    cluster: SimpleNamespace, split_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    uploaded = tmp_path / "uploaded"
    cluster.late["node002"] = uploaded
    write_tar = transfer._write_tar

    def write_then_mark(sink, local_dir: Path) -> None:
        write_tar(sink, local_dir)
        uploaded.touch()  # node002's ssh connects only now, after the laptop's last byte

    monkeypatch.setattr(transfer, "_write_tar", write_then_mark)
    result = shipping.ship(cluster.ctx, [MASTER_NODE, *WORKERS], split_dir, DIGEST)
    size = sum(len(b) for b in _files(split_dir).values())
    assert result.bytes_per_host == {"master": size, "node001": size, "node002": size}
    assert _files(cluster.copy("node002")) == _files(split_dir)
