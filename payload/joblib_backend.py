"""Run scikit-learn's own joblib-parallel code (``GridSearchCV(n_jobs=-1)``,
``cross_validate``, ...) on an ipyparallel cluster, safely from any client.

scikit-learn ships the client's warning filters with every task
(``sklearn.utils.parallel.delayed`` wraps each call with them, so that engines
warn as the client would). A filter refers to its warning class by reference,
and a notebook's imports register filters with classes the engines do not have:
``import boto3`` brings urllib3's ``InsecurePlatformWarning``, and an engine
unpickling such a task fails with ``ModuleNotFoundError: No module named
'urllib3'`` before the fit even starts. Pytest hides this: it replaces the
filters during a test.

The backend here is ipyparallel's, with one change: before a batch is sent, each
call's warning filters keep only the categories an engine can import (the
standard library and the node packages, plus ``extra_modules``). A dropped
filter is harmless on the engine: the warning class it names cannot be raised
where its module does not exist.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ipyparallel.client._joblib import IPythonParallelBackend

from ._remote import load_balanced_view

log = logging.getLogger(__name__)

# Top-level modules every node has: its packages (and their own dependencies'
# warnings never reach a filter the client sets). The standard library is added.
NODE_MODULES = frozenset(
    {"numpy", "scipy", "sklearn", "joblib", "threadpoolctl", "cloudpickle", "ipyparallel", "psutil"}
)


def node_safe_filters(filters: Iterable[tuple], modules: frozenset[str]) -> list[tuple]:
    """The warning filters whose category lives in ``modules`` or the standard library.

    Filters are ``warnings.filters`` entries: ``(action, message, category,
    module, lineno)``; only ``category`` is a class, the rest pickle as data.
    """
    kept = []
    for entry in filters:
        category = entry[2]
        root = getattr(category, "__module__", "builtins").partition(".")[0]
        if root in modules or root in sys.stdlib_module_names:
            kept.append(entry)
        else:
            log.debug("warning filter for %s not shipped to the engines", category)
    return kept


def node_safe_batch(batch: Any, modules: frozenset[str]) -> Any:
    """``batch`` (a joblib ``BatchedCalls``) with its calls' warning filters made node-safe.

    Calls are copied, not changed in place: the same wrappers may still run
    locally (joblib's sequential fallback).
    """
    items = getattr(batch, "items", None)
    if items is None:
        return batch
    safe = []
    for func, args, kwargs in items:
        filters = getattr(func, "warning_filters", None)
        if filters is not None:
            func = copy.copy(func)
            func.warning_filters = node_safe_filters(filters, modules)
        safe.append((func, args, kwargs))
    batch = copy.copy(batch)
    batch.items = safe
    return batch


class NodeSafeBackend(IPythonParallelBackend):
    """ipyparallel's joblib backend, shipping only what engines can unpickle."""

    def __init__(self, view: Any = None, extra_modules: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(view=view, **kwargs)
        self.modules = NODE_MODULES | frozenset(extra_modules)

    def submit(self, func: Any, callback: Any = None) -> Any:
        """joblib's entry point (``apply_async`` is its deprecated name)."""
        return self.apply_async(node_safe_batch(func, self.modules), callback)


@contextmanager
def joblib_backend(
    client: Any, name: str = "ipyparallel-cluster", extra_modules: Iterable[str] = ()
) -> Iterator[str]:
    """Make the cluster the active joblib backend inside the block.

    ``client`` is an ``ipyparallel.Client`` or a view; its load-balanced view
    runs the tasks. scikit-learn's searches then run unchanged with
    ``n_jobs=-1``. joblib ships the data with every task: fine for small data,
    while `payload.ClusterGridSearchCV` ships splits once per host.
    ``extra_modules`` names top-level modules installed on the nodes beyond the
    default packages, whose warning filters should travel too. The backend stays
    registered under ``name`` for ``Parallel(backend=name)``.
    """
    import joblib

    view = load_balanced_view(client)
    extra = tuple(extra_modules)
    joblib.register_parallel_backend(
        name, lambda **kwargs: NodeSafeBackend(view=view, extra_modules=extra, **kwargs)
    )
    with joblib.parallel_config(backend=name):
        yield name
