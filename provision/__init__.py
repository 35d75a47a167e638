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

from payload.joblib_backend import joblib_backend  # the cluster as scikit-learn's joblib backend
from provision.config import load_config
from provision.lifecycle import addnode, connect, down, removenode, restart_engines, up
from provision.schema import ClusterConfig

__version__ = "0.1.0"
__all__ = [
    "ClusterConfig", "load_config", "up", "down", "connect", "addnode", "removenode",
    "restart_engines", "joblib_backend",
]
