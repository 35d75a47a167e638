"""``scoring`` as scikit-learn's searches take it: None, a name, a callable, a
list/tuple of names, or a dict of name -> scorer.

The scorer built here is pickled once per search and called on the engines by
sklearn's own ``_score``, so single and multi-metric results are exactly what
GridSearchCV computes. It uses two private sklearn helpers
(``_check_multimetric_scoring``, ``_MultimetricScorer``): engines run the
client's exact sklearn version (provision installs it from the client's pins),
so both sides agree on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sklearn.metrics import check_scoring
from sklearn.metrics._scorer import _check_multimetric_scoring, _MultimetricScorer


def build_scorer(estimator: Any, scoring: Any, error_score: Any) -> Callable:
    """The scorer the engines call: one metric, or a ``_MultimetricScorer``.

    A callable ``scoring`` is used as is (it may return a dict: several
    metrics whose names are known only from its first result, as in sklearn).
    A list, tuple or dict becomes a multi-metric scorer that, unless
    ``error_score == "raise"``, turns a failing metric into ``error_score``.
    """
    if callable(scoring):
        return scoring
    if scoring is None or isinstance(scoring, str):
        return check_scoring(estimator, scoring)
    if isinstance(scoring, list | tuple | set | Mapping):
        scorers = _check_multimetric_scoring(estimator, scoring)
        return _MultimetricScorer(scorers=scorers, raise_exc=(error_score == "raise"))
    raise ValueError(
        "scoring must be None, a scorer name, a callable, a list/tuple of names or a dict "
        f"of name -> scorer, got {type(scoring).__name__}"
    )


def scoring_identity(scoring: Any) -> str:
    """A stable text for the journal's key: a callable by its qualified name (its
    repr holds a memory address that changes every run), the rest by repr."""
    if isinstance(scoring, Mapping):
        inner = ", ".join(f"{k!r}: {scoring_identity(v)}" for k, v in scoring.items())
        return "{" + inner + "}"
    if isinstance(scoring, list | tuple):
        return "[" + ", ".join(scoring_identity(v) for v in scoring) + "]"
    if callable(scoring) and hasattr(scoring, "__qualname__"):
        return f"{getattr(scoring, '__module__', '?')}.{scoring.__qualname__}"
    return repr(scoring)
