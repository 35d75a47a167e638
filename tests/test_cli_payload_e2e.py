"""put-data's splitter families and every `run` kind as a user runs them: the
installed ``provision`` console script in a plain subprocess, on a two-node
simulated cluster (one engine per host) shared by the module.

Each result is checked against scikit-learn on the same data, computed here
independently: the split files against the splitter's own indices, searches and
curves against GridSearchCV / learning_curve / validation_curve, the merged
forest against the same sub-forests merged locally, the averaged SGD against
one model on all rows. Hosts are looked at only through provision's commands.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import sim_cluster_env
from sklearn import model_selection as ms
from sklearn.datasets import load_digits, load_iris, make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.svm import SVC

from payload import merge_forests
from provision import lifecycle, state
from provision.config import load_config

pytestmark = pytest.mark.e2e
NAME = "clipayload"
WORDS = {0: "rain storm cold wind grey flood", 1: "sun warm bright clear beach dry"}
PIPELINE = '''
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer


def squash(texts):  # defined here, not on the nodes: it must travel by value
    return [t.lower().replace("!", "") for t in texts]


def make_pipeline():
    return Pipeline([("clean", FunctionTransformer(squash)), ("tfidf", TfidfVectorizer()),
                     ("clf", LogisticRegression())])
'''


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`provision ARGS` from the console script, as a user's shell runs it."""
    exe = Path(sys.executable).parent / "provision"
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ), cwd=cwd)
    assert done.returncode == 0, f"provision {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def files(sim_region, tmp_path_factory):
    """The module's cluster (up) and the data files a user would have."""
    root = tmp_path_factory.mktemp("cli-payload")
    with sim_cluster_env(root, NAME, 2) as env:
        lifecycle.up(load_config(env["config"]))
        rng = np.random.RandomState(0)
        Xg, yg = make_classification(n_samples=240, n_features=6, random_state=0)
        np.savez(root / "groups.npz", X=Xg, y=yg, subject=np.repeat(np.arange(24), 10))
        Xm, ym = make_regression(n_samples=160, n_features=5, n_targets=2, noise=5.0,
                                 random_state=0)
        np.savez(root / "multi.npz", X=Xm, y=ym)
        labels = rng.randint(0, 2, 120)
        texts = [" ".join(rng.choice((WORDS[c] + " " + WORDS[1 - c]).split(), 6,
                                     p=[0.15] * 6 + [1 / 60] * 6)) + "!" for c in labels]
        lines = ["text,label", *(f"{t},{c}" for t, c in zip(texts, labels))]
        (root / "reviews.csv").write_text("\n".join(lines) + "\n")
        Xs, ys = make_classification(n_samples=20_000, n_features=20, n_informative=10,
                                     n_clusters_per_class=1, random_state=0)
        np.savez(root / "rows.npz", X=Xs, y=ys)
        (root / "pipeline.py").write_text(PIPELINE)
        yield root


def _split_files(label: str) -> list[tuple]:
    entry = state.load(NAME)["datasets"][label]
    return [joblib.load(Path(entry["local_dir"]) / f) for f in entry["files"]]


IRIS = load_iris(return_X_y=True)
FAMILIES = {
    # family: (put-data arguments, data loader, the splitter scikit-learn would use, groups)
    "kfold": (["iris", "--cv", "stratified-kfold", "--n-splits", "3", "--label", "iris-k"],
              lambda root: IRIS, ms.StratifiedKFold(3, shuffle=True, random_state=42), None),
    "group": (["{root}/groups.npz", "--cv", "group-kfold", "--groups", "subject", "--n-splits",
               "3"], lambda root: _npz(root / "groups.npz"),
              ms.GroupKFold(3, shuffle=True, random_state=42), "subject"),
    "time-series": (["{root}/multi.npz", "--cv", "time-series", "--n-splits", "3",
                     "--test-size", "30"], lambda root: _npz(root / "multi.npz"),
                    ms.TimeSeriesSplit(3, test_size=30), None),
    "repeated": (["iris", "--cv", "repeated-stratified-kfold", "--n-splits", "2",
                  "--n-repeats", "2", "--seed", "5", "--label", "iris-r"], lambda root: IRIS,
                 ms.RepeatedStratifiedKFold(n_splits=2, n_repeats=2, random_state=5), None),
    "shuffle": (["iris", "--cv", "stratified-shuffle", "--n-splits", "2", "--test-size", "0.3",
                 "--label", "iris-s"], lambda root: IRIS,
                ms.StratifiedShuffleSplit(2, test_size=0.3, random_state=42), None),
    "text": (["{root}/reviews.csv", "--cv", "kfold", "--n-splits", "3"],
             lambda root: _csv(root / "reviews.csv"), ms.KFold(3, shuffle=True, random_state=42),
             None),
}


def _npz(path: Path) -> tuple:
    with np.load(path) as f:
        return tuple(f[k] for k in f.files)


def _csv(path: Path) -> tuple:
    rows = [line.rsplit(",", 1) for line in path.read_text().splitlines()[1:]]
    return np.array([t for t, _ in rows]), np.array([float(c) for _, c in rows])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_put_data_splits_as_sklearn_and_lands_on_both_hosts(files, family):
    args, load, splitter, group_key = FAMILIES[family]
    done = cli("put-data", NAME, *(a.format(root=files) for a in args))
    assert "on 2 host(s)" in done.stdout, done.stdout
    arrays = load(files)
    X, y = arrays[:2]
    groups = arrays[2] if group_key else None
    expected = list(splitter.split(X, y, groups))
    got = _split_files(done.stdout.split(":", 1)[0])
    assert len(got) == len(expected)
    for (X_train, y_train, X_test, y_test), (train, test) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(X_train, X[train])
        np.testing.assert_array_equal(y_train, y[train])
        np.testing.assert_array_equal(X_test, X[test])
        np.testing.assert_array_equal(y_test, y[test])


def test_gridsearch_over_group_kfold_from_the_cli_equals_sklearn(files, tmp_path):
    cli("run", NAME, "gridsearch", "--data", "groups", "--model",
        "sklearn.linear_model.LogisticRegression", "--param", "C=[0.01,1.0,100.0]",
        "--out", str(tmp_path))
    X, y, subject = _npz(files / "groups.npz")
    cv = ms.GroupKFold(3, shuffle=True, random_state=42)
    ref = ms.GridSearchCV(LogisticRegression(), {"C": [0.01, 1.0, 100.0]}, cv=cv,
                          return_train_score=True).fit(X, y, groups=subject)
    ours = json.loads((tmp_path / "cv_results.json").read_text())
    for key in ("mean_test_score", "split0_test_score", "split2_train_score", "rank_test_score"):
        np.testing.assert_array_equal(ours[key], ref.cv_results_[key], err_msg=key)


def test_a_text_pipeline_from_a_python_file_searches_nested_parameters(files, tmp_path):
    done = cli("run", NAME, "gridsearch", "--data", "reviews", "--model",
               "pipeline.py:make_pipeline", "--param", "clf__C=logspace(-1,1,3)",
               "--param", "tfidf__ngram_range=[(1,1),(1,2)]", "--set",
               "tfidf__sublinear_tf=True", "--out", str(tmp_path), cwd=files)
    assert done.stdout.startswith("Rank 1: validation: "), done.stdout
    sys.path.insert(0, str(files))
    try:
        from pipeline import make_pipeline
    finally:
        sys.path.remove(str(files))
    X, y = _csv(files / "reviews.csv")
    ref = ms.GridSearchCV(make_pipeline().set_params(tfidf__sublinear_tf=True),
                          {"clf__C": list(np.logspace(-1, 1, 3)),
                           "tfidf__ngram_range": [(1, 1), (1, 2)]},
                          cv=ms.KFold(3, shuffle=True, random_state=42)).fit(X, y)
    ours = json.loads((tmp_path / "cv_results.json").read_text())
    np.testing.assert_array_equal(ours["mean_test_score"], ref.cv_results_["mean_test_score"])
    assert ref.best_score_ > 0.8  # the words do separate the classes
    assert (tmp_path / "heatmap.png").stat().st_size > 1000


def test_multi_output_y_over_time_series_splits_equals_sklearn(files, tmp_path):
    cli("run", NAME, "gridsearch", "--data", "multi", "--model", "sklearn.linear_model.Ridge",
        "--param", "alpha=[0.1,100.0]", "--out", str(tmp_path))
    X, y = _npz(files / "multi.npz")
    ref = ms.GridSearchCV(Ridge(), {"alpha": [0.1, 100.0]},
                          cv=ms.TimeSeriesSplit(3, test_size=30)).fit(X, y)
    ours = json.loads((tmp_path / "cv_results.json").read_text())
    np.testing.assert_array_equal(ours["mean_test_score"], ref.cv_results_["mean_test_score"])


def test_learning_and_validation_curves_from_the_cli_equal_sklearn(files, tmp_path):
    X, y = IRIS
    cv = list(ms.StratifiedKFold(3, shuffle=True, random_state=42).split(X, y))
    done = cli("run", NAME, "learning-curve", "--data", "iris-k", "--train-sizes", "[0.5,1.0]",
               "--set", "gamma=0.1", "--out", str(tmp_path / "lc"))
    assert done.stdout.count("samples: train") == 2, done.stdout
    sizes, _, test = ms.learning_curve(SVC(gamma=0.1), X, y, cv=cv, train_sizes=[0.5, 1.0])
    ours = json.loads((tmp_path / "lc" / "learning_curve.json").read_text())
    assert ours["train_sizes_abs"] == sizes.tolist()
    np.testing.assert_array_equal(ours["test_scores"], test)
    cli("run", NAME, "validation-curve", "--data", "iris-k", "--param", "C=[0.01,1.0]",
        "--out", str(tmp_path / "vc"))
    _, test = ms.validation_curve(SVC(), X, y, param_name="C", param_range=[0.01, 1.0], cv=cv)
    ours = json.loads((tmp_path / "vc" / "validation_curve.json").read_text())
    np.testing.assert_array_equal(ours["test_scores"], test)


def test_forest_from_the_cli_predicts_as_its_sub_forests_merged_locally(files, tmp_path):
    done = cli("run", NAME, "forest", "--data", "iris-k", "--n-estimators", "40", "--seed", "3",
               "--out", str(tmp_path / "model.pkl"))
    with open(tmp_path / "model.pkl", "rb") as f:
        model = pickle.load(f)
    info = json.loads((tmp_path / "model.pkl.json").read_text())
    assert len(model.estimators_) == 40 and info["trees_per_task"] == [20, 20]
    X, y = IRIS
    train, test = next(ms.StratifiedKFold(3, shuffle=True, random_state=42).split(X, y))
    local = merge_forests([
        RandomForestClassifier(n_estimators=n, random_state=seed).fit(X[train], y[train])
        for n, seed in zip(info["trees_per_task"], info["seeds"], strict=True)
    ])
    np.testing.assert_array_equal(model.predict_proba(X), local.predict_proba(X))
    assert info["scores"]["held-out"] == local.score(X[test], y[test])
    single = RandomForestClassifier(n_estimators=40, oob_score=True, random_state=0)
    assert abs(info["scores"]["out-of-bag"] - single.fit(X[train], y[train]).oob_score_) < 0.08
    assert "out-of-bag accuracy" in done.stdout and "held-out accuracy" in done.stdout


def test_sgd_average_on_rows_partitioned_across_hosts_is_within_one_percent(files, tmp_path):
    done = cli("put-data", NAME, str(files / "rows.npz"), "--partition", "--seed", "0")
    assert "each host its own shard (master shard_000.joblib, node001 shard_001.joblib)" \
        in done.stdout, done.stdout
    cli("run", NAME, "sgd-average", "--data", "rows", "--set", "loss='log_loss'",
        "--set", "alpha=1e-4", "--set", "random_state=0", "--out", str(tmp_path / "avg.pkl"))
    info = json.loads((tmp_path / "avg.pkl.json").read_text())
    assert len(set(info["engines"])) == 2 and sum(info["shard_sizes"]) == 16_000
    assert info["test_size"] == 4_000
    assert abs(info["score"] - info["reference_score"]) <= 0.01, info


def test_each_host_holds_every_split_and_only_its_own_shard(files):
    """What put-data left on the hosts, listed through `provision ssh`: every split
    file of every dataset on both hosts; of the partition, each host's shard only."""
    datasets = state.load(NAME)["datasets"]
    for node, shard in (("master", "shard_000.joblib"), ("node001", "shard_001.joblib")):
        dirs = sorted(d["remote_dir"] for d in datasets.values())
        listing = cli("ssh", NAME, node, "ls", *dirs).stdout
        held = {block.split(":", 1)[0].strip(): set(block.split(":", 1)[1].split())
                for block in listing.strip().split("\n\n")}
        for label, entry in datasets.items():
            if entry["layout"] == "partition":
                assert held[entry["remote_dir"]] == {shard, "test.joblib"}, (node, held)
            else:
                assert set(entry["files"]) <= held[entry["remote_dir"]], (node, label)


def test_status_memory_shows_each_host_with_its_engine(files):
    memory = json.loads(cli("status", NAME, "--memory", "--json").stdout)["memory"]
    assert len(memory) == 2 and all(len(h["engines"]) == 1 for h in memory)
    assert all(0 < h["available_per_engine"] <= h["available"] <= h["total"] for h in memory)


def test_two_runs_with_different_journals_share_the_engines_and_both_finish(files, tmp_path):
    """Two terminals, two searches on one cluster, each with its own --out: started
    together, both are at the hub at once (each had submitted before either wrote
    its last result), and each ends with every pair, equal to GridSearchCV."""
    cli("put-data", NAME, "digits", "--cv", "kfold", "--n-splits", "3", "--label", "digits-k")
    gammas = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    # 45 fits each (~3 s of both engines): whichever submits first is still running when
    # the other, started at the same moment, submits (the hub serves tasks in order)
    grids = {"a": {"C": [0.1, 1.0, 10.0], "gamma": gammas},
             "b": {"C": [0.5, 5.0, 50.0], "gamma": gammas}}
    exe = Path(sys.executable).parent / "provision"
    runs = {k: subprocess.Popen(
        [str(exe), "run", NAME, "gridsearch", "--data", "digits-k", "--model", "sklearn.svm.SVC",
         *(a for n, v in grid.items() for a in ("--param", f"{n}={v!r}")),
         "--out", str(tmp_path / k)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) for k, grid in grids.items()}
    for k, proc in runs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"run {k}:\n{output}"
    journals = {k: tmp_path / k / "journal.jsonl" for k in runs}
    submitted = max(_session_time(j) for j in journals.values())
    ended = min(j.stat().st_mtime for j in journals.values())
    assert submitted < ended, (f"one search ended {submitted - ended:.2f} s before the other "
                               "submitted: they never shared the engines")
    X, y = load_digits(return_X_y=True)
    for k, grid in grids.items():
        ref = ms.GridSearchCV(SVC(), grid, cv=ms.KFold(3, shuffle=True, random_state=42),
                              n_jobs=2).fit(X, y)
        ours = json.loads((tmp_path / k / "cv_results.json").read_text())
        np.testing.assert_array_equal(ours["mean_test_score"], ref.cv_results_["mean_test_score"],
                                      err_msg=f"run {k}")


def _session_time(journal: Path) -> float:
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    return next(line["time"] for line in lines if line["type"] == "session")
