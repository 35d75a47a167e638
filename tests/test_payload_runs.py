"""The payload kinds a front end runs over data already on the hosts (``provision
run``): the forest grown from a put-data split file, linear models averaged over
partitions that stay where they lie, and what each kind prints and writes."""

from __future__ import annotations

import json
import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import SGDClassifier
from sklearn.svm import SVC

import payload
from payload import merge_forests, partition_rows, run_forest, run_sgd_average
from payload.forest import present_forest
from payload.gridsearch import present_search
from payload.sgd import present_average

pytest_plugins = ["payload_fixtures"]  # rc (node-venv engines), digits, cv_pairs, dense_paths


def test_forest_from_a_split_file_predicts_as_its_sub_forests_merged_locally(
    rc, digits, cv_pairs, dense_paths
):
    X, y = digits
    train, test = cv_pairs[0]
    forest = RandomForestClassifier(n_estimators=30, max_depth=8)
    result = run_forest(rc, forest, dense_paths, random_state=4)
    assert result.shipment is None and result.trees_per_task == [15, 15]
    local = merge_forests([
        clone(forest).set_params(n_estimators=n, random_state=seed).fit(X[train], y[train])
        for n, seed in zip(result.trees_per_task, result.seeds, strict=True)
    ])
    np.testing.assert_array_equal(result.model.predict_proba(X), local.predict_proba(X))
    assert result.held_out_score == local.score(X[test], y[test])
    assert result.score_kind == "oob" and 0.8 < result.score <= 1.0


def test_one_sub_forest_from_a_split_gives_sklearns_own_out_of_bag_score(
    rc, digits, cv_pairs, dense_paths
):
    X, y = digits
    train, _ = cv_pairs[0]
    result = run_forest(rc, RandomForestClassifier(n_estimators=25), dense_paths, n_tasks=1,
                        random_state=0)
    same = RandomForestClassifier(n_estimators=25, oob_score=True, random_state=result.seeds[0])
    assert result.score == same.fit(X[train], y[train]).oob_score_


def _partition(tmp_path, n_shards: int = 2):
    X, y = make_classification(n_samples=20_000, n_features=20, n_informative=10,
                               n_clusters_per_class=1, random_state=0)
    train, test, shards = partition_rows(y, n_shards, test_size=0.2, random_state=0,
                                         stratify=True)
    paths = []
    for i, part in enumerate(shards):
        paths.append(tmp_path / f"shard_{i:03d}.joblib")
        joblib.dump((X[train[part]], y[train[part]]), paths[-1])
    joblib.dump((X[test], y[test]), tmp_path / "test.joblib")
    return X, y, train, test, paths


def test_averaged_sgd_over_shards_on_the_hosts_is_within_one_percent_of_one_model(rc, tmp_path):
    X, y, train, test, paths = _partition(tmp_path)
    sgd = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
    result = run_sgd_average(rc, sgd, paths, tmp_path / "test.joblib",
                             reference_data=(X[train], y[train]))
    assert result.shipment is None and sorted(result.engines) == sorted(rc.ids)
    np.testing.assert_array_equal(
        result.model.coef_, np.mean([m.coef_ for m in result.shard_models], axis=0)
    )
    everything = clone(sgd).fit(X[train], y[train]).score(X[test], y[test])
    assert result.reference_score == everything and result.test_size == len(test)
    assert result.score == result.model.score(X[test], y[test])
    assert abs(result.score - everything) <= 0.01, (result.score, everything)
    assert sum(result.shard_sizes) == len(train)


def test_a_shard_no_host_holds_is_an_error_naming_it(rc, tmp_path):
    _, _, _, _, paths = _partition(tmp_path)
    gone = tmp_path / "shard_009.joblib"
    with pytest.raises(FileNotFoundError, match="shard_009.joblib is on no host"):
        run_sgd_average(rc, SGDClassifier(), [*paths, gone], tmp_path / "test.joblib")


def test_forest_and_average_are_pickled_where_asked_with_their_scores(tmp_path, digits):
    X, y = digits
    forest = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)
    result = payload.ForestResult(model=forest, score=0.9, score_kind="oob", seeds=[1, 2],
                                  trees_per_task=[2, 2], fit_seconds=[0.1, 0.2], shipment=None,
                                  held_out_score=0.8)
    lines = present_forest(result, tmp_path / "out" / "model.pkl")
    with open(tmp_path / "out" / "model.pkl", "rb") as f:
        np.testing.assert_array_equal(pickle.load(f).predict(X), forest.predict(X))
    info = json.loads((tmp_path / "out" / "model.pkl.json").read_text())
    assert info["seeds"] == [1, 2] and info["scores"] == {"out-of-bag": 0.9, "held-out": 0.8}
    assert "out-of-bag accuracy: 0.90000" in lines and "held-out accuracy: 0.80000" in lines
    sgd = SGDClassifier(random_state=0).fit(X, y)
    average = payload.AverageResult(
        model=sgd, score=0.95, reference_score=0.96, shard_models=[sgd, sgd],
        shard_scores=[0.93, 0.94], shard_sizes=[10, 11], engines=[0, 1], shipment=None,
        test_size=5,
    )
    lines = present_average(average, tmp_path / "avg.pkl")
    assert "one model on all 21 training rows: 0.96000 (averaged -0.01000)" in lines
    assert json.loads((tmp_path / "avg.pkl.json").read_text())["reference_score"] == 0.96


def test_search_presenter_reports_and_writes_cv_results(rc, dense_paths, tmp_path):
    search = payload.kind("gridsearch")(
        rc, estimator=SVC(), param_grid={"C": [1.0, 10.0]}, split_paths=dense_paths
    )
    lines = present_search(search, tmp_path, top=1)
    assert lines[0].startswith("Rank 1: validation: ") and "\n" not in lines[0]
    saved = json.loads((tmp_path / "cv_results.json").read_text())
    np.testing.assert_array_equal(saved["mean_test_score"], search.cv_results_["mean_test_score"])
    header = (tmp_path / "cv_results.csv").read_text().splitlines()[0]
    assert "mean_test_score" in header and "params" not in header.split(",")
    assert (tmp_path / "boxplots.png").stat().st_size > 1000


def test_every_kind_takes_data_on_the_hosts_and_says_how_to_show_its_result():
    kinds = payload.kinds()
    assert {"split_paths"} <= set(kinds["forest"].options)
    assert {"shard_paths", "test_path", "reference_data"} <= set(kinds["sgd-average"].options)
    for kind in kinds.values():
        assert kind.present is not None and kind.models is not None, kind.name
        assert not {"X", "y"} & set(kind.options), kind.name
    assert list(kinds["gridsearch"].present_options) == ["top"]
    assert kinds["forest"].output == kinds["sgd-average"].output == "file"


def test_a_heatmap_takes_tuple_valued_parameters_such_as_ngram_range(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from payload import plot_heatmap

    X = np.array(["aa bb cc", "bb cc dd", "cc dd ee", "dd ee ff", "aa aa bb", "ff ff ee"] * 5)
    y = np.array([0, 0, 1, 1, 0, 1] * 5)
    pipe = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())])
    grid = {"clf__C": [0.1, 1.0], "tfidf__ngram_range": [(1, 1), (1, 2)]}
    results = GridSearchCV(pipe, grid, cv=3).fit(X, y).cv_results_
    path = plot_heatmap(results, tmp_path / "h.png", x="tfidf__ngram_range", y="clf__C")
    assert path.stat().st_size > 1000
