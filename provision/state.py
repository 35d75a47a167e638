"""Local state: a cache of what the cloud already knows, plus secrets.

The cloud's tags are the source of truth; what lives here (the region and
settings used at `up`, the controller's connection files, known host keys)
either can be rebuilt from tags or is re-fetched from the master. Writes are
atomic (temp file + rename) so a Ctrl-C never leaves a torn file, and files are
0600 in 0700 directories because connection files hold CurveZMQ secrets.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import platformdirs


def root() -> Path:
    return Path(os.environ.get("PROVISION_STATE_DIR") or platformdirs.user_state_dir("provision"))


def mkdir_private(path: Path) -> None:
    """mkdir -p, with 0700 for every directory it creates (parents=True would give
    the parents the umask's 0755, leaving the state root and data cache readable)."""
    if not path.is_dir():
        mkdir_private(path.parent)
        path.mkdir(exist_ok=True, mode=0o700)


def cluster_dir(name: str, create: bool = True) -> Path:
    d = root() / "clusters" / name
    if create:
        mkdir_private(d)
        os.chmod(d, 0o700)
    return d


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> Path:
    """Write `data` so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(name: str) -> dict[str, Any]:
    """The cached record of a cluster ({} when there is none)."""
    path = cluster_dir(name, create=False) / "cluster.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save(name: str, record: dict[str, Any]) -> None:
    write_atomic(cluster_dir(name) / "cluster.json", json.dumps(record, indent=2, sort_keys=True))


def update(cluster: str, **fields: Any) -> dict[str, Any]:
    record = load(cluster)
    record.update(fields)
    save(cluster, record)
    return record


def known_clusters() -> list[str]:
    d = root() / "clusters"
    return (
        sorted(p.name for p in d.iterdir() if (p / "cluster.json").exists()) if d.exists() else []
    )


def forget(name: str) -> None:
    shutil.rmtree(cluster_dir(name, create=False), ignore_errors=True)


# How long after launch an instance may still be missing from the cloud's tag queries
# (eventual consistency: seconds): `down` looks such ids up by id too.
RECENT_LAUNCH_S = 900


def record_launch(name: str, ids: list[str]) -> None:
    """Note launched ids with the time, before anything else can fail."""
    now = time.time()
    launched = {
        i: t for i, t in load(name).get("launched", {}).items() if now - t < RECENT_LAUNCH_S
    }
    launched.update(dict.fromkeys(ids, now))
    update(name, launched=launched)


def recent_launches(name: str) -> list[str]:
    """Ids launched less than RECENT_LAUNCH_S ago: `down` looks them up by id."""
    now = time.time()
    return sorted(
        i for i, t in load(name).get("launched", {}).items() if now - t < RECENT_LAUNCH_S
    )
