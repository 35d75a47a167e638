"""The seeds' other distributed patterns (a forest grown in pieces, linear models
averaged over data partitions), the validation curve, host memory, and the
registry a front end dispatches payload kinds through."""

from __future__ import annotations

import numpy as np
import psutil
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split, validation_curve
from sklearn.svm import SVC

import payload
from payload import (
    host_memory,
    merge_forests,
    sgd_average_distributed,
    train_forest_distributed,
    validation_curve_distributed,
)
from payload import sgd as sgd_module
from payload import ship as ship_module

pytest_plugins = ["payload_fixtures"]  # rc (node-venv engines), digits, cv_pairs, dense_paths

X, Y = make_classification(n_samples=600, n_features=12, n_informative=6, random_state=0)


def test_merged_forest_predicts_as_the_same_sub_forests_merged_locally(rc, tmp_path):
    forest = RandomForestClassifier(n_estimators=60, min_samples_leaf=2)
    result = train_forest_distributed(
        rc, forest, X, Y, n_tasks=3, random_state=5, data_dir=tmp_path
    )
    model = result.model
    assert result.trees_per_task == [20, 20, 20] and len(set(result.seeds)) == 3
    assert model.n_estimators == len(model.estimators_) == 60
    assert model.get_params()["min_samples_leaf"] == 2
    local = merge_forests([
        clone(forest).set_params(n_estimators=n, random_state=seed).fit(X, Y)
        for n, seed in zip(result.trees_per_task, result.seeds, strict=True)
    ])
    np.testing.assert_array_equal(model.predict_proba(X), local.predict_proba(X))
    # Its out-of-bag score is within noise of one forest of 60 trees grown here.
    single = RandomForestClassifier(
        n_estimators=60, min_samples_leaf=2, oob_score=True, random_state=1
    ).fit(X, Y)
    assert result.score_kind == "oob" and abs(result.score - single.oob_score_) < 0.04


def test_merged_out_of_bag_estimate_is_sklearns_for_the_same_trees(rc, tmp_path):
    # One task: the merged OOB sums must give exactly sklearn's own oob_score_.
    forest = RandomForestClassifier(n_estimators=25)
    result = train_forest_distributed(
        rc, forest, X, Y, n_tasks=1, random_state=2, data_dir=tmp_path
    )
    same = RandomForestClassifier(n_estimators=25, oob_score=True, random_state=result.seeds[0])
    assert result.score == same.fit(X, Y).oob_score_
    Xr, yr = make_regression(n_samples=300, n_features=6, noise=5.0, random_state=0)
    regressor = RandomForestRegressor(n_estimators=20)
    result = train_forest_distributed(
        rc, regressor, Xr, yr, n_tasks=1, random_state=3, data_dir=tmp_path
    )
    same = RandomForestRegressor(n_estimators=20, oob_score=True, random_state=result.seeds[0])
    assert result.score == pytest.approx(same.fit(Xr, yr).oob_score_, rel=1e-12)


def test_forest_with_a_held_out_split(rc, tmp_path):
    forest = RandomForestClassifier(n_estimators=40, bootstrap=False)
    with pytest.raises(ValueError, match="bootstrap=True; pass test_size"):
        train_forest_distributed(rc, forest, X, Y, data_dir=tmp_path)
    result = train_forest_distributed(
        rc, forest, X, Y, test_size=0.25, random_state=0, data_dir=tmp_path
    )
    assert result.score_kind == "held-out" and result.trees_per_task == [20, 20]
    X_train, X_test, y_train, y_test = train_test_split(
        X, Y, test_size=0.25, random_state=result.seeds[0], stratify=Y
    )
    here = clone(forest).set_params(random_state=0).fit(X_train, y_train).score(X_test, y_test)
    assert abs(result.score - here) < 0.05


def test_averaged_sgd_is_within_one_percent_of_one_model_on_all_rows(rc, tmp_path):
    Xs, ys = make_classification(
        n_samples=20_000, n_features=20, n_informative=10, n_clusters_per_class=1, random_state=0
    )
    sgd = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
    result = sgd_average_distributed(
        rc, sgd, Xs, ys, n_shards=4, random_state=0, data_dir=tmp_path
    )
    np.testing.assert_array_equal(
        result.model.coef_, np.mean([m.coef_ for m in result.shard_models], axis=0)
    )
    X_train, X_test, y_train, y_test = train_test_split(
        Xs, ys, test_size=0.2, random_state=0, stratify=ys
    )
    everything = clone(sgd).fit(X_train, y_train).score(X_test, y_test)
    assert result.reference_score == everything
    assert abs(result.score - everything) <= 0.01, (result.score, everything)
    assert sum(result.shard_sizes) == len(y_train) and len(result.shard_sizes) == 4


def test_each_host_receives_only_its_own_shards(rc, tmp_path, monkeypatch):
    two_hosts = {"a": [0], "b": [1]}  # each engine pretends to be a host of its own
    monkeypatch.setattr(sgd_module, "engines_by_host", lambda client: two_hosts)
    monkeypatch.setattr(ship_module, "engines_by_host", lambda client: two_hosts)
    sgd = SGDClassifier(random_state=0)
    result = sgd_average_distributed(rc, sgd, X, Y, random_state=0, data_dir=tmp_path)
    assert result.engines == [0, 1]
    directory = tmp_path / result.shipment.directory.rsplit("/", 1)[1]
    sizes = {p.name: p.stat().st_size for p in directory.iterdir()}
    assert result.shipment.bytes_per_host == {
        "a": sizes["shard_000.joblib"], "b": sizes["shard_001.joblib"]
    }


def test_validation_curve_equals_sklearn(rc, digits, cv_pairs, dense_paths):
    X_, y_ = digits
    gammas = [1e-4, 1e-3, 1e-2]
    got = validation_curve_distributed(rc, SVC(), dense_paths, "gamma", gammas)
    train, test = validation_curve(SVC(), X_, y_, param_name="gamma", param_range=gammas,
                                   cv=cv_pairs)
    np.testing.assert_array_equal(got["train_scores"], train)
    np.testing.assert_array_equal(got["test_scores"], test)
    assert got["param_range"] == gammas and got["fit_times"].shape == (3, 3)


def test_host_memory_reports_each_host_and_its_engines(rc):
    hosts = host_memory(rc)
    assert list(hosts) == [__import__("socket").gethostname()]
    (host,) = hosts.values()
    assert host.engines == tuple(sorted(rc.ids))
    assert host.total == psutil.virtual_memory().total
    assert 0 < host.available <= host.total and host.engines_rss > 0
    assert host.available_per_engine == host.available // 2


def test_registry_dispatches_every_kind_by_name_and_checks_options(rc, dense_paths):
    assert set(payload.kinds()) == {
        "gridsearch", "learning-curve", "validation-curve", "forest", "sgd-average"
    }
    assert "train_sizes" in payload.kind("learning-curve").options
    search = payload.kind("gridsearch")(
        rc, estimator=SVC(), param_grid={"C": [1.0]}, split_paths=dense_paths[:1]
    )
    assert search.progress == (1, 1)
    with pytest.raises(ValueError, match="payload 'forest' has no option trees; it takes: "):
        payload.kind("forest")(
            rc, estimator=RandomForestClassifier(), split_paths=dense_paths, trees=3
        )
    with pytest.raises(ValueError, match="payload 'validation-curve' needs param_name"):
        payload.kind("validation-curve")(rc, estimator=SVC(), split_paths=dense_paths)
    with pytest.raises(ValueError, match="unknown payload kind 'nope'; known: forest, "):
        payload.kind("nope")
