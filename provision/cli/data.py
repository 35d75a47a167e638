"""Commands on data and runs: put-data and run, what the cluster exists for."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from provision import context, data, lifecycle, progress
from provision.cli.common import config_options, err, out, settings
from provision.errors import BadInput, ProvisionError
from provision.params import load_estimator, parse_params, parse_value


@click.command(name="put-data")
@click.argument("name")
@click.argument("dataset")
@click.option(
    "--cv",
    type=click.Choice(["shuffle", "kfold", "stratified"]),
    default="shuffle",
    show_default=True,
)
@click.option("--n-splits", type=int, default=5, show_default=True)
@click.option(
    "--test-size", type=float, default=0.25, show_default=True, help="For shuffle and stratified."
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--target", help="Target column of a .csv (default: the last).")
@config_options
def put_data(
    name: str,
    dataset: str,
    cv: str,
    n_splits: int,
    test_size: float,
    seed: int,
    target: str | None,
    config_path: Path | None,
    template: str | None,
) -> None:
    """Persist DATASET's CV splits (memmappable) and ship them once to every host.

    DATASET is a scikit-learn dataset (digits, iris, wine, breast_cancer) or a
    file: .npz with X and y, X.npy,y.npy, .csv with a target column, or a
    joblib dump of (X, y). A second run moves no bytes.
    """
    cfg = settings(config_path, template, name)
    data.make_cv(cv, n_splits, test_size, seed)  # bad flags fail before any work
    data.load_dataset(dataset, target)
    with progress.for_console(err) as reporter:
        ctx = context.prepare(cfg, reporter)
        result = data.put_data(
            ctx, dataset, cv=cv, n_splits=n_splits, test_size=test_size, seed=seed, target=target
        )
    moved = result.bytes_moved
    out.print(f"{dataset}: {len(result.remote_paths)} splits in {result.remote_dir} on "
              f"{len(result.bytes_per_host)} host(s); moved {moved / 1e6:.2f} MB")


def _out_dir(out_dir: Path | None, name: str, kind: str, label: str, model: str) -> Path:
    short = model.rsplit(".", 1)[-1]
    d = out_dir or Path("provision-results") / f"{name}-{kind}-{label}-{short}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@click.command()
@click.argument("name")
@click.argument("kind", type=click.Choice(["gridsearch", "learning-curve"]))
@click.option("--data", "label", required=True, help="A dataset put on the cluster with put-data.")
@click.option(
    "--model",
    default="sklearn.svm.SVC",
    show_default=True,
    help="Dotted path of the estimator class.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUES",
    help="e.g. 'C=logspace(-1,2,4)', 'kernel=[\"rbf\",\"linear\"]', "
    "'C=loguniform(1e-2,1e2)'. Repeatable.",
)
@click.option(
    "--set",
    "fixed",
    multiple=True,
    metavar="NAME=VALUE",
    help="Fixed estimator parameter. Repeatable.",
)
@click.option("--n-iter", type=int, help="Randomized search with this many candidates.")
@click.option("--scoring", help="A scikit-learn scorer name (default: the estimator's score).")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="For randomized search order and sampling.",
)
@click.option("--top", type=int, default=5, show_default=True, help="Candidates in the report.")
@click.option(
    "--timeout",
    type=float,
    default=3600,
    show_default=True,
    help="Seconds before the search gives up.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Results directory (re-running resumes from its journal).",
)
@config_options
def run(
    name: str,
    kind: str,
    label: str,
    model: str,
    params: tuple[str, ...],
    fixed: tuple[str, ...],
    n_iter: int | None,
    scoring: str | None,
    seed: int,
    top: int,
    timeout: float,
    out_dir: Path | None,
    config_path: Path | None,
    template: str | None,
) -> None:
    """Run the bundled payload (grid search or learning curve) on the cluster's engines.

    Hands a connected ipyparallel Client to the payload, shows progress,
    prints the report and writes results (JSON, CSV) and plots to --out.
    """
    settings(config_path, template, name)
    fixed_params = {}
    for spec in fixed:
        key, sep, expr = spec.partition("=")
        if not key or not sep:
            raise BadInput(f"--set {spec}: expected NAME=VALUE")
        values, _dist = parse_value(expr, spec, flag="--set")
        if values is None or len(values) != 1:
            raise BadInput(f"--set {spec}: expected NAME=VALUE")
        fixed_params[key] = values[0]
    estimator = load_estimator(model, fixed_params)
    if scoring is not None:
        from sklearn.metrics import get_scorer_names

        if scoring not in get_scorer_names():
            raise BadInput(f"--scoring: unknown scorer {scoring!r}")
    grid = parse_params(list(params), estimator) if kind == "gridsearch" else {}
    if (
        kind == "gridsearch"
        and n_iter is None
        and any(not isinstance(v, list) for v in grid.values())
    ):
        raise BadInput("--param: distributions need --n-iter (randomized search)")
    if n_iter is not None and n_iter < 1:
        raise BadInput(f"--n-iter: must be at least 1 (got {n_iter})")
    split_paths = data.split_paths(name, label)
    target = _out_dir(out_dir, name, kind, label, model)
    rc = lifecycle.connect(name)
    try:
        if kind == "gridsearch":
            _gridsearch(
                rc, estimator, grid, split_paths, n_iter, scoring, seed, top, timeout, target
            )
        else:
            _learning_curve(rc, estimator, split_paths, scoring, target)
    finally:
        rc.close()


def _gridsearch(
    rc: Any,
    estimator: Any,
    grid: dict[str, Any],
    split_paths: list[str],
    n_iter: int | None,
    scoring: str | None,
    seed: int,
    top: int,
    timeout: float,
    target: Path,
) -> None:
    from payload import DistributedSearch
    from payload.report import plot_heatmap, plot_param_boxplots, report_text

    search = DistributedSearch(
        rc.load_balanced_view(), estimator, grid, split_paths, scoring=scoring, n_iter=n_iter,
        random_state=seed, journal=target / "journal.jsonl",
    )
    started = time.perf_counter()
    with progress.for_console(err) as reporter:
        search.start()
        done, total = search.progress
        with reporter.wait(
            f"{type(estimator).__name__}: {total} fits on {len(rc.ids)} engines", total=total
        ) as advance:
            finished = search.wait(timeout=timeout, progress=lambda d, t: advance(d))
    if not finished:
        search.abort()
        raise ProvisionError(f"the search did not finish within {timeout:.0f} s (--timeout); "
                             f"re-run the same command to resume from {target / 'journal.jsonl'}")
    wall = time.perf_counter() - started
    results = search.cv_results_
    out.print(report_text(results, top=top))
    _write_results(results, target)
    plots = [plot_param_boxplots(results, target / "boxplots.png")]
    names = [k[len("param_"):] for k in results if k.startswith("param_")]
    if len(names) == 2:
        plots.append(plot_heatmap(results, target / "heatmap.png", x=names[1], y=names[0]))
    out.print(f"best: {search.best_params_} validation {search.best_score_:.5f}; {wall:.1f} s")
    out.print(f"results: {target / 'cv_results.json'}, {target / 'cv_results.csv'}")
    out.print("plots: " + ", ".join(str(p) for p in plots))


def _learning_curve(
    rc: Any, estimator: Any, split_paths: list[str], scoring: str | None, target: Path
) -> None:
    from payload.curves import learning_curve_distributed, plot_learning_curve

    result = learning_curve_distributed(
        rc.load_balanced_view(), estimator, split_paths, scoring=scoring
    )
    (target / "learning_curve.json").write_text(json.dumps(_jsonable(result), indent=2))
    path = plot_learning_curve(result, target / "learning_curve.png")
    for size, tr, te in zip(
        result["train_sizes_abs"], result["train_scores"], result["test_scores"]
    ):
        out.print(f"{int(size):>6} samples: train {np.mean(tr):.5f}  validation {np.mean(te):.5f}")
    out.print(f"plot: {path}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ma.MaskedArray):
        return [
            None if m else _jsonable(v)
            for v, m in zip(obj.data.tolist(), np.ma.getmaskarray(obj).tolist())
        ]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _write_results(results: dict[str, Any], target: Path) -> None:
    clean = _jsonable(results)
    (target / "cv_results.json").write_text(json.dumps(clean, indent=2, default=str))
    keys = [k for k in clean if k != "params"]
    with open(target / "cv_results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for row in zip(*(clean[k] for k in keys)):
            w.writerow(row)


COMMANDS = (put_data, run)
