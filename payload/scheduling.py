"""Which candidates a search evaluates, in what order, and how many pairs per task.

Order matters twice. For an exhaustive grid every candidate runs anyway, and
submitting the slowest fits first keeps engines from idling at the end behind
one long straggler (``"longest-first"``). For a randomized or truncated search,
what matters is a partial result: if the search is aborted or times out, the
candidates done so far should be an unbiased sample of the whole, so they are
submitted in a seeded random order (``"shuffled"``); longest-first would leave
a sample biased toward large ``C`` or many trees.

Pairs go out in batches sized by guided self-scheduling (`guided_batches`):
each batch takes a share of what is left, so the first, expensive pairs travel
several to a message and the last go one by one. An ipyparallel task costs the
engine a few milliseconds beyond the fit (measured in ``bench/overhead.py``),
which is most of a sub-10 ms fit; the single pairs at the end keep the finish
even.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import ParameterGrid, ParameterSampler

# Parameters whose larger (+1) or smaller (-1) values usually make a fit slower.
_COST_DIRECTION = {
    "C": 1,
    "n_estimators": 1,
    "max_iter": 1,
    "max_depth": 1,
    "max_leaf_nodes": 1,
    "degree": 1,
    "n_components": 1,
    "alpha": -1,
    "tol": -1,
    "min_samples_split": -1,
    "min_samples_leaf": -1,
}
# None means "unbounded" for these, the most expensive setting.
_NONE_IS_MAX = {"max_depth", "max_leaf_nodes"}

AUTO_BATCH_SHARE = 4  # a batch takes 1/(share x engines) of the pairs left
AUTO_BATCH_MAX = 16  # and never more pairs: a lost engine costs at most this many fits

Order = str | Callable[[Mapping[str, Any]], float]


def expand_candidates(
    grid_or_distributions: Mapping | Sequence[Mapping],
    n_iter: int | None = None,
    random_state: Any = None,
) -> list[dict]:
    """Every grid point (``n_iter`` None), or ``n_iter`` samples as RandomizedSearchCV draws."""
    if n_iter is None:
        return list(ParameterGrid(grid_or_distributions))
    return list(ParameterSampler(grid_or_distributions, n_iter, random_state=random_state))


def guided_batches(
    pairs: Sequence[Any], n_engines: int, size: int | str = "auto"
) -> list[list[Any]]:
    """Split ``pairs`` (in submission order) into consecutive batches.

    ``size="auto"``: guided self-scheduling, ``len(left) // (AUTO_BATCH_SHARE *
    n_engines)`` pairs per batch, between 1 and ``AUTO_BATCH_MAX``; an int: that
    many pairs per batch (1 = one task per pair).
    """
    check_batch_size(size)
    batches, i, n = [], 0, len(pairs)
    while i < n:
        if size == "auto":
            share = AUTO_BATCH_SHARE * max(1, n_engines)
            step = min(AUTO_BATCH_MAX, max(1, (n - i) // share))
        else:
            step = int(size)
        batches.append(list(pairs[i : i + step]))
        i += step
    return batches


def check_batch_size(size: Any) -> None:
    """Refuse anything but "auto" or a positive integer, before anything is submitted."""
    if size != "auto" and not (isinstance(size, numbers.Integral) and size >= 1):
        raise ValueError(f"batch_size must be 'auto' or a positive integer, got {size!r}")


def submission_order(
    candidates: Sequence[Mapping[str, Any]],
    order: Order = "longest-first",
    random_state: Any = None,
) -> list[int]:
    """Candidate indices in the order their tasks are submitted.

    ``"longest-first"`` estimates the cost from the parameters known to drive
    fit time (``C``, ``n_estimators``, ``alpha``..., also as ``step__C`` in
    pipelines): each contributes the normalized rank of its value, signed by
    direction; candidates without known parameters, and ties, keep the given
    order. ``"shuffled"`` is a random permutation seeded by ``random_state``
    (an int gives the same order every run). A callable maps params to an
    estimated cost; ``"given"`` keeps the order as is.
    """
    indices = list(range(len(candidates)))
    if order == "given":
        return indices
    if order == "shuffled":
        return [int(i) for i in shuffle_rng(random_state).permutation(len(candidates))]
    if callable(order):
        costs = [float(order(params)) for params in candidates]
    elif order == "longest-first":
        costs = _heuristic_costs(candidates)
    else:
        raise ValueError(
            f"order must be 'longest-first', 'shuffled', 'given' or a callable, got {order!r}"
        )
    return sorted(indices, key=lambda i: -costs[i])


def shuffle_rng(random_state: Any) -> np.random.Generator:
    """The generator of the shuffled order, independent of the candidates' sampling.

    An int seeds its own stream (not the ``RandomState(seed)`` stream that
    ``ParameterSampler`` drew the candidates from, so position and value are not
    correlated); a ``RandomState`` gives one draw as the seed; None is fresh entropy.
    """
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(int(random_state.randint(2**31 - 1)))
    if isinstance(random_state, numbers.Integral):
        return np.random.default_rng([int(random_state), 0x5EED])
    return np.random.default_rng(random_state)


def _heuristic_costs(candidates: Sequence[Mapping[str, Any]]) -> list[float]:
    values: dict[str, set] = defaultdict(set)
    for params in candidates:
        for name, value in params.items():
            short = name.rsplit("__", 1)[-1]
            if short in _COST_DIRECTION and _is_number(value):
                values[name].add(float(value))
    ranks = {
        name: {v: i / max(len(vs) - 1, 1) for i, v in enumerate(sorted(vs))}
        for name, vs in values.items()
    }
    costs = []
    for params in candidates:
        cost = 0.0
        for name, value in params.items():
            short = name.rsplit("__", 1)[-1]
            if short not in _COST_DIRECTION:
                continue
            if value is None and short in _NONE_IS_MAX:
                rank = 1.0
            elif _is_number(value) and name in ranks:
                rank = ranks[name][float(value)]
            else:
                continue
            cost += rank if _COST_DIRECTION[short] > 0 else 1.0 - rank
        costs.append(cost)
    return costs


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
