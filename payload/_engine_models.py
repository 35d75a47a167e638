"""Engine side of the model-parallel payloads: sub-forests and per-shard models.

Shipped by value like ``payload._engine`` (nodes do not have ``payload``), so
nothing here imports ``payload``. Data comes from files already on the host
(memory-mapped); fitted models go back pickled by value, since their classes
may be the client's own.
"""

from __future__ import annotations

import time
from typing import Any


def _load(path: str) -> tuple:
    import joblib

    return tuple(joblib.load(path, mmap_mode="r"))


def fit_subforest(estimator: Any, n_estimators: int, seed: int, path: str, oob: bool) -> dict:
    """Fit ``n_estimators`` trees with ``random_state=seed`` on ``(X, y)`` in ``path``.

    With ``oob``, also the out-of-bag sums this sub-forest contributes: per
    sample, the summed class probabilities (or predictions) of the trees that
    did not draw it, and how many trees that is. Summed over sub-forests they
    give exactly the merged forest's out-of-bag estimate, which no single
    sub-forest's ``oob_score_`` can.
    """
    import cloudpickle
    from sklearn.base import clone

    X, y = _load(path)[:2]
    model = clone(estimator).set_params(
        n_estimators=n_estimators, random_state=seed, oob_score=False, warm_start=False,
        n_jobs=1,
    )
    start = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - start
    sums, counts = _oob_sums(model, X) if oob else (None, None)
    return {"model": cloudpickle.dumps(model), "seconds": seconds, "oob_sums": sums,
            "oob_counts": counts}


def _oob_sums(model: Any, X: Any) -> tuple:
    import numpy as np

    n_samples = X.shape[0]
    classifier = hasattr(model, "classes_")
    sums = np.zeros((n_samples, len(model.classes_) if classifier else 1))
    counts = np.zeros(n_samples, dtype=np.int64)
    for tree, drawn in zip(model.estimators_, model.estimators_samples_, strict=True):
        unsampled = np.ones(n_samples, dtype=bool)
        unsampled[drawn] = False
        if not unsampled.any():
            continue
        rows = X[unsampled]
        sums[unsampled] += tree.predict_proba(rows) if classifier else tree.predict(rows)[:, None]
        counts[unsampled] += 1
    return sums, counts


def fit_shard(estimator: Any, path: str) -> dict:
    """Fit a clone on the data partition in ``path``; the model pickled by value."""
    import cloudpickle
    from sklearn.base import clone

    X, y = _load(path)[:2]
    start = time.perf_counter()
    model = clone(estimator).fit(X, y)
    return {"model": cloudpickle.dumps(model), "seconds": time.perf_counter() - start,
            "n_samples": int(X.shape[0])}


def targets(path: str) -> Any:
    """``y`` of the data file in ``path`` (a split's training targets)."""
    import numpy as np

    return np.asarray(_load(path)[1])


def score_models(blob: bytes, path: str, first: int) -> list[float]:
    """``model.score`` of each model pickled in ``blob`` on items ``first`` and
    ``first + 1`` (X, y) of the data file in ``path``: a split's test rows
    (``first=2``) or a held-out file (``first=0``)."""
    import cloudpickle

    data = _load(path)
    X, y = data[first], data[first + 1]
    return [float(model.score(X, y)) for model in cloudpickle.loads(blob)]


def count_rows(path: str) -> int:
    """Rows in the data file at ``path``."""
    return int(_load(path)[0].shape[0])
