"""put-data against a node whose disk is too small, fills mid-stream, or holds a
corrupted split file: on a namespace host of its own (real sshd, real tmpfs /srv
resized from inside the host), no cloud API."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from conftest import namespace_host

from provision import data, shipping, state
from provision.nodes import remote, transfer
from provision.nodes.fanout import GroupError
from provision.nodes.remote import Endpoint
from provision.progress import Reporter
from provision.sim.state import GATEWAY

_NET = GATEWAY.rsplit(".", 1)[0]  # this checkout's simulated /24; a /28 of its own here
BRIDGE_IP, HOST_IP, PREFIX = f"{_NET}.241", f"{_NET}.246", 28
ROOT = "/srv/provision"


class Recorder(Reporter):
    """A reporter that keeps its warnings, to check what put-data said."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def test_a_short_disk_answer_names_the_node_the_bytes_needed_and_the_bytes_free():
    ep = Endpoint("node1", "10.0.0.9", "root", Path("/nonexistent"))
    with pytest.raises(transfer.NoSpace) as info:
        transfer.answer(ep, b"nospace 1048576\n", "/srv/provision/data/abc", 5242880, None)
    assert str(info.value).startswith(
        "node1 (10.0.0.9): not enough disk for /srv/provision/data/abc: needs 5242880 bytes, "
        "has 1048576 free;"
    )
    resent: list[bool] = []
    assert transfer.answer(ep, b"have\n", "/d", 1, lambda: resent.append(True)) is True
    assert transfer.answer(ep, b"resend\n", "/d", 1, lambda: resent.append(True)) is False
    assert resent == [True]


def test_the_space_a_dataset_needs_counts_whole_blocks():
    assert data.footprint({"a": 1, "b": 4097}, ["a", "b"]) == 4096 + 4096 + 8192


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tmp = tmp_path_factory.mktemp("disk")
    with namespace_host(tmp, "pdk", f"{BRIDGE_IP}/{PREFIX}", HOST_IP, "smalldisk", "node1") as ep:
        yield ep


def _ctx(ep: Endpoint) -> SimpleNamespace:
    return SimpleNamespace(
        name="unit", config=SimpleNamespace(remote_root=ROOT), reporter=Recorder(),
        endpoint=lambda node: ep,
    )


def _remote_sums(ep: Endpoint, digest: str) -> dict[str, str]:
    out = remote.run(ep, f"cd {ROOT}/data/{digest} && sha256sum *")
    return {name: h for h, name in (line.split() for line in out.strip().splitlines())}


def _left(ep: Endpoint) -> list[str]:
    return remote.run(ep, f"mkdir -p {ROOT}/data && ls -A {ROOT}/data").split()


def _zombies() -> list[psutil.Process]:
    return [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]


@pytest.mark.e2e
@pytest.mark.parametrize("via", ["openssh", "paramiko"])
def test_put_data_on_a_full_disk_fails_in_one_line_and_finishes_once_space_is_freed(
    host: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    if via == "paramiko":  # a client without ssh(1)
        monkeypatch.setattr(transfer, "_openssh_argv", lambda ep, cmd: None)
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(data, "running_nodes", lambda ctx: [SimpleNamespace(label="node1")])
    remote.run(host, f"rm -rf {ROOT}/data && mount -o remount,size=1m /srv")
    rng = np.random.default_rng(0 if via == "openssh" else 1)
    X, y = rng.random((2000, 100)), rng.integers(0, 2, 2000)
    ctx = _ctx(host)
    options = {"n_splits": 2, "test_size": 0.25, "seed": 0}

    # Too small, seen before sending: the node, the bytes needed and free, nothing kept.
    with pytest.raises(GroupError) as info:
        data.put_data(ctx, (X, y), **options)
    message = str(info.value)
    assert "\n" not in message and "node1 (" in message and "not enough disk" in message, message
    local = next(p for p in (tmp_path / "state" / "data").iterdir() if not p.name.startswith("."))
    need = data.footprint({p.name: p.stat().st_size for p in local.iterdir()},
                          [p.name for p in local.iterdir()])
    assert f"needs {need} bytes" in message and " free" in message, message
    assert _left(host) == [] and "datasets" not in state.load("unit")  # nothing marked complete
    assert _zombies() == []  # the refused push's ssh was waited for

    # The disk fills mid-stream (the free-space check fooled): one line, the partial copy gone.
    with monkeypatch.context() as fooled:
        fooled.setattr(shipping, "footprint", lambda size, files: 1)
        with pytest.raises(GroupError, match="disk full while writing") as info:
            data.put_data(ctx, (X, y), **options)
    assert "\n" not in str(info.value) and "node1 (" in str(info.value)
    assert _left(host) == [] and "datasets" not in state.load("unit")

    # Space freed: the same put-data finishes, every file as the manifest says.
    remote.run(host, "mount -o remount,size=64m /srv")
    done = data.put_data(ctx, (X, y), **options)
    assert done.bytes_per_host["node1"] > 0
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in local.iterdir()}
    assert _remote_sums(host, done.digest) == expected
    assert state.load("unit")["datasets"]["dataset"]["digest"] == done.digest

    # A flipped byte in a split file: detected by its hash, sent again, said.
    victim = f"{ROOT}/data/{done.digest}/{done.files[0]}"
    remote.run(host, f"python3 -c \"p='{victim}'; b=bytearray(open(p,'rb').read()); "
                     f"b[len(b)//2]^=1; open(p,'wb').write(b)\"")
    assert _remote_sums(host, done.digest) != expected
    again = data.put_data(ctx, (X, y), **options)
    assert again.bytes_per_host["node1"] > 0
    assert _remote_sums(host, done.digest) == expected
    assert any("failed its manifest's hashes" in w for w in ctx.reporter.warnings), ctx.reporter

    # Intact: nothing moves, nothing said.
    ctx.reporter.warnings.clear()
    assert data.put_data(ctx, (X, y), **options).bytes_per_host["node1"] == 0
    assert ctx.reporter.warnings == []
