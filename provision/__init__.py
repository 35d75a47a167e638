"""provision: disposable EC2 spot clusters for scikit-learn model selection.

The notebook API; the `provision` command is a thin layer over it::

    import provision
    result = provision.up(provision.load_config(overrides={"cluster_size": 3}))
    rc = provision.connect(result.cluster.name)
    with provision.joblib_backend(rc):
        GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)   # runs on the cluster
    provision.down(result.cluster.name)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from provision.config import load_config
from provision.lifecycle import addnode, connect, down, removenode, restart_engines, up
from provision.schema import ClusterConfig

__version__ = "0.1.0"
__all__ = [
    "ClusterConfig", "load_config", "up", "down", "connect", "addnode", "removenode",
    "restart_engines", "joblib_backend",
]


@contextmanager
def joblib_backend(client: Any, name: str = "provision") -> Iterator[str]:
    """Run joblib-parallel scikit-learn code (GridSearchCV, cross_validate, ...) on the cluster.

    Registers the client's load-balanced view as a joblib backend (ipyparallel's
    `register_joblib_backend`) and makes it the active one inside the block, so
    scikit-learn's own searches run unchanged with ``n_jobs=-1``. Unlike the
    bundled payload, joblib ships the data with every task: fine for small
    data, while `payload.DistributedSearch` memory-maps splits once per host.
    """
    import joblib

    view = client.load_balanced_view()
    view.register_joblib_backend(name=name)
    with joblib.parallel_backend(name):
        yield name
