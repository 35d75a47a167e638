"""The simulated region's pieces that need no region: the shutdown commands a host runs
(`power.SCRIPT`, under sh as a host runs it) and the disk sizes `sim disk` takes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from provision.sim import power
from provision.sim.disks import parse_size
from provision.sim.hosts import SimError


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory with the host's systemctl and its links, as /usr/sbin has them."""
    power.install(tmp_path, str(tmp_path / power.REQUEST))
    return tmp_path


def run(host: Path, *argv: str, uid: int = 0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    fake = host / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "id").write_text(f"#!/bin/sh\necho {uid}\n")  # who the caller is, as `id -u` says
    (fake / "id").chmod(0o755)
    env["PATH"] = f"{fake}:{env['PATH']}"
    return subprocess.run([str(host / argv[0]), *argv[1:]], capture_output=True, text=True,
                          env=env, timeout=10)


def asked(host: Path) -> tuple[str, float]:
    req = json.loads((host / power.REQUEST).read_text())
    return req["action"], req["at"] - time.time()


@pytest.mark.parametrize(("argv", "action", "delay"), [
    (["poweroff"], "poweroff", 0),
    (["shutdown", "-h", "now"], "poweroff", 0),
    (["shutdown", "-P", "+0"], "poweroff", 0),
    (["shutdown"], "poweroff", 60),  # systemd's default: a minute from now
    (["shutdown", "-r", "+2", "going down"], "reboot", 120),
    (["shutdown", "-H", "now"], "halt", 0),
    (["halt"], "halt", 0),
    (["halt", "-p"], "poweroff", 0),
    (["reboot"], "reboot", 0),
    (["systemctl", "poweroff"], "poweroff", 0),
])
def test_each_shutdown_command_asks_for_what_systemd_would_do(
    host: Path, argv: list[str], action: str, delay: float
) -> None:
    r = run(host, *argv)
    assert r.returncode == 0, r.stderr
    got, after = asked(host)
    assert got == action and delay - 2 <= after <= delay + 1
    assert ("Shutdown scheduled" in r.stdout) == (delay > 0)


def test_shutdown_c_cancels_and_a_plain_user_is_refused(host: Path) -> None:
    assert run(host, "shutdown", "+5").returncode == 0
    assert run(host, "shutdown", "-c").returncode == 0
    assert not (host / power.REQUEST).exists()
    r = run(host, "poweroff", uid=1000)
    assert r.returncode == 1 and "authentication required" in r.stderr
    assert not (host / power.REQUEST).exists()
    other = run(host, "systemctl", "status")
    assert other.returncode == 1 and "not been booted with systemd" in other.stderr


def test_a_request_is_enacted_once_and_only_when_due(host: Path) -> None:
    assert run(host, "shutdown", "-h", "+1").returncode == 0
    assert power.due(host) is None and (host / power.REQUEST).exists()
    assert power.due(host, now=time.time() + 61) == "poweroff"
    assert power.due(host, now=time.time() + 61) is None  # consumed


@pytest.mark.parametrize(("text", "size"), [("5M", 5 << 20), ("512k", 512 << 10),
                                             ("1G", 1 << 30), ("4096", 4096)])
def test_disk_sizes_read_as_tmpfs_reads_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "5MB", "small", "-1M", ""])
def test_a_bad_disk_size_names_the_option(text: str) -> None:
    with pytest.raises(SimError, match="--size"):
        parse_size(text)
