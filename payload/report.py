"""Text report and plots of ``cv_results_`` (ours or GridSearchCV's).

The text report keeps the format of the classic IPython.parallel grid-search
tutorial: mean +/- standard error of the mean (``scipy.stats.sem``) over splits,
because the spread of the *mean* is what tells two close candidates apart.
Plots use matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so
they work headless and leave the caller's backend alone.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import sem


def _split_scores(
    cv_results: Mapping[str, Any], kind: str, metric: str = "score"
) -> np.ndarray | None:
    """(n_candidates, n_splits) array of ``split{i}_{kind}_{metric}`` columns."""
    columns = []
    while (key := f"split{len(columns)}_{kind}_{metric}") in cv_results:
        columns.append(np.asarray(cv_results[key], dtype=float))
    if not columns:
        return None
    return np.column_stack(columns)


def _mean_sem(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # one split: sem undefined -> nan
        return scores.mean(axis=1), np.atleast_1d(sem(scores, axis=1))


def plain(params: Mapping[str, Any]) -> dict:
    """numpy scalars print as ``np.float64(...)``; show them as Python numbers."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in params.items()}


def report_text(cv_results: Mapping[str, Any], top: int = 5, metric: str = "score") -> str:
    """Top candidates by ``metric``, one line each, best first (NaN last).

    ``Rank 1: validation: 0.99022 (+/-0.00151) train: 0.99896 (+/-0.00038): {'C': 10.0}``
    """
    test = _split_scores(cv_results, "test", metric)
    if test is None or test.shape[0] == 0:
        return ""
    test_mean, test_sem = _mean_sem(test)
    train = _split_scores(cv_results, "train", metric)
    if train is not None:
        train_mean, train_sem = _mean_sem(train)
    order = sorted(range(len(test_mean)), key=lambda i: (np.isnan(test_mean[i]), -test_mean[i]))
    lines = []
    for rank, i in enumerate(order[:top], start=1):
        line = f"Rank {rank}: validation: {test_mean[i]:.5f} (+/-{test_sem[i]:.5f})"
        if train is not None:
            line += f" train: {train_mean[i]:.5f} (+/-{train_sem[i]:.5f})"
        lines.append(f"{line}: {plain(cv_results['params'][i])}")
    return "\n".join(lines)


def _param_names(cv_results: Mapping[str, Any]) -> list[str]:
    return [key[len("param_") :] for key in cv_results if key.startswith("param_")]


def _distinct(values: list) -> list:
    """Distinct values, sorted when they compare, else in order of appearance."""
    seen: list = []
    for v in values:
        if not any(v is s or _same(v, s) for s in seen):
            seen.append(v)
    try:
        return sorted(seen)
    except TypeError:
        return seen


def _same(a: Any, b: Any) -> bool:
    """Equality for parameter values of any type; arrays (ambiguous truth) differ."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _label(value: Any) -> str:
    """Tick label; positive numbers in scientific notation, as they are log-spaced."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        value = float(value)
        if value > 0 and (value >= 1e3 or value < 1e-2):
            return f"{value:.0e}"
        return f"{value:g}"
    return str(value)


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_param_boxplots(
    cv_results: Mapping[str, Any],
    path: str | os.PathLike,
    train: bool = False,
    metric: str = "score",
) -> Path:
    """One panel per parameter: per-split validation scores for each of its values.

    Each box pools every split score of every candidate that used that value,
    which shows a parameter's effect marginalized over the others. With
    ``train=True`` train scores are drawn beside them, to spot overfitting.
    """
    from matplotlib.figure import Figure

    names = _param_names(cv_results)
    test = _split_scores(cv_results, "test", metric)
    train_scores = _split_scores(cv_results, "train", metric) if train else None
    if test is None or not names:
        raise ValueError("cv_results has no split scores or no param_ columns")
    fig = Figure(figsize=(7, 2.8 * len(names)))
    for k, name in enumerate(names, start=1):
        ax = fig.add_subplot(len(names), 1, k)
        column = np.ma.asarray(cv_results[f"param_{name}"])
        present = [i for i in range(len(column)) if not np.ma.is_masked(column[i])]
        values = _distinct([column[i] for i in present])
        positions = np.arange(1, len(values) + 1)

        offset = 0.2 if train_scores is not None else 0.0
        ax.boxplot(_pooled(test, column, present, values), positions=positions + offset, widths=0.3)
        if train_scores is not None:
            ax.boxplot(
                _pooled(train_scores, column, present, values),
                positions=positions - offset,
                widths=0.3,
                boxprops={"color": "tab:orange"},
                medianprops={"color": "tab:orange"},
            )
        ax.set_xticks(positions)
        ax.set_xticklabels([_label(v) for v in values])
        ax.set_xlabel(name)
        ax.set_ylabel("validation" + (" (right) / train (left)" if train else "") + " score")
    fig.tight_layout()
    return save_png(fig, path)


def _pooled(scores: np.ndarray, column: Any, present: list[int], values: list) -> list:
    """Finite split scores of the candidates using each value, pooled per value."""
    out = []
    for v in values:
        rows = [i for i in present if _same(column[i], v)]
        pooled = scores[rows].ravel()
        out.append(pooled[np.isfinite(pooled)])
    return out


def plot_heatmap(
    cv_results: Mapping[str, Any],
    path: str | os.PathLike,
    x: str = "gamma",
    y: str = "C",
    metric: str = "score",
) -> Path:
    """Mean validation score over a two-parameter grid (e.g. C x gamma).

    Grid values are usually log-spaced, so cells are evenly spaced and labelled
    with the values. If the grid has more parameters, each cell shows the best
    mean over them.
    """
    from matplotlib.figure import Figure

    xs_col = np.ma.asarray(cv_results[f"param_{x}"])
    ys_col = np.ma.asarray(cv_results[f"param_{y}"])
    means = np.asarray(cv_results[f"mean_test_{metric}"], dtype=float)
    rows = [
        i
        for i in range(len(means))
        if not (np.ma.is_masked(xs_col[i]) or np.ma.is_masked(ys_col[i]))
    ]
    xs = _distinct([xs_col[i] for i in rows])
    ys = _distinct([ys_col[i] for i in rows])
    grid = np.full((len(ys), len(xs)), np.nan)
    for i in rows:
        cell = (
            next(k for k, v in enumerate(ys) if _same(ys_col[i], v)),
            next(k for k, v in enumerate(xs) if _same(xs_col[i], v)),
        )
        if np.isnan(grid[cell]) or means[i] > grid[cell]:
            grid[cell] = means[i]

    fig = Figure(figsize=(1.2 * len(xs) + 3, 0.8 * len(ys) + 2.5))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="mean validation score")
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([_label(v) for v in xs])
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels([_label(v) for v in ys])
    ax.set_xlabel(f"{x} (log-spaced)" if _log_spaced(xs) else x)
    ax.set_ylabel(f"{y} (log-spaced)" if _log_spaced(ys) else y)
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), value in np.ndenumerate(grid):
        if np.isfinite(value):
            ax.text(
                c,
                r,
                f"{value:.3f}",
                ha="center",
                va="center",
                color="black" if value > middle else "white",
                fontsize=8,
            )
    fig.tight_layout()
    return save_png(fig, path)


def _log_spaced(values: list) -> bool:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return False
    if arr.ndim != 1 or arr.size < 2 or (arr <= 0).any():  # tuples (ngram_range) are not
        return False
    ratios = arr[1:] / arr[:-1]
    return bool(np.allclose(ratios, ratios[0], rtol=0.05) and ratios[0] >= 3)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy arrays, scalars and masked values as plain JSON values
    (masked and NaN become null)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ma.MaskedArray):
        return [
            None if m else jsonable(v)
            for v, m in zip(obj.data.tolist(), np.ma.getmaskarray(obj).tolist())
        ]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """``obj`` as indented JSON (see `jsonable`); values JSON lacks become strings."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=2, default=str) + "\n")
    return path


def save_cv_results(cv_results: Mapping[str, Any], directory: str | os.PathLike) -> list[Path]:
    """``cv_results.json`` and ``cv_results.csv`` (one row per candidate) in ``directory``."""
    import csv

    directory = Path(directory)
    clean = jsonable(cv_results)
    paths = [save_json(clean, directory / "cv_results.json"), directory / "cv_results.csv"]
    keys = [k for k in clean if k != "params"]
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        writer.writerows(zip(*(clean[k] for k in keys)))
    return paths
