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

`sgd_average_distributed` takes ``X, y`` in memory and places the shards itself;
`run_sgd_average` (the ``sgd-average`` kind a front end runs) works on shards
already on the hosts (``provision put-data --partition``): each is fitted where
it lies, and nothing is shipped.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from . import _engine_files, _engine_models
from ._remote import call_on
from .hosts import client_of, engines_by_host, leaders
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
    shipment: Shipment | None  # None when the shards were already on the hosts
    test_size: int | None = None  # held-out rows scored


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


def partition_rows(
    y: Any, n_shards: int, *, test_size: float | int, random_state: Any = None,
    stratify: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Row indices ``(train, test, shards)``: ``test`` held out and ``train`` kept,
    as ``train_test_split`` draws them, and the training rows cut into
    ``n_shards`` shuffled parts (positions in ``train``), stratified by ``y``
    when ``stratify`` so that every shard sees every class."""
    y = np.asarray(y)
    train, test = train_test_split(
        np.arange(len(y)), test_size=test_size, random_state=random_state,
        stratify=y if stratify else None,
    )
    splitter = (StratifiedKFold if stratify else KFold)(
        n_shards, shuffle=True, random_state=random_state
    )
    return train, test, [part for _, part in splitter.split(train, y[train])]


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
    X, y = np.asarray(X), np.asarray(y)
    train, test, shards = partition_rows(
        y, n_shards, test_size=test_size, random_state=random_state,
        stratify=is_classifier(estimator),
    )
    X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
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


def present_average(result: AverageResult, out: Path) -> list[str]:
    """Pickle the averaged model to ``out`` (cloudpickle: loads with
    ``pickle.load``), its scores in ``out`` + ``.json``; the lines to print."""
    from .report import save_json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cloudpickle.dumps(result.model))
    metric = "accuracy" if is_classifier(result.model) else "R^2"
    info = save_json({
        "model": str(out), "score": result.score, "reference_score": result.reference_score,
        "shard_scores": result.shard_scores, "shard_sizes": result.shard_sizes,
        "engines": result.engines, "test_size": result.test_size,
    }, out.with_name(out.name + ".json"))
    rows = f" ({result.test_size} rows)" if result.test_size else ""
    lines = [
        f"{type(result.model).__name__}: {len(result.shard_models)} shards of "
        f"{', '.join(map(str, result.shard_sizes))} rows, fitted on engines "
        f"{', '.join(map(str, result.engines))}, coef_ and intercept_ averaged",
        f"averaged model: held-out {metric} {result.score:.5f}{rows}",
    ]
    if result.reference_score is not None:
        gap = result.score - result.reference_score
        lines.append(f"one model on all {sum(result.shard_sizes)} training rows: "
                     f"{result.reference_score:.5f} (averaged {gap:+.5f})")
    lines.append("each shard's own model: " + ", ".join(f"{s:.5f}" for s in result.shard_scores))
    return [*lines, f"model: {out} (scores: {info})"]


@payload_kind(
    "sgd-average", "linear models fitted per data partition, averaged",
    present=present_average, output="file",
    models=("sklearn.linear_model.SGDClassifier", "sklearn.linear_model.SGDRegressor"),
)
def run_sgd_average(
    view_or_client: Any,
    estimator: Any,
    shard_paths: Sequence[str | os.PathLike],
    test_path: str | os.PathLike,
    *,
    reference_data: tuple[Any, Any] | None = None,
    timeout: float | None = None,
) -> AverageResult:
    """Fit ``estimator`` on each partition already on the hosts, average the models.

    Each shard is fitted by an engine of a host that holds it (found by asking
    one engine per host; nothing is shipped), the hosts' engines taken in turn.
    The held-out rows in ``test_path`` (on every host) score the averaged model,
    each shard's model and, with ``reference_data`` (every training row, where
    the client holds them), one model fitted here on all of them, all on an
    engine.
    """
    client = client_of(view_or_client)
    hosts = engines_by_host(client)
    paths = [str(p) for p in shard_paths]
    heads = leaders(hosts)
    held = {
        host: call_on(client[heads[host]], _engine_files.existing_paths, paths)
        for host in hosts
    }
    held = {host: set(ar.get(timeout=timeout)) for host, ar in held.items()}
    turn = {host: 0 for host in hosts}
    owner = []
    for path in paths:
        holders = [host for host in hosts if path in held[host]]
        if not holders:
            raise FileNotFoundError(
                f"{path} is on no host with engines (its node may be gone): partition again"
            )
        host = min(holders, key=lambda h: turn[h])  # spread shards over the hosts holding them
        owner.append(hosts[host][turn[host] % len(hosts[host])])
        turn[host] += 1
    calls = [
        call_on(client[engine], _engine_models.fit_shard, estimator, path)
        for engine, path in zip(owner, paths, strict=True)
    ]
    fitted = [ar.get(timeout=timeout) for ar in calls]
    models = [cloudpickle.loads(f["model"]) for f in fitted]
    model = average_linear_models(models)
    scored = [model, *models]
    if reference_data is not None:
        scored.append(clone(estimator).fit(*reference_data))
    blob = cloudpickle.dumps(scored)
    n_test = call_on(client[owner[0]], _engine_models.count_rows, str(test_path))
    scores = call_on(client[owner[0]], _engine_models.score_models, blob, str(test_path), 0)
    scores = scores.get(timeout=timeout)
    return AverageResult(
        model=model, score=scores[0],
        reference_score=scores[-1] if reference_data is not None else None,
        shard_models=models, shard_scores=scores[1 : 1 + len(models)],
        shard_sizes=[f["n_samples"] for f in fitted], engines=owner, shipment=None,
        test_size=n_test.get(timeout=timeout),
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
