"""The ``gridsearch`` payload kind: a grid or randomized search over split files
already on the hosts (``provision put-data``), run to the end with progress.

The Python API for data in memory is `payload.ClusterGridSearchCV`; this entry
point serves front ends that hand over split paths, such as the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .registry import payload_kind
from .search import DistributedSearch


@payload_kind("gridsearch", "grid or randomized search over the persisted CV splits")
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
        search.abort()
        done, total = search.progress
        raise TimeoutError(f"search not finished within {timeout} s ({done} of {total} fits)")
    return search
