"""Key scenarios of scikit-learn's own ``model_selection/tests/test_search.py``,
run against GridSearchCV / RandomizedSearchCV and against the cluster searches.

Each test takes ``SearchCV`` (and ``RandomSearchCV``): scikit-learn's class, or
ours bound to the node-venv engines. The assertions are sklearn's, so both
must behave the same way; where a result is a number, ours is also compared
with sklearn's. The estimators are sklearn's test estimators (in ``payload_estimators``: pytest
rewrites the asserts of test modules, and engines cannot import pytest).
"""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import pytest
from payload_estimators import MockClassifier, SklearnFailingClassifier
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs, make_classification
from sklearn.exceptions import FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, make_scorer, recall_score
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    GroupShuffleSplit,
    LeaveOneGroupOut,
    LeavePGroupsOut,
    RandomizedSearchCV,
    StratifiedKFold,
    StratifiedShuffleSplit,
)
from sklearn.svm import SVC, LinearSVC
from sklearn.utils._mocking import CheckingClassifier

from payload import ClusterGridSearchCV, ClusterRandomizedSearchCV

pytest_plugins = ["payload_fixtures"]  # rc: the node-venv engines

X = np.array([[-1, -1], [-2, -1], [1, 1], [2, 1]])
y = np.array([1, 1, 2, 2])
SVC_GRIDS = [
    {"kernel": ["rbf"], "C": [1, 10], "gamma": [0.1, 1]},
    {"kernel": ["poly"], "degree": [1, 2]},
]


@pytest.fixture(params=["sklearn", "cluster"])
def kind(request):
    return request.param


@pytest.fixture
def SearchCV(kind, rc, tmp_path):
    if kind == "sklearn":
        return GridSearchCV
    return partial(ClusterGridSearchCV, client=rc, data_dir=tmp_path)


@pytest.fixture
def RandomSearchCV(kind, rc, tmp_path):
    if kind == "sklearn":
        return RandomizedSearchCV
    return partial(ClusterRandomizedSearchCV, client=rc, data_dir=tmp_path)


def _results_without_times(search) -> dict:
    return {k: v for k, v in search.cv_results_.items() if not k.endswith("_time")}


def test_grid_search(SearchCV):
    grid_search = SearchCV(MockClassifier(), {"foo_param": [1, 2, 3]}, cv=2)
    grid_search.fit(X, y)
    assert grid_search.best_estimator_.foo_param == 2  # the smallest of the ties
    np.testing.assert_array_equal(grid_search.cv_results_["param_foo_param"].data, [1, 2, 3])
    grid_search.score(X, y)
    grid_search.predict_proba(X)
    grid_search.decision_function(X)
    grid_search.transform(X)
    grid_search.scoring = "sklearn"
    with pytest.raises(ValueError):
        grid_search.fit(X, y)


def test_grid_search_groups(SearchCV):
    rng = np.random.RandomState(0)
    X_, y_ = make_classification(n_samples=15, n_classes=2, random_state=0)
    groups = rng.randint(0, 3, 15)
    clf = LinearSVC(random_state=0)
    for cv in [LeaveOneGroupOut(), LeavePGroupsOut(2), GroupKFold(n_splits=3), GroupShuffleSplit()]:
        gs = SearchCV(clf, {"C": [1]}, cv=cv)
        with pytest.raises(ValueError, match="The 'groups' parameter should not be None."):
            gs.fit(X_, y_)
        gs.fit(X_, y_, groups=groups)
    for cv in [StratifiedKFold(), StratifiedShuffleSplit()]:
        SearchCV(clf, {"C": [1]}, cv=cv).fit(X_, y_)


def test_classes__property(SearchCV):
    X_ = np.arange(100).reshape(10, 10)
    y_ = np.array([0] * 5 + [1] * 5)
    grid_search = SearchCV(LinearSVC(random_state=0), {"C": [0.1, 1, 10]}).fit(X_, y_)
    np.testing.assert_array_equal(grid_search.best_estimator_.classes_, grid_search.classes_)
    assert not hasattr(SearchCV(LinearSVC(random_state=0), {"C": [0.1]}), "classes_")
    no_refit = SearchCV(LinearSVC(random_state=0), {"C": [0.1, 1]}, refit=False).fit(X_, y_)
    assert not hasattr(no_refit, "classes_")


def test_no_refit(SearchCV):
    for scoring in [None, ["accuracy", "precision"]]:
        grid_search = SearchCV(
            MockClassifier(), {"foo_param": [1, 2, 3]}, refit=False, cv=2, scoring=scoring
        ).fit(X, y)
        assert not hasattr(grid_search, "best_estimator_")
        if scoring is None:
            assert hasattr(grid_search, "best_index_") and hasattr(grid_search, "best_params_")
        for fn_name in ("predict", "predict_proba", "transform", "inverse_transform"):
            with pytest.raises(AttributeError, match=f"has no attribute '{fn_name}'") as info:
                getattr(grid_search, fn_name)(X)
            assert "`refit=False`" in str(info.value.__cause__)
    error_msg = "For multi-metric scoring, the parameter refit must be set to a scorer key"
    for refit in [True, "recall", "accuracy"]:
        with pytest.raises(ValueError, match=error_msg):
            SearchCV(
                MockClassifier(), {"foo_param": [1]}, refit=refit,
                scoring={"acc": "accuracy", "prec": "precision"},
            ).fit(X, y)


def test_refit_callable_and_its_errors(SearchCV):
    X_, y_ = make_classification(n_samples=100, n_features=4, random_state=42)
    clf = SearchCV(
        LinearSVC(random_state=42), {"C": [0.01, 0.1, 1]}, scoring="precision",
        refit=lambda results: results["mean_test_score"].argmin(),
    ).fit(X_, y_)
    assert clf.best_index_ == 0 and not hasattr(clf, "best_score_")
    with pytest.raises(TypeError, match="best_index_ returned is not an integer"):
        SearchCV(LinearSVC(), {"C": [0.1, 1]}, scoring="precision", refit=lambda r: None).fit(
            X_, y_
        )
    for bad in (-1, 2):
        with pytest.raises(IndexError, match="best_index_ index out of range"):
            SearchCV(
                LinearSVC(), {"C": [0.1, 1]}, scoring="precision", refit=lambda r, b=bad: b
            ).fit(X_, y_)


def test_refit_callable_multi_metric(SearchCV):
    X_, y_ = make_classification(n_samples=100, n_features=4, random_state=42)
    scoring = {"Accuracy": make_scorer(accuracy_score), "prec": "precision"}
    clf = SearchCV(
        LinearSVC(random_state=42), {"C": [0.01, 0.1, 1]}, scoring=scoring,
        refit=lambda results: results["mean_test_prec"].argmin(),
    ).fit(X_, y_)
    assert clf.best_index_ == 0 and not hasattr(clf, "best_score_")


def test_grid_search_cv_results_masks_and_dtypes(SearchCV, rc, tmp_path):
    X_, y_ = make_classification(n_samples=50, n_features=4, random_state=42)
    params = SVC_GRIDS
    search = SearchCV(SVC(), cv=3, param_grid=params, return_train_score=True).fit(X_, y_)
    results = search.cv_results_
    keys = ("param_C", "param_degree", "param_gamma", "param_kernel")
    kinds = {key: results[key].dtype.kind for key in keys}
    assert kinds == {"param_C": "i", "param_degree": "i", "param_gamma": "f", "param_kernel": "O"}
    assert results["rank_test_score"].dtype == np.int32
    for i in range(6):
        poly = results["param_kernel"][i] == "poly"
        assert results["param_C"].mask[i] == poly and results["param_degree"].mask[i] != poly
    reference = GridSearchCV(SVC(), cv=3, param_grid=params, return_train_score=True).fit(X_, y_)
    np.testing.assert_equal(_results_without_times(search), _results_without_times(reference))


def test_grid_search_cv_results_multimetric_equal_single_metric_runs(SearchCV):
    X_, y_ = make_classification(n_samples=50, n_features=4, random_state=42)
    params = SVC_GRIDS
    scorings = (
        {"accuracy": make_scorer(accuracy_score), "recall": make_scorer(recall_score)},
        "accuracy", "recall",
    )
    multi, acc, rec = (
        SearchCV(SVC(), cv=3, param_grid=params, scoring=s, refit=False).fit(X_, y_)
        for s in scorings
    )
    assert multi.multimetric_ and sorted(multi.scorer_) == ["accuracy", "recall"]
    combined = {}
    for search, name in ((acc, "_accuracy"), (rec, "_recall")):
        combined.update(
            {re.sub("_score$", name, k): v for k, v in _results_without_times(search).items()}
        )
    np.testing.assert_equal(_results_without_times(multi), combined)


def test_random_search_cv_results_multimetric_with_refit(RandomSearchCV):
    X_, y_ = make_classification(n_samples=50, n_features=4, random_state=42)
    params = {"C": np.logspace(-4, 1, 3)}
    kwargs = {"n_iter": 3, "cv": 3, "param_distributions": params, "random_state": 0}
    clf = LogisticRegression(random_state=42)
    multi = RandomSearchCV(clf, scoring=("accuracy", "recall"), refit="accuracy", **kwargs)
    acc = RandomSearchCV(clf, scoring="accuracy", refit=True, **kwargs)
    multi.fit(X_, y_)
    acc.fit(X_, y_)
    X_blobs, y_blobs = make_blobs(n_samples=100, n_features=4, random_state=42)
    for method in ("predict", "predict_proba", "predict_log_proba"):
        np.testing.assert_almost_equal(
            getattr(multi, method)(X_blobs), getattr(acc, method)(X_blobs)
        )
    assert multi.score(X_blobs, y_blobs) == acc.score(X_blobs, y_blobs)
    for key in ("best_index_", "best_score_", "best_params_"):
        assert getattr(multi, key) == getattr(acc, key)


def test_search_cv_results_rank_tie_breaking(SearchCV, RandomSearchCV):
    X_, y_ = make_blobs(n_samples=50, random_state=42)
    param_grid = {"C": [1, 1.001, 0.001]}
    for search in (
        SearchCV(SVC(), param_grid=param_grid, return_train_score=True),
        RandomSearchCV(SVC(), n_iter=3, param_distributions=param_grid, return_train_score=True),
    ):
        results = search.fit(X_, y_).cv_results_
        np.testing.assert_almost_equal(results["mean_test_score"][0], results["mean_test_score"][1])
        assert not np.allclose(results["mean_test_score"][1], results["mean_test_score"][2])
        np.testing.assert_almost_equal(results["rank_test_score"], [1, 1, 3])


def test_search_cv_results_none_param(SearchCV):
    from sklearn.model_selection import KFold
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    X_, y_ = [[1], [2], [3], [4], [5]], [0, 0, 0, 0, 1]
    for est in (DecisionTreeRegressor(), DecisionTreeClassifier()):
        search = SearchCV(est, {"random_state": [0, None]}, cv=KFold()).fit(X_, y_)
        np.testing.assert_array_equal(search.cv_results_["param_random_state"], [0, None])


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_grid_search_failing_classifier(SearchCV):
    X_, y_ = make_classification(n_samples=20, n_features=10, random_state=0)
    for error_score, shown in ((0.0, r"0\.0"), (float("nan"), "nan")):
        gs = SearchCV(
            SklearnFailingClassifier(), [{"parameter": [0, 1, 2]}], scoring="accuracy", refit=False,
            error_score=error_score,
        )
        message = re.compile(
            "5 fits failed.+total of 15.+The score on these train-test partitions for these"
            f" parameters will be set to {shown}.+5 fits failed with the following error.+"
            "ValueError.+Failing classifier failed as required",
            flags=re.DOTALL,
        )
        with pytest.warns(FitFailedWarning, match=message):
            gs.fit(X_, y_)
        failing = [gs.cv_results_[f"split{s}_test_score"][2] for s in range(gs.n_splits_)]
        np.testing.assert_array_equal(failing, [error_score] * 5)
    ranks = gs.cv_results_["rank_test_score"]
    assert ranks[0] <= 2 and ranks[1] <= 2 and ranks[2] == 3 and gs.best_index_ != 2


def test_grid_search_classifier_all_fits_fail(SearchCV):
    X_, y_ = make_classification(n_samples=20, n_features=10, random_state=0)
    gs = SearchCV(SklearnFailingClassifier(), [{"parameter": [2] * 3}], error_score=0.0)
    message = re.compile(
        "All the 15 fits failed.+15 fits failed with the following error.+ValueError.+"
        "Failing classifier failed as required",
        flags=re.DOTALL,
    )
    with pytest.raises(ValueError, match=message):
        gs.fit(X_, y_)


def test_grid_search_failing_classifier_raise(SearchCV):
    X_, y_ = make_classification(n_samples=20, n_features=10, random_state=0)
    gs = SearchCV(
        SklearnFailingClassifier(), [{"parameter": [0, 1, 2]}], scoring="accuracy", refit=False,
        error_score="raise",
    )
    with pytest.raises(ValueError, match="Failing classifier failed as required"):
        gs.fit(X_, y_)


def test_callable_multimetric_scorers(SearchCV):
    X_, y_ = make_classification(n_samples=40, n_features=4, random_state=42)
    clf = SearchCV(
        LinearSVC(random_state=42), {"C": [0.1, 1]},
        scoring=lambda est, X, y: {"bad_name": 1}, refit="good_name",
    )
    with pytest.raises(ValueError, match="For multi-metric scoring, the parameter refit"):
        clf.fit(X_, y_)
    X_, y_ = make_classification(n_samples=20, n_features=10, random_state=0)
    gs = SearchCV(
        SklearnFailingClassifier(), [{"parameter": [0, 1, 2]}], refit=False, error_score=0.1,
        scoring=lambda est, X, y: {"acc": 1},
    )
    with pytest.warns(FitFailedWarning, match="(?s)5 fits failed.+will be set to 0\\.1"):
        gs.fit(X_, y_)
    np.testing.assert_allclose(gs.cv_results_["mean_test_acc"], [1, 1, 0.1])


def test_fit_params_reach_the_estimator(SearchCV, RandomSearchCV):
    X_ = np.arange(100).reshape(10, 10)
    y_ = np.array([0] * 5 + [1] * 5)
    for search_cv in (SearchCV, partial(RandomSearchCV, n_iter=3)):
        clf = CheckingClassifier(expected_fit_params=["spam", "eggs"])
        searcher = search_cv(clf, {"foo_param": [1, 2, 3]}, cv=2, error_score="raise")
        missing = r"Expected fit parameter\(s\) \['eggs'\] not seen."
        with pytest.raises(AssertionError, match=missing):
            searcher.fit(X_, y_, spam=np.ones(10))
        with pytest.raises(AssertionError, match="Fit parameter spam has length 1; expected"):
            searcher.fit(X_, y_, spam=np.ones(1), eggs=np.zeros(10))
        searcher.fit(X_, y_, spam=np.ones(10), eggs=np.zeros(10))


def test_grid_search_precomputed_kernel(SearchCV):
    X_, y_ = make_classification(n_samples=200, n_features=100, random_state=0)
    K_train, y_train = np.dot(X_[:180], X_[:180].T), y_[:180]
    cv = SearchCV(SVC(kernel="precomputed"), {"C": [0.1, 1.0]}).fit(K_train, y_train)
    reference = GridSearchCV(SVC(kernel="precomputed"), {"C": [0.1, 1.0]}).fit(K_train, y_train)
    np.testing.assert_equal(_results_without_times(cv), _results_without_times(reference))
    K_test = np.dot(X_[180:], X_[:180].T)
    np.testing.assert_array_equal(cv.predict(K_test), reference.predict(K_test))
    with pytest.raises(ValueError):
        cv.fit(K_train.tolist(), y_train)


def test_unsupervised_grid_search(SearchCV):
    X_, y_ = make_blobs(n_samples=50, random_state=0)
    km = KMeans(random_state=0, init="random", n_init=1)
    scoring = ["adjusted_rand_score", "fowlkes_mallows_score"]
    for refit in scoring:
        search = SearchCV(km, param_grid={"n_clusters": [2, 3, 4]}, scoring=scoring, refit=refit)
        assert search.fit(X_, y_).best_params_["n_clusters"] == 3
    search = SearchCV(km, param_grid={"n_clusters": [2, 3, 4]}).fit(X_)
    assert search.best_params_["n_clusters"] == 4


def test_a_scorer_returning_no_number_stops_the_search(SearchCV):
    X_, y_ = make_classification(n_samples=40, n_features=4, random_state=0)
    search = SearchCV(LinearSVC(), {"C": [0.1, 1]}, scoring=lambda est, X, y: "good", cv=2)
    with pytest.raises(ValueError, match="scoring must return a number"):
        search.fit(X_, y_)
