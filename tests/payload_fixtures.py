"""Fixtures for the payload tests: a local ipyparallel cluster whose engines see
only what a cluster node gets.

A node's environment is built by provision from the client's pinned package
closure (``client_env_spec``), a wheelhouse and ``uv``; nothing else is on it:
no ``payload``, no ``provision``, no boto3/urllib3, no matplotlib. The engines
here run from a venv built the same way (once, cached under the temp dir by the
spec's digest) and start isolated (``python -I``: no ``PYTHONPATH``; and an empty
working directory, which the kernel puts on ``sys.path``), so a test passes
only if everything the engines need really travels with the tasks.

Test modules import the fixtures by name (``from payload_fixtures import rc``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ipyparallel as ipp
import pytest
from traitlets.config import Config

COMPLETE = ".node-env-complete"


def node_python() -> Path:
    """Python of a venv holding exactly the node packages, built once per spec.

    Built with provision's own node recipe: the wheelhouse nodes receive (the
    default cache, shared with the end-to-end runs) installed offline by uv.
    Concurrent sessions (other worktrees) serialize on a lock file.
    """
    from uv import find_uv_bin

    from provision.nodes import setup
    from provision.nodes.wheelhouse import build_wheelhouse

    spec = setup.client_env_spec()
    root = Path(tempfile.gettempdir()) / f"provision-test-node-env-{spec.digest}"
    python = root / "bin" / "python"
    if (root / COMPLETE).exists():
        return python
    wheelhouse = build_wheelhouse(spec)
    with open(root.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / COMPLETE).exists():
            return python
        shutil.rmtree(root, ignore_errors=True)  # a build cut short
        uv = find_uv_bin()
        env = {"UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
        run_env = {**_base_env(), **env}
        subprocess.run(
            [uv, "venv", "--quiet", "--python", sys.executable, str(root)],
            check=True, env=run_env,
        )
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--no-index", "--find-links", str(wheelhouse),
             "--python", str(python), *spec.requirements],
            check=True, env=run_env,
        )
        (root / COMPLETE).write_text(spec.digest)
    return python


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}


@contextlib.contextmanager
def node_cluster(n: int = 2) -> Iterator[tuple[ipp.Client, Path]]:
    """A controller plus ``n`` engines on the node venv; yields (client, client json)."""
    config = Config()
    engine = [str(node_python()), "-I", "-m", "ipyparallel.engine"]
    config.LocalEngineSetLauncher.engine_cmd = engine
    # The kernel puts the working directory on sys.path: make it an empty one, as
    # on a node, not this checkout (where `payload` would import).
    work_dir = tempfile.mkdtemp(prefix="payload-engine-cwd-")
    config.LocalEngineSetLauncher.engine_args = [f"--work-dir={work_dir}"]
    cluster = ipp.Cluster(n=n, config=config, log_level=logging.ERROR)
    client = cluster.start_and_connect_sync()
    try:
        client.wait_for_engines(n, timeout=90)
        name = f"ipcontroller-{cluster.cluster_id}-client.json"
        path = Path(cluster.profile_dir) / "security" / name
        yield client, path
    finally:
        client.close()
        cluster.stop_cluster_sync()
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def node_cluster_info() -> Iterator[tuple[ipp.Client, Path]]:
    with node_cluster(2) as info:
        yield info


@pytest.fixture(scope="session")
def rc(node_cluster_info: tuple[ipp.Client, Path]) -> ipp.Client:
    """A client of the session's two node-venv engines, with the default serializer."""
    return node_cluster_info[0]


@pytest.fixture(scope="session")
def client_json(node_cluster_info: tuple[ipp.Client, Path]) -> Path:
    """The cluster's client connection file, for user scripts run as subprocesses."""
    return node_cluster_info[1]


@pytest.fixture(scope="session")
def digits() -> tuple:
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


@pytest.fixture(scope="session")
def cv_pairs(digits: tuple) -> list:
    """Three shuffled (train, test) index pairs of the digits."""
    from sklearn.model_selection import ShuffleSplit

    X, y = digits
    return list(ShuffleSplit(n_splits=3, test_size=0.25, random_state=0).split(X, y))


@pytest.fixture(scope="session")
def dense_paths(digits: tuple, cv_pairs: list, tmp_path_factory: pytest.TempPathFactory) -> list:
    """The digits' splits persisted with ``persist_cv_splits``."""
    from payload import persist_cv_splits

    X, y = digits
    return persist_cv_splits(X, y, cv_pairs, tmp_path_factory.mktemp("dense"), name="digits")
