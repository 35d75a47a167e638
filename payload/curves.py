"""Learning curves on the cluster, over the same persisted splits as the search.

One task per (train size, split): the engine takes the first ``k`` rows of the
split's training set, exactly what ``sklearn.model_selection.learning_curve``
does with ``shuffle=False`` on a fixed CV (``train[:k]``), so the numbers match.
Largest sizes are submitted first, they are the slowest fits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import _engine
from ._remote import TaskSender, gather, judge_fit_failures, load_balanced_view, remote_error_text
from .registry import payload_kind
from .scoring import build_scorer
from .search import DistributedSearch


def train_sizes_absolute(train_sizes: Any, n_max: int) -> np.ndarray:
    """Fractions (floats in (0, 1]) or counts -> unique absolute sizes, as sklearn."""
    sizes = np.asarray(train_sizes)
    n_ticks = sizes.shape[0]
    low, high = np.min(sizes), np.max(sizes)
    if np.issubdtype(sizes.dtype, np.floating):
        if low <= 0.0 or high > 1.0:
            raise ValueError(f"train_sizes as fractions must be within (0, 1], got [{low}, {high}]")
        sizes = np.clip((sizes * n_max).astype(int), 1, n_max)
    elif low <= 0 or high > n_max:
        raise ValueError(f"train_sizes as counts must be within (0, {n_max}], got [{low}, {high}]")
    sizes = np.unique(sizes)
    if n_ticks > sizes.shape[0]:
        warnings.warn(
            f"Removed duplicate entries from 'train_sizes': {sizes.shape[0]} ticks instead "
            f"of {n_ticks}.",
            RuntimeWarning,
            stacklevel=3,
        )
    return sizes


def plot_curve(
    x: Any, result: dict, path: str | os.PathLike, xlabel: str, title: str | None = None
) -> Path:
    """Mean train and validation score against ``x``, +/- one std (log axis when
    ``x`` is positive and spans more than two decades)."""
    from matplotlib.figure import Figure

    from .report import save_png

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.asarray(x, dtype=float)
    for key, label, color in (
        ("train_scores", "train", "tab:orange"),
        ("test_scores", "validation", "tab:blue"),
    ):
        scores = np.asarray(result[key], dtype=float)
        mean, std = scores.mean(axis=1), scores.std(axis=1)
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
        ax.plot(x, mean, "o-", color=color, label=label)
    if x.min() > 0 and x.max() / x.min() > 100:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def plot_learning_curve(result: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """Mean train and validation score against training-set size, +/- one std."""
    return plot_curve(result["train_sizes_abs"], result, path, "training examples", title)


def _curve_lines(labels: list[str], result: dict) -> list[str]:
    return [
        f"{label}: train {np.mean(tr):.5f}  validation {np.mean(te):.5f}"
        for label, tr, te in zip(labels, result["train_scores"], result["test_scores"])
    ]


def present_learning_curve(result: dict, out: Path) -> list[str]:
    """Mean scores per training-set size; the curve as JSON and a plot under ``out``."""
    from .report import save_json

    data = save_json(result, out / "learning_curve.json")
    plot = plot_learning_curve(result, out / "learning_curve.png")
    labels = [f"{int(size):>6} samples" for size in result["train_sizes_abs"]]
    return [*_curve_lines(labels, result), f"results: {data}", f"plot: {plot}"]


def present_validation_curve(result: dict, out: Path) -> list[str]:
    """Mean scores per parameter value; the curve as JSON and a plot under ``out``."""
    from .report import save_json

    name, values = result["param_name"], result["param_range"]
    lines = _curve_lines([f"{name}={value!r}" for value in values], result)
    lines.append(f"results: {save_json(result, out / 'validation_curve.json')}")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        lines.append(f"plot: {plot_curve(values, result, out / 'validation_curve.png', name)}")
    return lines


@payload_kind(
    "learning-curve", "train and validation scores against training-set size",
    present=present_learning_curve, models=("sklearn.svm.SVC", "sklearn.svm.SVR"),
    option_help={"train_sizes": "Training-set sizes: fractions of the largest, or row counts, "
                                "e.g. 'linspace(0.1,1,5)' or '[100,300,900]'."},
)
def learning_curve_distributed(
    view_or_client: Any,
    estimator: Any,
    split_paths: Iterable[str | os.PathLike],
    train_sizes: Any = np.linspace(0.1, 1.0, 5),  # noqa: B008 - immutable in practice, as sklearn
    scoring: str | Callable | None = None,
    *,
    retries: int = 2,
    error_score: float = np.nan,
    timeout: float | None = None,
) -> dict:
    """Train and validation scores per training-set size and split.

    The largest size is read from split 0 on an engine (the client may not
    hold the files). Returns ``train_sizes_abs`` (n_sizes,), ``train_scores``
    and ``test_scores`` (n_sizes, n_splits), and ``fit_times``; failed fits
    score ``error_score`` and are judged like the search's (warn or raise).
    """
    view = load_balanced_view(view_or_client)
    paths = [str(p) for p in split_paths]
    if not paths:
        raise ValueError("split_paths is empty")
    sizes_task = gather(TaskSender(view, _engine.split_sizes), {0: (paths[0],)}, retries, timeout)
    if isinstance(sizes_task[0], BaseException):
        raise sizes_task[0]
    sizes = train_sizes_absolute(train_sizes, sizes_task[0][0])

    scorer = build_scorer(estimator, scoring, error_score)
    sender = TaskSender(view, partial(_engine.evaluate, estimator, scorer, True, error_score))
    calls = {
        (i, s): (i, s, path, {}, int(sizes[i]))
        for i in reversed(range(len(sizes)))
        for s, path in enumerate(paths)
    }
    shape = (len(sizes), len(paths))
    train_scores, test_scores = np.full(shape, np.nan), np.full(shape, np.nan)
    fit_times = np.zeros(shape)
    errors = []
    for (i, s), result in gather(sender, calls, retries, timeout).items():
        if isinstance(result, BaseException):
            errors.append("Task failed on the cluster:\n" + remote_error_text(result))
            train_scores[i, s] = test_scores[i, s] = error_score
            continue
        if result["fit_error"]:
            errors.append(result["fit_error"])
        train_scores[i, s] = result["train_scores"]
        test_scores[i, s] = result["test_scores"]
        fit_times[i, s] = result["fit_time"]
    judge_fit_failures(errors, len(calls), error_score)
    return {
        "train_sizes_abs": sizes,
        "train_scores": train_scores,
        "test_scores": test_scores,
        "fit_times": fit_times,
    }


@payload_kind(
    "validation-curve", "train and validation scores against one parameter's values",
    present=present_validation_curve, models=("sklearn.svm.SVC", "sklearn.svm.SVR"),
)
def validation_curve_distributed(
    view_or_client: Any,
    estimator: Any,
    split_paths: Iterable[str | os.PathLike],
    param_name: str,
    param_range: Iterable[Any],
    *,
    scoring: str | Callable | None = None,
    error_score: float = np.nan,
    retries: int = 2,
    timeout: float | None = None,
) -> dict:
    """Train and validation scores per value of one parameter and split, as
    ``sklearn.model_selection.validation_curve`` on the same splits.

    One (value, split) pair per fit, run by `DistributedSearch` (so failed fits
    are judged the same way). Returns ``param_name``, ``param_range``, and
    ``train_scores``, ``test_scores`` and ``fit_times`` of shape
    (n_values, n_splits).
    """
    values = list(param_range)
    search = DistributedSearch(
        view_or_client, estimator, None, split_paths,
        candidates=[{param_name: value} for value in values], scoring=scoring,
        error_score=error_score, retries=retries, order="given", return_train_score=True,
    ).run(timeout=timeout)
    metric = search.table.metrics()[0]
    return {
        "param_name": param_name,
        "param_range": values,
        "train_scores": search.table.scores("train", metric).copy(),
        "test_scores": search.table.scores("test", metric).copy(),
        "fit_times": search.table.fit_time.copy(),
    }
