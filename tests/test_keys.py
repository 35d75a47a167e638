"""The cluster's own keys (`provision.nodes.keys`): the node's shell, run here on a
scratch directory and a scratch HOME (no hosts, no cloud)."""

from __future__ import annotations

import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provision.nodes import keys


def sh(script: str, home: Path) -> str:
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(home)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_key_is_made_once_private_to_the_node_user_even_when_asked_for_at_once(tmp_path: Path):
    d = tmp_path / "root" / "cluster-ssh"
    with ThreadPoolExecutor(4) as pool:
        found = set(pool.map(lambda _: sh(keys.ensure_key_script(str(d), "provision-x"),
                                          tmp_path).strip(), range(4)))

    (pub,) = found  # every caller got the same key: none replaced another's
    assert pub.startswith("ssh-ed25519 ") and pub.endswith(" provision-x")
    assert (d / "id_ed25519.pub").read_text().strip() == pub
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "id_ed25519").stat().st_mode) == 0o600
    assert sh(keys.ensure_key_script(str(d), "provision-x"), tmp_path).strip() == pub


def test_an_authorized_line_is_added_once_with_its_options(tmp_path: Path):
    line = 'restrict,command="sudo -n poweroff" ssh-ed25519 AAAAC3Nz provision-autostop'
    for _ in range(2):
        sh(keys.authorize_script(line), tmp_path)
    sh(keys.authorize_script("ssh-ed25519 AAAAother provision-cluster"), tmp_path)

    authorized = tmp_path / ".ssh" / "authorized_keys"
    assert authorized.read_text().splitlines() == [
        line, "ssh-ed25519 AAAAother provision-cluster"]
    assert stat.S_IMODE(authorized.stat().st_mode) == 0o600
