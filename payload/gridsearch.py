"""The ``gridsearch`` payload kind: a grid or randomized search over split files
already on the hosts (``provision put-data``), run to the end with progress.

The Python API for data in memory is `payload.ClusterGridSearchCV`; this entry
point serves front ends that hand over split paths, such as the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .registry import payload_kind
from .report import plain, plot_heatmap, plot_param_boxplots, report_text, save_cv_results
from .search import DistributedSearch

SEED_HELP = (
    "Seeds the sampling of candidates (--n-iter) and the shuffled order in which a "
    "randomized search submits them, so a partial result is an unbiased sample; not the "
    "CV splits (put-data's --seed)."
)


def present_search(search: DistributedSearch, out: Path, *, top: int = 5) -> list[str]:
    """The ``top`` candidates, the best, and where ``cv_results`` and the plots went."""
    results = search.cv_results_
    files = save_cv_results(results, out)
    plots = [plot_param_boxplots(results, out / "boxplots.png")]
    names = [k[len("param_"):] for k in results if k.startswith("param_")]
    if len(names) == 2:
        plots.append(plot_heatmap(results, out / "heatmap.png", x=names[1], y=names[0]))
    return [
        report_text(results, top=top),
        f"best: {plain(search.best_params_)} validation {search.best_score_:.5f}",
        f"results: {', '.join(map(str, files))}",
        f"plots: {', '.join(map(str, plots))}",
    ]


@payload_kind(
    "gridsearch", "grid or randomized search over the persisted CV splits",
    present=present_search, models=("sklearn.svm.SVC", "sklearn.svm.SVR"),
    option_help={
        "random_state": SEED_HELP,
        "n_iter": "Randomized search: sample this many candidates (--param may then give "
                  "distributions such as loguniform(1e-2,1e2)).",
        "top": "Candidates in the report.",
        "return_train_score": "Also score each fit on its training rows.",
        "batch_size": "Pairs per task: auto (guided self-scheduling) or a number.",
    },
)
def run_gridsearch(
    view_or_client: Any,
    estimator: Any,
    param_grid: Mapping | list,
    split_paths: Iterable[str | os.PathLike],
    *,
    scoring: Any = None,
    n_iter: int | None = None,
    random_state: int | None = None,
    journal: str | os.PathLike | None = None,
    return_train_score: bool = True,
    batch_size: int | str = "auto",
    retries: int = 2,
    timeout: float | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> DistributedSearch:
    """Run a `DistributedSearch` to completion; on timeout abort it (the journal
    keeps what finished) and raise ``TimeoutError``."""
    search = DistributedSearch(
        view_or_client, estimator, param_grid, split_paths, scoring=scoring, n_iter=n_iter,
        random_state=random_state, journal=journal, return_train_score=return_train_score,
        batch_size=batch_size, retries=retries,
    ).start()
    if not search.wait(timeout=timeout, progress=progress):
        # Without waiting for the engines' answers: the timeout may be a network cut
        # that is still on, and nobody would answer.
        search.abort(block=False)
        done, total = search.progress
        where = f"; re-run to resume from {journal}" if journal else ""
        raise TimeoutError(
            f"search not finished within {timeout} s ({done} of {total} fits){where}"
        )
    return search
