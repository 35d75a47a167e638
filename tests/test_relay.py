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

from provision.nodes import relay, transfer
from provision.nodes.remote import NodeError


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
