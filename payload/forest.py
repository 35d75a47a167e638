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

`train_forest_distributed` takes ``X, y`` in memory and ships them; `run_forest`
(the ``forest`` kind a front end runs) grows the forest from a CV split file
already on every host (``provision put-data``), on its training rows, and scores
it on the split's test rows as well.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from . import _engine_models
from ._remote import TaskSender, call_on, gather, load_balanced_view
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
    shipment: Shipment | None  # None when the data was already on the hosts
    held_out_score: float | None = None  # on the split's test rows (`run_forest`)


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
    client = client_of(view_or_client)
    sizes, seeds = _plan(estimator, client, n_estimators, n_tasks, random_state)
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
    model, results = _grow(client, estimator, shipment.path(DATA), sizes, seeds, oob, retries,
                           timeout)
    score = (
        _oob_score(model, results, np.asarray(y)) if oob else float(model.score(X_test, y_test))
    )
    return ForestResult(
        model=model, score=score, score_kind="oob" if oob else "held-out", seeds=seeds,
        trees_per_task=sizes, fit_seconds=[r["seconds"] for r in results], shipment=shipment,
    )


def _plan(
    estimator: Any, client: Any, n_estimators: int | None, n_tasks: int | None, random_state: Any
) -> tuple[list[int], list[int]]:
    """Trees per sub-forest and each one's seed (drawn from ``random_state``)."""
    total = n_estimators or estimator.get_params()["n_estimators"]
    sizes = subforest_sizes(total, n_tasks or len(client.ids))
    rng = check_random_state(random_state)
    return sizes, [int(s) for s in rng.randint(np.iinfo(np.int32).max, size=len(sizes))]


def _grow(
    client: Any, estimator: Any, path: str, sizes: list[int], seeds: list[int], oob: bool,
    retries: int, timeout: float | None,
) -> tuple[Any, list[dict]]:
    """The sub-forests grown on the engines from the data file at ``path``, merged;
    and each task's result (fit time, out-of-bag sums)."""
    sender = TaskSender(load_balanced_view(client), _engine_models.fit_subforest)
    calls = {
        i: (estimator, size, seed, path, oob)
        for i, (size, seed) in enumerate(zip(sizes, seeds, strict=True))
    }
    results = gather(sender, calls, retries, timeout)
    for result in results.values():
        if isinstance(result, BaseException):
            raise result
    forests = [cloudpickle.loads(results[i]["model"]) for i in calls]
    total = sum(sizes)
    model = merge_forests(forests, like=clone(estimator).set_params(n_estimators=total))
    return model, [results[i] for i in calls]


def present_forest(result: ForestResult, out: Path) -> list[str]:
    """Pickle the merged forest to ``out`` (cloudpickle: loads with ``pickle.load``),
    with its seeds and scores in ``out`` + ``.json``; the lines to print."""
    from .report import save_json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cloudpickle.dumps(result.model))
    metric = "accuracy" if hasattr(result.model, "classes_") else "R^2"
    scores = {}
    if result.score_kind == "oob":
        scores["out-of-bag"] = result.score
    if result.held_out_score is not None:
        scores["held-out"] = result.held_out_score
    elif result.score_kind == "held-out":
        scores["held-out"] = result.score
    info = save_json({
        "model": str(out), "estimator": type(result.model).__name__,
        "n_estimators": len(result.model.estimators_), "seeds": result.seeds,
        "trees_per_task": result.trees_per_task, "fit_seconds": result.fit_seconds,
        "scores": scores,
    }, out.with_name(out.name + ".json"))
    sizes = ", ".join(map(str, result.trees_per_task))
    return [
        f"{type(result.model).__name__}: {len(result.model.estimators_)} trees from "
        f"{len(result.trees_per_task)} sub-forests ({sizes}), each fitted in "
        f"{max(result.fit_seconds):.1f} s or less",
        *(f"{kind} {metric}: {value:.5f}" for kind, value in scores.items()),
        f"model: {out} (seeds and scores: {info})",
    ]


@payload_kind(
    "forest", "a random forest grown as sub-forests on the engines, merged",
    present=present_forest, output="file",
    models=("sklearn.ensemble.RandomForestClassifier", "sklearn.ensemble.RandomForestRegressor"),
    option_help={
        "n_estimators": "Trees in the merged forest (default: the model's).",
        "n_tasks": "Sub-forests (default: one per engine).",
        "random_state": "Seeds the sub-forests' seeds (each sub-forest grows with its own), "
                        "not the CV splits (put-data's --seed).",
    },
)
def run_forest(
    view_or_client: Any,
    estimator: Any,
    split_paths: Iterable[str | os.PathLike],
    *,
    n_estimators: int | None = None,
    n_tasks: int | None = None,
    random_state: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
) -> ForestResult:
    """Grow a forest on the training rows of the first split, as ``put-data`` left
    it on every host (nothing is shipped), and score it on that split's test rows
    and, when it bootstraps, out of bag.

    The held-out score is the merged forest's own ``score`` on an engine (the
    test rows stay on the hosts); the out-of-bag one merges the sub-forests'
    sums as `train_forest_distributed` does.
    """
    client = client_of(view_or_client)
    path = str(next(iter(split_paths)))
    sizes, seeds = _plan(estimator, client, n_estimators, n_tasks, random_state)
    oob = bool(estimator.get_params().get("bootstrap", False))
    model, results = _grow(client, estimator, path, sizes, seeds, oob, retries, timeout)
    engine = client[sorted(client.ids)[0]]
    held_out = call_on(engine, _engine_models.score_models, cloudpickle.dumps([model]), path, 2)
    score = held_out.get(timeout=timeout)[0]
    if oob:
        y = call_on(engine, _engine_models.targets, path).get(timeout=timeout)
        oob_score = _oob_score(model, results, y)
    return ForestResult(
        model=model, score=oob_score if oob else score, score_kind="oob" if oob else "held-out",
        seeds=seeds, trees_per_task=sizes, fit_seconds=[r["seconds"] for r in results],
        shipment=None, held_out_score=score,
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
