"""The master as relay (`provision.nodes.relay`, `provision.shipping`): the laptop sends
one copy to the master, the master forwards it; a relayed copy is checked where it
lands. No cloud API and no hosts: the node's side of a push is a shell script, run
here on a scratch directory; the SSH legs are replaced by recorders."""

from __future__ import annotations

import hashlib
import io
import shlex
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from provision import shipping
from provision.cloud.common import MASTER, WORKER
from provision.nodes import relay, transfer
from provision.nodes.remote import Endpoint, NodeError
from provision.progress import Reporter


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _receive(tmp_path: Path, stream: bytes, sums: dict[str, str]) -> subprocess.CompletedProcess:
    target = str(tmp_path / "data" / "d1")
    script, _ = transfer.receive_script(target, f"{target}/a", sums, 4096, check=True)
    return subprocess.run(["sh", "-c", script], input=stream, capture_output=True, timeout=30)


def test_a_relayed_copy_lands_only_when_every_file_has_its_manifest_hash(tmp_path: Path):
    files = {"a": b"split one", "b": b"split two"}
    sums = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}

    flipped = _receive(tmp_path, _tar({**files, "b": b"split twO"}), sums)
    assert flipped.returncode == 3 and b"fail their hashes" in flipped.stderr, flipped
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []  # nothing half there

    whole = _receive(tmp_path, _tar(files), sums)
    assert whole.returncode == 0 and whole.stdout.startswith(b"send"), whole
    assert {p.name: p.read_bytes() for p in (tmp_path / "data/d1").iterdir()} == files

    again = _receive(tmp_path, b"", sums)  # intact: answered at once, nothing read
    assert again.stdout == b"have\n", again


def test_the_master_reaches_workers_with_the_cluster_key_and_checks_their_host_keys():
    line = relay.ssh_to(relay.Hop("node001", "10.0.0.5", "ubuntu"), "/srv/p", "echo hi")
    argv = shlex.split(line)
    assert argv[argv.index("-i") + 1] == "/srv/p/cluster-ssh/id_ed25519"
    assert "StrictHostKeyChecking=yes" in argv and "IdentitiesOnly=yes" in argv
    assert "UserKnownHostsFile=/srv/p/cluster-ssh/known_hosts" in argv
    assert "IdentityAgent=none" in argv and argv[-2:] == ["10.0.0.5", "echo hi"]


def test_a_refused_cluster_key_is_told_apart_from_other_failures():
    def err(code: int, stderr: str) -> NodeError:
        return NodeError("x", command_status=code, stderr=stderr)

    assert relay.refused(err(255, "ubuntu@10.0.0.5: Permission denied (publickey)."))
    assert not relay.refused(err(2, "tar: Unexpected EOF"))


def _node(name: str, role: str, ip: str, public: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(label=name, name=name, role=role, instance_id=f"i-{name}",
                           private_ip=ip, public_ip=public)


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    d = tmp_path / "abc"
    d.mkdir()
    (d / "split_000.joblib").write_bytes(b"x" * 3000)
    (d / "manifest.json").write_text('{"files": {}}')
    return d


def test_a_clusters_data_crosses_the_laptop_link_once_and_workers_get_it_from_the_master(
    split_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    master = _node("master", MASTER, "10.0.0.4", "198.18.0.10")
    workers = [_node(f"node00{i}", WORKER, f"10.0.0.{4 + i}") for i in (1, 2, 3)]
    pushed, forwarded = [], []

    def push_tree(ep, source, target, **kw):
        pushed.append(ep.host)
        return sum(p.stat().st_size for p in source.iterdir())

    def forward(master_ep, hop, root, src, files, receive, **kw):
        forwarded.append((master_ep.host, hop.host, src))
        return "send"

    monkeypatch.setattr(transfer, "push_tree", push_tree)
    monkeypatch.setattr(relay, "forward", forward)
    ctx = SimpleNamespace(
        config=SimpleNamespace(remote_root="/srv/p"), reporter=Reporter(), user="ubuntu",
        endpoint=lambda n, m=None: Endpoint(n.label, n.public_ip or n.private_ip, "ubuntu",
                                            Path("/k")),
    )
    result = shipping.ship(ctx, [master, *workers], split_dir, "abc")

    size = 3000 + len('{"files": {}}')
    assert pushed == ["198.18.0.10"]  # one copy from this machine, to the master only
    assert sorted(forwarded) == [("198.18.0.10", w.private_ip, "/srv/p/data/abc")
                                 for w in workers]
    assert result.laptop_bytes == size and result.cluster_bytes == 3 * size
    assert result.bytes_per_host == {n.label: size for n in [master, *workers]}
