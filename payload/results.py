"""A search's results as they arrive, and their ``cv_results_`` formatting.

`ResultTable` keeps compact ``(n_candidates, n_splits)`` arrays (times, test
sizes, one score array per metric and kind), so a 10,000-pair search holds a
few hundred kilobytes, not 10,000 dicts. A result's scores are a float (one
metric) or a dict (several: a list/dict ``scoring``, or a callable returning a
dict). A failed fit reports a single ``error_score`` even when the metrics are
several; like sklearn's ``_insert_error_scores``, that value is given to every
metric when formatting.

`format_cv_results` follows ``BaseSearchCV._format_results`` key by key
(``split{i}_test_<metric>``, ``mean_/std_/rank_``, ``param_*`` masked arrays,
``params``, times), with the same arithmetic (``np.average``, the same std,
NaN ranked last), so the values equal GridSearchCV's bit for bit on the same
fits.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.ma import MaskedArray
from scipy.stats import rankdata

KINDS = ("test", "train")


class ResultTable:
    """Per-(candidate, split) results of one search, stored as they arrive."""

    def __init__(self, n_candidates: int, n_splits: int) -> None:
        shape = (n_candidates, n_splits)
        self.shape = shape
        self.done = np.zeros(shape, dtype=bool)
        self.fit_time = np.full(shape, np.nan)
        self.score_time = np.full(shape, np.nan)
        self.n_test = np.zeros(shape, dtype=np.int64)
        self.single = {kind: np.full(shape, np.nan) for kind in KINDS}  # float results
        self.is_single = np.zeros(shape, dtype=bool)
        self.named: dict[str, dict[str, np.ndarray]] = {kind: {} for kind in KINDS}
        self.fit_errors: dict[tuple[int, int], str] = {}

    def store(self, record: Mapping[str, Any]) -> None:
        """Keep one result (a record from the engine, a task failure or the journal)."""
        c, s = record["candidate"], record["split"]
        for kind in KINDS:
            # Journals written before multi-metric support say "test_score".
            value = record.get(f"{kind}_scores", record.get(f"{kind}_score"))
            if isinstance(value, Mapping):
                arrays = self.named[kind]
                for name, score in value.items():
                    if name not in arrays:
                        arrays[name] = np.full(self.shape, np.nan)
                    arrays[name][c, s] = _float(score)
            else:
                self.single[kind][c, s] = _float(value)
        test = record.get("test_scores", record.get("test_score"))
        self.is_single[c, s] = not isinstance(test, Mapping)
        self.fit_time[c, s] = record["fit_time"]
        self.score_time[c, s] = record["score_time"]
        self.n_test[c, s] = record["n_test_samples"]
        self.done[c, s] = True
        if record.get("fit_error"):
            self.fit_errors[(c, s)] = record["fit_error"]
        else:
            self.fit_errors.pop((c, s), None)

    @property
    def multimetric(self) -> bool:
        """True once a result came as a dict of metrics."""
        return bool(self.named["test"])

    def metrics(self) -> list[str]:
        """Metric names in the order the scorer gave them; ``["score"]`` for one metric."""
        return list(self.named["test"]) or ["score"]

    def scores(self, kind: str, metric: str) -> np.ndarray:
        """``(n_candidates, n_splits)`` scores of one metric; failed fits' single
        ``error_score`` counts for every metric."""
        if not self.multimetric:
            return self.single[kind]
        scores = self.named[kind].get(metric)
        scores = np.full(self.shape, np.nan) if scores is None else scores.copy()
        scores[self.is_single] = self.single[kind][self.is_single]
        return scores

    def errors_done(self) -> list[str]:
        """Fit error texts of the pairs done, in pair order."""
        return [self.fit_errors[k] for k in sorted(self.fit_errors) if self.done[k]]

    def complete_means(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(candidates with every split done, their mean test score or NaN)."""
        complete = self.done.all(axis=1)
        scores = self.scores("test", metric)
        with np.errstate(invalid="ignore"):
            means = np.where(complete, scores.mean(axis=1), np.nan)
        return complete, means


def format_cv_results(
    table: ResultTable,
    candidates: Sequence[Mapping[str, Any]],
    rows: np.ndarray,
    return_train_score: bool,
    warn: bool = False,
) -> dict:
    """``cv_results_`` of the given candidate rows, as ``BaseSearchCV._format_results``."""
    params = [candidates[i] for i in rows]
    results: dict[str, Any] = {}

    def store(key: str, array: np.ndarray, splits: bool = False, rank: bool = False) -> None:
        array = np.array(array[rows], dtype=np.float64)
        if splits:
            for s in range(array.shape[1]):
                results[f"split{s}_{key}"] = array[:, s]
        means = np.average(array, axis=1) if array.size else np.zeros(len(rows))
        results[f"mean_{key}"] = means
        if warn and key.startswith(KINDS) and np.any(~np.isfinite(means)):
            warnings.warn(
                f"One or more of the {key.split('_')[0]} scores are non-finite: {means}",
                category=UserWarning,
                stacklevel=4,
            )
        if array.size:
            results[f"std_{key}"] = np.sqrt(np.average((array - means[:, None]) ** 2, axis=1))
        else:
            results[f"std_{key}"] = np.zeros(len(rows))
        if rank:
            results[f"rank_{key}"] = rank_scores(means)

    store("fit_time", table.fit_time)
    store("score_time", table.score_time)
    results.update(param_columns(params))
    results["params"] = params
    for metric in table.metrics():
        store(f"test_{metric}", table.scores("test", metric), splits=True, rank=True)
        if return_train_score:
            store(f"train_{metric}", table.scores("train", metric), splits=True)
    return results


def rank_scores(means: np.ndarray) -> np.ndarray:
    """Rank descending with NaN tied last, as ``GridSearchCV`` does."""
    if means.size == 0:
        return np.zeros(0, dtype=np.int32)
    if np.isnan(means).all():
        return np.ones_like(means, dtype=np.int32)
    filled = np.where(np.isnan(means), np.nanmin(means) - 1, means)
    return rankdata(-filled, method="min").astype(np.int32)


def param_columns(params: Sequence[Mapping[str, Any]]) -> dict[str, MaskedArray]:
    """One masked array per parameter, masked where a candidate lacks it (as sklearn)."""
    by_name: dict[str, dict[int, Any]] = defaultdict(dict)
    for i, p in enumerate(params):
        for name, value in p.items():
            by_name[f"param_{name}"][i] = value
    columns = {}
    for key, values in by_name.items():
        try:
            arr = np.array(list(values.values()))
        except ValueError:  # sequences of different lengths
            dtype = np.dtype(object)
        else:
            dtype = arr.dtype if arr.dtype.kind != "U" and arr.ndim == 1 else object
        column = MaskedArray(np.empty(len(params), dtype=dtype), mask=True)
        for i, value in values.items():
            column[i] = value
        columns[key] = column
    return columns


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
