"""Model selection on an ipyparallel cluster over memory-mapped CV splits.

Usable without ``provision``: everything takes an ``ipyparallel.Client`` (or a
view). Engines need only numpy, scipy, scikit-learn, joblib, cloudpickle,
ipyparallel and psutil; task code is shipped by value.

- `ClusterGridSearchCV` / `ClusterRandomizedSearchCV`: scikit-learn's searches,
  fits on the cluster, data shipped once per host.
- `DistributedSearch`: the engine room, over split files already on the hosts.
- `joblib_backend`: scikit-learn's own joblib-parallel code on the cluster.
- `kinds()`: the payloads a front end can run by name (gridsearch,
  learning-curve, validation-curve, forest, sgd-average), from `payload.registry`,
  over data already on the hosts; `train_forest_distributed` and
  `sgd_average_distributed` do the same from ``X, y`` in memory.
"""

from .cluster_search import ClusterGridSearchCV, ClusterRandomizedSearchCV
from .curves import (
    learning_curve_distributed,
    plot_learning_curve,
    validation_curve_distributed,
)
from .forest import ForestResult, merge_forests, run_forest, train_forest_distributed
from .gridsearch import run_gridsearch
from .hosts import HostMemory, engines_by_host, host_memory
from .joblib_backend import joblib_backend
from .journal import JournalMismatch, verify_journal
from .registry import kind, kinds
from .report import plot_heatmap, plot_param_boxplots, report_text, save_cv_results
from .scheduling import guided_batches, submission_order
from .search import DistributedSearch
from .sgd import (
    AverageResult,
    average_linear_models,
    partition_rows,
    run_sgd_average,
    sgd_average_distributed,
)
from .splits import persist_cv_splits, read_manifest, split_paths

__all__ = [
    "AverageResult",
    "ClusterGridSearchCV",
    "ClusterRandomizedSearchCV",
    "DistributedSearch",
    "ForestResult",
    "HostMemory",
    "JournalMismatch",
    "average_linear_models",
    "engines_by_host",
    "guided_batches",
    "host_memory",
    "joblib_backend",
    "kind",
    "kinds",
    "learning_curve_distributed",
    "merge_forests",
    "partition_rows",
    "persist_cv_splits",
    "plot_heatmap",
    "plot_learning_curve",
    "plot_param_boxplots",
    "read_manifest",
    "report_text",
    "run_forest",
    "run_gridsearch",
    "run_sgd_average",
    "save_cv_results",
    "sgd_average_distributed",
    "split_paths",
    "submission_order",
    "train_forest_distributed",
    "validation_curve_distributed",
    "verify_journal",
]
