"""provision: disposable EC2 spot clusters for scikit-learn model selection.

The notebook API; the `provision` command is a thin layer over it::

    import provision
    result = provision.up(provision.load_config(overrides={"cluster_size": 3}))
    rc = provision.connect(result.cluster.name)
    with provision.joblib_backend(rc):
        GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)   # runs on the cluster
    provision.down(result.cluster.name)

The names are imported on first use (PEP 562): `import provision` costs
nothing, so the `provision` command's entry point (`provision.cli.entry`), which
imports this package first, has its Ctrl-C handler in place before boto3,
Fabric, Rich or scikit-learn start loading.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and readers
    from payload.joblib_backend import joblib_backend
    from provision.config import load_config
    from provision.lifecycle import addnode, connect, down, removenode, restart_engines, up
    from provision.schema import ClusterConfig

__version__ = "0.1.0"
# Public name -> the module that defines it.
_LAZY = {
    "ClusterConfig": "provision.schema",
    "load_config": "provision.config",
    "up": "provision.lifecycle",
    "down": "provision.lifecycle",
    "connect": "provision.lifecycle",
    "addnode": "provision.lifecycle",
    "removenode": "provision.lifecycle",
    "restart_engines": "provision.lifecycle",
    "joblib_backend": "payload.joblib_backend",  # the cluster as scikit-learn's joblib backend
}
__all__ = [
    "ClusterConfig", "load_config", "up", "down", "connect", "addnode", "removenode",
    "restart_engines", "joblib_backend",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use, then keep it as a plain attribute."""
    if name not in _LAZY:
        raise AttributeError(f"module 'provision' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
