"""Model selection on an ipyparallel cluster over memory-mapped CV splits.

Usable without ``provision``: everything takes an ``ipyparallel.Client`` (or a
view) and split paths. Engines need only numpy, scipy, scikit-learn, joblib,
cloudpickle and ipyparallel; task code is shipped by value.
"""

from .curves import learning_curve_distributed, plot_learning_curve
from .joblib_backend import joblib_backend
from .journal import JournalMismatch, verify_journal
from .report import plot_heatmap, plot_param_boxplots, report_text
from .scheduling import guided_batches, submission_order
from .search import DistributedSearch
from .splits import persist_cv_splits, read_manifest, split_paths

__all__ = [
    "DistributedSearch",
    "guided_batches",
    "joblib_backend",
    "JournalMismatch",
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
