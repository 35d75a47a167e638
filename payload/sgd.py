"""Linear models trained per data partition and averaged (parameter mixing).

The training rows are cut into shards (stratified for classifiers, so every
shard sees every class), and each host receives only the shards of its own
engines, as files in a content-hashed directory. Every engine fits a clone of
the linear model (``SGDClassifier``, ``SGDRegressor``, or any estimator with
``coef_``/``intercept_``) on its shard; the client averages ``coef_`` and
``intercept_`` into one model. For convex losses on shards drawn from the same
distribution the average is close to a model fitted on all rows, at a fraction
of the memory per host; the result says how close, against one model on all
the training rows and on a held-out split.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from . import _engine_models
from ._remote import call_on
from .hosts import client_of, engines_by_host
from .registry import payload_kind
from .ship import Shipment, ship_objects


@dataclass
class AverageResult:
    """The averaged model, its held-out score, and the same for one model on all rows."""

    model: Any
    score: float  # held-out accuracy / R^2 of the averaged model
    reference_score: float | None  # of one model fitted on all training rows (compare=True)
    shard_models: list[Any]  # the model fitted on each shard
    shard_scores: list[float]  # held-out score of each shard's own model
    shard_sizes: list[int]
    engines: list[int]  # engine that fitted each shard
    shipment: Shipment


def shard_name(index: int) -> str:
    return f"shard_{index:03d}.joblib"


def average_linear_models(models: list[Any]) -> Any:
    """A copy of the first model with ``coef_`` and ``intercept_`` averaged over all."""
    if not models:
        raise ValueError("no models to average")
    classes = getattr(models[0], "classes_", None)
    for other in models[1:]:
        if classes is not None and not np.array_equal(classes, other.classes_):
            raise ValueError("shard models saw different classes; shard with stratification")
    merged = copy.deepcopy(models[0])
    merged.coef_ = np.mean([m.coef_ for m in models], axis=0)
    merged.intercept_ = np.mean([m.intercept_ for m in models], axis=0)
    return merged


@payload_kind("sgd-average", "linear models fitted per data partition, averaged")
def sgd_average_distributed(
    view_or_client: Any,
    estimator: Any,
    X: Any,
    y: Any,
    *,
    n_shards: int | None = None,
    test_size: float = 0.2,
    random_state: int | None = None,
    compare: bool = True,
    data_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> AverageResult:
    """Fit ``estimator`` on ``n_shards`` (default: one per engine) partitions, average.

    A ``test_size`` split is held out first (stratified for classifiers) and
    scores the averaged model, each shard's model, and (``compare``) one model
    fitted here on all the training rows.
    """
    client = client_of(view_or_client)
    hosts = engines_by_host(client)
    engines = _spread(hosts)
    n_shards = n_shards or len(engines)
    classifier = is_classifier(estimator)
    X_train, X_test, y_train, y_test = train_test_split(
        np.asarray(X), np.asarray(y), test_size=test_size, random_state=random_state,
        stratify=y if classifier else None,
    )
    splitter = (StratifiedKFold if classifier else KFold)(
        n_shards, shuffle=True, random_state=random_state
    )
    shards = [rows for _, rows in splitter.split(X_train, y_train)]
    owner = [engines[i % len(engines)] for i in range(n_shards)]
    host_of = {engine: host for host, ids in hosts.items() for engine in ids}
    placement: dict[str, list[str]] = {}
    for i, engine in enumerate(owner):
        placement.setdefault(host_of[engine], []).append(shard_name(i))
    objects = {shard_name(i): (X_train[rows], y_train[rows]) for i, rows in enumerate(shards)}
    shipment = ship_objects(client, objects, data_dir=data_dir, placement=placement)
    calls = [
        call_on(client[engine], _engine_models.fit_shard, estimator, shipment.path(shard_name(i)))
        for i, engine in enumerate(owner)
    ]
    models = [cloudpickle.loads(ar.get(timeout=timeout)["model"]) for ar in calls]
    model = average_linear_models(models)
    reference = None
    if compare:
        reference = float(clone(estimator).fit(X_train, y_train).score(X_test, y_test))
    return AverageResult(
        model=model, score=float(model.score(X_test, y_test)), reference_score=reference,
        shard_models=models, shard_scores=[float(m.score(X_test, y_test)) for m in models],
        shard_sizes=[len(rows) for rows in shards], engines=owner, shipment=shipment,
    )


def _spread(hosts: dict[str, list[int]]) -> list[int]:
    """Engines ordered host by host in turn (h1e1, h2e1, h1e2, ...), so that a
    few shards land on different hosts."""
    queues = [list(ids) for ids in hosts.values()]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order
