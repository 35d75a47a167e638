"""Train one random forest on the cluster: sub-forests on the engines, merged.

The training set goes to every host once (content-hashed, as the searches'
splits); each task grows ``n_estimators / n_tasks`` trees with its own seed, and
the client concatenates their ``estimators_`` into one fitted
``RandomForestClassifier``/``Regressor`` (or extra-trees). Trees are independent
given their seeds, so the merged forest *is* a forest of that many trees: it
predicts exactly as the same sub-forests merged locally.

Its score is out-of-bag (bootstrap forests): each sub-forest also returns, per
sample, the summed predictions of its trees that did not draw it, and the sums
are merged before dividing, so the estimate covers all the trees (a
sub-forest's own ``oob_score_`` would not). With ``test_size``, a held-out
split scores it instead.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from . import _engine_models
from ._remote import TaskSender, gather, load_balanced_view
from .hosts import client_of
from .registry import payload_kind
from .ship import Shipment, ship_objects

DATA = "train.joblib"


@dataclass
class ForestResult:
    """The merged forest and how it scored."""

    model: Any  # the fitted forest, all sub-forests' trees
    score: float  # out-of-bag (or held-out) accuracy / R^2
    score_kind: str  # "oob" or "held-out"
    seeds: list[int]  # random_state of each sub-forest
    trees_per_task: list[int]
    fit_seconds: list[float]  # per sub-forest, on its engine
    shipment: Shipment


def subforest_sizes(n_estimators: int, n_tasks: int) -> list[int]:
    """``n_estimators`` trees split as evenly as possible over ``n_tasks``."""
    if n_estimators < 1 or n_tasks < 1:
        raise ValueError(f"need n_estimators >= 1 and n_tasks >= 1, got {n_estimators}, {n_tasks}")
    n_tasks = min(n_tasks, n_estimators)
    return [len(chunk) for chunk in np.array_split(np.arange(n_estimators), n_tasks)]


def merge_forests(forests: list[Any], like: Any | None = None) -> Any:
    """One fitted forest holding every tree of ``forests`` (fitted on the same data).

    Fitted attributes come from the first; ``n_estimators`` becomes the total,
    and the other parameters are those of ``like`` (the estimator asked for)
    when given. Out-of-bag attributes are dropped: they were per sub-forest.
    """
    if not forests:
        raise ValueError("no forests to merge")
    first = forests[0]
    for other in forests[1:]:
        if hasattr(first, "classes_") and not np.array_equal(first.classes_, other.classes_):
            raise ValueError("sub-forests saw different classes: they must share training data")
    merged = copy.deepcopy(first)
    merged.estimators_ = [tree for forest in forests for tree in forest.estimators_]
    for attr in ("oob_score_", "oob_decision_function_", "oob_prediction_"):
        merged.__dict__.pop(attr, None)
    if like is not None:
        merged.set_params(**like.get_params(deep=False))
    merged.set_params(n_estimators=len(merged.estimators_))
    return merged


@payload_kind("forest", "a random forest grown as sub-forests on the engines, merged")
def train_forest_distributed(
    view_or_client: Any,
    estimator: Any,
    X: Any,
    y: Any,
    *,
    n_estimators: int | None = None,
    n_tasks: int | None = None,
    random_state: int | None = None,
    test_size: float | None = None,
    data_dir: str | os.PathLike | None = None,
    retries: int = 2,
    timeout: float | None = None,
) -> ForestResult:
    """Fit ``estimator`` (a random forest) as ``n_tasks`` sub-forests on the cluster.

    ``n_estimators`` (default: the estimator's) trees in ``n_tasks`` (default:
    one per engine) sub-forests, seeded from ``random_state``. Scored out of bag
    unless ``test_size`` holds out a stratified (classifiers) split, or the
    forest does not bootstrap (then ``test_size`` is required).
    """
    total = n_estimators or estimator.get_params()["n_estimators"]
    client = client_of(view_or_client)
    sizes = subforest_sizes(total, n_tasks or len(client.ids))
    rng = check_random_state(random_state)
    seeds = [int(s) for s in rng.randint(np.iinfo(np.int32).max, size=len(sizes))]
    oob = test_size is None
    if oob and not estimator.get_params().get("bootstrap", False):
        raise ValueError("out-of-bag scoring needs bootstrap=True; pass test_size= instead")
    X_test = y_test = None
    if not oob:
        stratify = y if is_classifier(estimator) else None
        X, X_test, y, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seeds[0], stratify=stratify
        )
    shipment = ship_objects(client, {DATA: (np.asarray(X), np.asarray(y))}, data_dir=data_dir)
    sender = TaskSender(load_balanced_view(client), _engine_models.fit_subforest)
    calls = {
        i: (estimator, size, seed, shipment.path(DATA), oob)
        for i, (size, seed) in enumerate(zip(sizes, seeds, strict=True))
    }
    results = gather(sender, calls, retries, timeout)
    for result in results.values():
        if isinstance(result, BaseException):
            raise result
    forests = [cloudpickle.loads(results[i]["model"]) for i in calls]
    model = merge_forests(forests, like=clone(estimator).set_params(n_estimators=total))
    if oob:
        score = _oob_score(model, [results[i] for i in calls], np.asarray(y))
    else:
        score = float(model.score(X_test, y_test))
    return ForestResult(
        model=model, score=score, score_kind="oob" if oob else "held-out", seeds=seeds,
        trees_per_task=sizes, fit_seconds=[results[i]["seconds"] for i in calls],
        shipment=shipment,
    )


def _oob_score(model: Any, results: list[dict], y: np.ndarray) -> float:
    """Accuracy (classifier) or R^2 (regressor) of the merged out-of-bag predictions,
    computed as sklearn's forests do (samples never out of bag count as 0)."""
    sums = sum(r["oob_sums"] for r in results)
    counts = sum(r["oob_counts"] for r in results).astype(float)
    counts[counts == 0] = 1
    predictions = sums / counts[:, None]
    if hasattr(model, "classes_"):
        return float(accuracy_score(y, model.classes_[np.argmax(predictions, axis=1)]))
    return float(r2_score(y, predictions[:, 0]))
