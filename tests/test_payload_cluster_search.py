"""ClusterGridSearchCV / ClusterRandomizedSearchCV against scikit-learn's own
searches on the same data: every ``cv_results_`` key but the times equal, the
same best candidate and refit, and the estimator API (clone, pipelines, pickling)."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from payload import ClusterGridSearchCV, ClusterRandomizedSearchCV
from payload import ship as ship_module

pytest_plugins = ["payload_fixtures"]  # rc: the node-venv engines

GRID = {"C": [0.1, 1.0, 10.0], "gamma": [0.01, 0.1]}
X, Y = make_classification(n_samples=150, n_features=6, n_informative=4, random_state=0)
GROUPS = np.arange(len(Y)) % 7


def assert_same_search(got, expected) -> None:
    """Equal cv_results_ on every key but the times, and the same selection and refit."""
    keys = [k for k in expected.cv_results_ if not k.endswith("_time")]
    assert [k for k in got.cv_results_ if not k.endswith("_time")] == keys
    np.testing.assert_equal(
        {k: got.cv_results_[k] for k in keys}, {k: expected.cv_results_[k] for k in keys}
    )
    for attr in ("best_index_", "best_params_", "best_score_", "n_splits_", "multimetric_"):
        assert getattr(got, attr) == getattr(expected, attr), attr
    if expected.refit:
        np.testing.assert_array_equal(got.predict(X), expected.predict(X))
        assert got.score(X, Y) == expected.score(X, Y)
        np.testing.assert_array_equal(got.classes_, expected.classes_)
        assert got.refit_time_ > 0


@pytest.mark.parametrize(
    "cv", [KFold(4, shuffle=True, random_state=0), StratifiedKFold(3), GroupKFold(3)],
    ids=["KFold", "StratifiedKFold", "GroupKFold"],
)
@pytest.mark.parametrize(
    ("scoring", "refit", "train"),
    [(None, True, False), (["accuracy", "f1_macro"], "f1_macro", True)],
    ids=["single-metric", "multi-metric"],
)
def test_cv_results_equal_grid_search_cv(rc, tmp_path, cv, scoring, refit, train):
    kwargs = {"scoring": scoring, "refit": refit, "cv": cv, "return_train_score": train}
    groups = GROUPS if isinstance(cv, GroupKFold) else None
    expected = GridSearchCV(SVC(), GRID, **kwargs).fit(X, Y, groups=groups)
    got = ClusterGridSearchCV(SVC(), GRID, client=rc, data_dir=tmp_path, **kwargs)
    assert_same_search(got.fit(X, Y, groups=groups), expected)


def test_randomized_search_equals_randomized_search_cv(rc, tmp_path):
    distributions = {"C": loguniform(1e-2, 1e2), "gamma": [0.01, 0.1]}
    kwargs = {"n_iter": 5, "random_state": 3, "cv": 3, "scoring": {"acc": "accuracy"}}
    expected = RandomizedSearchCV(SVC(), distributions, refit="acc", **kwargs).fit(X, Y)
    got = ClusterRandomizedSearchCV(
        SVC(), distributions, refit="acc", client=rc, data_dir=tmp_path, **kwargs
    ).fit(X, Y)
    assert_same_search(got, expected)


def test_fit_params_and_sample_weight_reach_the_fits_and_scores(rc, tmp_path):
    weights = np.random.RandomState(0).uniform(0.2, 2.0, len(Y))
    expected = GridSearchCV(SVC(), GRID, scoring="accuracy", cv=3).fit(X, Y, sample_weight=weights)
    got = ClusterGridSearchCV(SVC(), GRID, scoring="accuracy", cv=3, client=rc, data_dir=tmp_path)
    assert_same_search(got.fit(X, Y, sample_weight=weights), expected)
    unweighted = GridSearchCV(SVC(), GRID, scoring="accuracy", cv=3).fit(X, Y)
    assert not np.array_equal(
        got.cv_results_["mean_test_score"], unweighted.cv_results_["mean_test_score"]
    )


def test_text_documents_through_a_pipeline(rc, tmp_path):
    words = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma"])
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 2, 60)
    docs = [" ".join(rng.choice(words[3 * c : 3 * c + 3], 5)) + " sigma" for c in labels]
    pipe = make_pipeline(TfidfVectorizer(), LinearSVC(random_state=0))
    grid = {"linearsvc__C": [0.01, 1.0]}
    expected = GridSearchCV(pipe, grid, cv=3).fit(docs, labels)
    got = ClusterGridSearchCV(pipe, grid, cv=3, client=rc, data_dir=tmp_path).fit(docs, labels)
    keys = [k for k in expected.cv_results_ if not k.endswith("_time")]
    np.testing.assert_equal(
        {k: got.cv_results_[k] for k in keys}, {k: expected.cv_results_[k] for k in keys}
    )
    assert list(got.predict(docs[:5])) == list(expected.predict(docs[:5]))


def test_refit_on_the_cluster_gives_the_same_best_estimator(rc, tmp_path):
    expected = GridSearchCV(SVC(), GRID, cv=3).fit(X, Y)
    got = ClusterGridSearchCV(SVC(), GRID, cv=3, client=rc, data_dir=tmp_path, refit_on="cluster")
    assert_same_search(got.fit(X, Y), expected)
    np.testing.assert_array_equal(
        got.best_estimator_.dual_coef_, expected.best_estimator_.dual_coef_
    )
    assert (Path(got.shipment_.directory) / "full.joblib").exists()


def test_splits_are_shipped_once_per_host_and_not_again(rc, tmp_path):
    search = ClusterGridSearchCV(SVC(), GRID, cv=3, client=rc, data_dir=tmp_path)
    first = search.fit(X, Y).shipment_
    assert first.hosts == {socket.gethostname(): sorted(rc.ids)}  # two engines, one host
    on_disk = sorted(Path(first.directory).iterdir())
    assert [p.name for p in on_disk] == ["split_000.joblib", "split_001.joblib", "split_002.joblib"]
    assert first.bytes_sent == first.bytes_per_host[socket.gethostname()]
    assert first.bytes_sent == sum(p.stat().st_size for p in on_disk)
    again = clone(search).fit(X, Y).shipment_
    assert again.directory == first.directory and again.bytes_sent == 0
    other = clone(search).fit(X + 1.0, Y).shipment_  # new content: a new directory
    assert other.directory != first.directory and other.bytes_sent > 0


def test_a_file_two_hosts_need_leaves_the_client_once_through_a_broadcast(
    rc, tmp_path, monkeypatch
):
    # Pretend each engine is a host of its own (they still share this disk).
    monkeypatch.setattr(ship_module, "engines_by_host", lambda client: {"a": [0], "b": [1]})
    views = []
    real = type(rc).broadcast_view

    def spy(self, *args, **kwargs):
        views.append(kwargs.get("targets"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(rc), "broadcast_view", spy)
    search = ClusterGridSearchCV(SVC(), {"C": [1.0]}, cv=2, client=rc, data_dir=tmp_path)
    shipment = search.fit(X, Y).shipment_
    assert views == [[0, 1], [0, 1]]  # one broadcast per split file, to both hosts
    assert shipment.bytes_per_host["a"] == shipment.bytes_per_host["b"] == shipment.bytes_sent


def test_default_data_dir_is_the_first_writable_on_every_host(rc, monkeypatch):
    from payload.hosts import engines_by_host

    hosts = engines_by_host(rc)
    monkeypatch.setattr(
        ship_module, "DEFAULT_DATA_DIRS", ("/proc/not-writable", "{tmp}/payload-test-{user}")
    )
    chosen = ship_module.resolve_data_dir(rc, hosts)
    assert chosen.endswith("payload-test-" + __import__("getpass").getuser())
    with pytest.raises(ValueError, match="data_dir: no directory among"):
        ship_module.resolve_data_dir(rc, hosts, "/proc/not-writable")


def test_clone_shares_the_client_and_nests_in_pipelines_and_cross_val_score(rc, tmp_path):
    search = ClusterGridSearchCV(SVC(), {"C": [0.1, 10.0]}, cv=3, client=rc, data_dir=tmp_path)
    copy = clone(search)
    assert copy.client is rc and copy.get_params()["param_grid"] == {"C": [0.1, 10.0]}
    assert copy.get_params()["param_grid"] is not search.param_grid
    ours = make_pipeline(StandardScaler(), search)
    theirs = make_pipeline(StandardScaler(), GridSearchCV(SVC(), {"C": [0.1, 10.0]}, cv=3))
    np.testing.assert_array_equal(
        cross_val_score(ours, X, Y, cv=3), cross_val_score(theirs, X, Y, cv=3)
    )


def test_a_fitted_search_pickles_without_its_client(rc, tmp_path):
    search = ClusterGridSearchCV(SVC(), {"C": [1.0]}, cv=3, client=rc, data_dir=tmp_path)
    search.fit(X, Y)
    restored = pickle.loads(pickle.dumps(search))
    assert restored.client is None and not hasattr(restored, "search_")
    np.testing.assert_array_equal(restored.predict(X), search.predict(X))
    assert search.client is rc  # the original keeps it


def test_verbose_prints_progress_and_the_best_so_far(rc, tmp_path, capsys):
    ClusterGridSearchCV(SVC(), GRID, cv=3, verbose=2, client=rc, data_dir=tmp_path).fit(X, Y)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Fitting 3 folds for each of 6 candidates, totalling 18 fits"
    assert out[-1].startswith("[CV] 18/18 fits; best so far score=")


def test_a_journaled_search_fits_again_without_computing(rc, tmp_path):
    journal = tmp_path / "journal.jsonl"
    kwargs = {"cv": 3, "client": rc, "data_dir": tmp_path, "journal": journal}
    first = ClusterGridSearchCV(SVC(), GRID, **kwargs).fit(X, Y)
    again = ClusterGridSearchCV(SVC(), GRID, **kwargs).fit(X, Y)
    assert (again.search_.n_skipped, again.search_.n_submitted) == (18, 0)
    assert_same_search(again, first)


def test_missing_client_is_a_clear_error():
    with pytest.raises(ValueError, match="pass client="):
        ClusterGridSearchCV(SVC(), GRID).fit(X, Y)
