"""A search's data on the engines: one memory-mappable file per CV split (plus
the whole training set when the refit runs on the cluster), in a directory named
by the hash of its content and shipped once per host (`payload.ship`).

A split file holds ``(X_train, y_train, X_test, y_test, extras)``, sliced the
way sklearn's ``_fit_and_score`` slices: ``_safe_split`` (so a precomputed
kernel keeps its train columns), and the sample-aligned fit and score
parameters cut to the split's rows with ``_check_method_params``; ``extras``
holds them as ``{"fit", "score_train", "score_test"}``. Lists of strings and
DataFrames are indexed as sklearn indexes them, and joblib memory-maps the
numpy arrays inside, so engines on a host share one copy in the page cache.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.utils.metaestimators import _safe_split
from sklearn.utils.validation import _check_method_params

from .ship import Shipment, ship
from .splits import dump_atomic

FORMAT = 1  # bump when the file layout changes: a new digest, never a stale file
FULL = "full.joblib"


def split_name(index: int) -> str:
    return f"split_{index:03d}.joblib"


@dataclass
class CVData:
    """The shipped dataset: paths as the engines see them."""

    split_paths: list[str]
    full_path: str | None
    shipment: Shipment


def _is_pairwise(estimator: Any) -> bool:
    """Whether sklearn splits X as a precomputed kernel (rows *and* columns) for it:
    asked of ``_safe_split`` itself, which knows across sklearn versions."""
    X_train, _ = _safe_split(estimator, np.eye(2), None, np.array([0]))
    return X_train.shape == (1, 1)


def cv_digest(
    estimator: Any,
    X: Any,
    y: Any,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    fit_params: Mapping[str, Any],
    score_params: Mapping[str, Any],
) -> str:
    """Content hash of everything the split files are made of."""
    content = (
        FORMAT, X, y, [(np.asarray(tr), np.asarray(te)) for tr, te in splits],
        dict(fit_params), dict(score_params), _is_pairwise(estimator),
    )
    return joblib.hash(content, hash_name="sha1")


def write_split(
    path: Path,
    estimator: Any,
    X: Any,
    y: Any,
    train: np.ndarray,
    test: np.ndarray,
    fit_params: Mapping[str, Any],
    score_params: Mapping[str, Any],
) -> None:
    """One split file, sliced exactly as ``_fit_and_score`` slices in memory."""
    X_train, y_train = _safe_split(estimator, X, y, train)
    X_test, y_test = _safe_split(estimator, X, y, test, train)
    extras = {
        "fit": _check_method_params(X, params=dict(fit_params), indices=train),
        "score_train": _check_method_params(X, params=dict(score_params), indices=train),
        "score_test": _check_method_params(X, params=dict(score_params), indices=test),
    }
    dump_atomic((X_train, y_train, X_test, y_test, extras), path)


def ship_cv_data(
    view_or_client: Any,
    estimator: Any,
    X: Any,
    y: Any,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    fit_params: Mapping[str, Any] | None = None,
    score_params: Mapping[str, Any] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    full: bool = False,
) -> CVData:
    """Split files (and ``full.joblib`` = ``(X, y, fit_params)`` if ``full``) on every host.

    Nothing is written locally, and nothing sent, for hosts that already hold
    this content.
    """
    fit_params, score_params = dict(fit_params or {}), dict(score_params or {})
    digest = cv_digest(estimator, X, y, splits, fit_params, score_params)
    names = [split_name(i) for i in range(len(splits))] + ([FULL] if full else [])

    def stage(needed: Sequence[str], tmp: Path) -> dict[str, Path]:
        local = {}
        for name in needed:
            path = local[name] = tmp / name
            if name == FULL:
                dump_atomic((X, y, fit_params), path)
            else:
                train, test = splits[int(name[6:9])]
                write_split(path, estimator, X, y, train, test, fit_params, score_params)
        return local

    shipment = ship(view_or_client, digest, names, stage, data_dir=data_dir)
    return CVData(
        split_paths=[shipment.path(split_name(i)) for i in range(len(splits))],
        full_path=shipment.path(FULL) if full else None,
        shipment=shipment,
    )
