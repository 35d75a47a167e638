"""Model selection on an ipyparallel cluster over memory-mapped CV splits.

Usable without ``provision``: everything takes an ``ipyparallel.Client`` (or a
view). Engines need only numpy, scipy, scikit-learn, joblib, cloudpickle,
ipyparallel and psutil; task code is shipped by value.

- `ClusterGridSearchCV` / `ClusterRandomizedSearchCV`: scikit-learn's searches,
  fits on the cluster, data shipped once per host.
- `DistributedSearch`: the engine room, over split files already on the hosts.
- `joblib_backend`: scikit-learn's own joblib-parallel code on the cluster.
"""

from .cluster_search import ClusterGridSearchCV, ClusterRandomizedSearchCV
from .curves import learning_curve_distributed, plot_learning_curve
from .hosts import HostMemory, engines_by_host, host_memory
from .joblib_backend import joblib_backend
from .journal import JournalMismatch, verify_journal
from .report import plot_heatmap, plot_param_boxplots, report_text
from .scheduling import guided_batches, submission_order
from .search import DistributedSearch
from .splits import persist_cv_splits, read_manifest, split_paths

__all__ = [
    "ClusterGridSearchCV",
    "ClusterRandomizedSearchCV",
    "DistributedSearch",
    "HostMemory",
    "JournalMismatch",
    "engines_by_host",
    "guided_batches",
    "host_memory",
    "joblib_backend",
    "learning_curve_distributed",
    "persist_cv_splits",
    "plot_heatmap",
    "plot_learning_curve",
    "plot_param_boxplots",
    "read_manifest",
    "report_text",
    "split_paths",
    "submission_order",
    "verify_journal",
]
