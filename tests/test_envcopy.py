"""A worker's side of the environment copy (`provision.nodes.envcopy.commit_script`), run
here with sh on a directory laid out as a node's remote root: the staged copy goes in
only when it starts, the managed interpreter before the venv that points at it, the
digest last. (The stream itself, master to worker, is in tests/test_fanout_e2e.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

from provision.nodes import envcopy

DIGEST = "0123456789abcdef"


def _staged_python(root: Path, body: str) -> None:
    """A staged venv whose bin/python runs `body` (a shell line) instead of Python."""
    python = root / envcopy.STAGING / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\n{body}\n")
    python.chmod(0o755)


def _commit(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", envcopy.commit_script(str(root), DIGEST)],
                          capture_output=True, text=True, timeout=30)


def test_a_staged_copy_that_starts_goes_in_after_its_interpreter_with_a_new_digest(tmp_path):
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "old").write_text("from an earlier install")
    (tmp_path / ".env-digest").write_text("an older digest")
    # The copied venv's interpreter lives under python/: it must be in place first.
    _staged_python(tmp_path, f"test -d {tmp_path}/python/cpython-3.11 && "
                             f"test ! -e {tmp_path}/.env-digest")
    (tmp_path / envcopy.STAGING / "python" / "cpython-3.11").mkdir(parents=True)

    ran = _commit(tmp_path)

    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / ".env-digest").read_text() == DIGEST
    assert (tmp_path / "venv" / "bin" / "python").exists()
    assert not (tmp_path / "venv" / "old").exists()
    assert (tmp_path / "python" / "cpython-3.11").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env-digest", "python", "venv"]


def test_a_staged_copy_that_does_not_start_leaves_no_digest_and_no_staging(tmp_path):
    (tmp_path / "venv").mkdir()
    (tmp_path / ".env-digest").write_text(DIGEST)  # claims a venv the failed commit replaced?
    _staged_python(tmp_path, "exit 1")  # e.g. the master's interpreter is not on this image

    ran = _commit(tmp_path)

    assert ran.returncode == 4
    assert "does not start here" in ran.stderr
    assert not (tmp_path / ".env-digest").exists()  # the node installs instead
    assert not (tmp_path / envcopy.STAGING).exists()
