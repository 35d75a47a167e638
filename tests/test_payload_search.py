"""DistributedSearch: several metrics, original exceptions, and the order of a
partial (aborted) randomized search."""

from __future__ import annotations

import numpy as np
import pytest
from payload_estimators import (
    CustomFailingClassifier,
    CustomFitError,
    FailingClassifier,
    SlowC,
)
from scipy.stats import loguniform
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from payload import DistributedSearch, submission_order
from payload._remote import RemoteTraceback

pytest_plugins = ["payload_fixtures"]  # rc (node-venv engines), digits, cv_pairs, dense_paths

GRID = {"C": [1.0, 10.0], "gamma": [1e-3, 1e-4]}


def _without_times(results: dict) -> dict:
    return {k: v for k, v in results.items() if not k.endswith("_time")}


def test_multimetric_scoring_equals_grid_search_cv_on_every_key(rc, digits, cv_pairs, dense_paths):
    X, y = digits
    scoring = ["accuracy", "f1_macro"]
    search = DistributedSearch(
        rc, SVC(), GRID, dense_paths, scoring=scoring, best_metric="f1_macro"
    ).run(timeout=120)
    reference = GridSearchCV(
        SVC(), GRID, cv=cv_pairs, scoring=scoring, refit="f1_macro", return_train_score=True
    ).fit(X, y)
    expected = _without_times(reference.cv_results_)
    got = _without_times(search.cv_results_)
    assert list(got) == list(expected)  # same keys, in the same order
    np.testing.assert_equal(got, expected)  # values exactly equal, masked params included
    assert search.multimetric_
    assert (search.best_index_, search.best_params_) == (
        reference.best_index_, reference.best_params_
    )
    assert search.best_score_ == reference.best_score_


def test_error_score_raise_reraises_the_engines_exception_type(rc, dense_paths):
    search = DistributedSearch(
        rc, CustomFailingClassifier(), {"parameter": [0, 2]}, dense_paths, error_score="raise"
    )
    with pytest.raises(CustomFitError, match="custom failure on the engine") as info:
        search.run(timeout=120)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "CustomFitError" in str(info.value.__cause__)  # the engine's traceback, as cause
    builtin = DistributedSearch(
        rc, FailingClassifier(), {"parameter": [2]}, dense_paths, error_score="raise"
    )
    with pytest.raises(ValueError, match="Failing classifier failed as required"):
        builtin.run(timeout=120)


def _aborted_sample(rc, paths, seed: int, after: int) -> tuple[DistributedSearch, set[int]]:
    """A 30-candidate randomized search aborted once ``after`` fits are in."""
    search = DistributedSearch(
        rc, SlowC(), {"C": loguniform(1e-3, 1e3)}, paths[:1], n_iter=30, random_state=seed,
        batch_size=1,
    )
    search.start()
    search.wait(timeout=120, progress=lambda done, _: done >= after and search.abort())
    done = set(np.flatnonzero(search.table.done[:, 0]).tolist())
    assert after <= len(done) < 30, "the abort came too late to leave a partial result"
    return search, done


def test_aborted_randomized_search_leaves_a_seeded_random_sample(rc, dense_paths):
    first, done_first = _aborted_sample(rc, dense_paths, seed=7, after=4)
    again, done_again = _aborted_sample(rc, dense_paths, seed=7, after=6)
    other, _ = _aborted_sample(rc, dense_paths, seed=8, after=4)

    # What completed is exactly a prefix of the submission order...
    assert done_first == set(first.order[: len(done_first)])
    assert done_again == set(again.order[: len(done_again)])
    # ...which is a seeded shuffle: the same seed gives the same candidates in the
    # same order (so the same subset, up to how many finished), another seed not.
    assert first.candidates == again.candidates and first.order == again.order
    assert first.order == submission_order(first.candidates, "shuffled", 7)
    smaller, larger = sorted([done_first, done_again], key=len)
    assert smaller <= larger
    assert other.order != first.order
    # Not longest-first: the done candidates are not the largest C values.
    longest = submission_order(first.candidates, "longest-first")
    assert done_first != set(longest[: len(done_first)])
    Cs = np.array([c["C"] for c in first.candidates])
    assert Cs[sorted(done_first)].min() < np.sort(Cs)[-len(done_first)]


def test_an_exhaustive_grid_still_runs_longest_first(rc, dense_paths):
    search = DistributedSearch(rc, SVC(), GRID, dense_paths)
    assert [search.candidates[i]["C"] for i in search.order] == [10.0, 10.0, 1.0, 1.0]
