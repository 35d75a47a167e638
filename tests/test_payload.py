"""The model-selection payload against a local two-engine ipyparallel cluster.

The engines run from a venv holding only the node packages (``payload_fixtures``),
as on a cluster node where neither ``payload`` nor ``provision`` is installed:
everything the engines run must arrive by value.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import ipyparallel as ipp
import joblib
import numpy as np
import pytest
import scipy.sparse as sp
from payload_estimators import FailingClassifier, SlowClassifier
from scipy.stats import loguniform, sem
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import (
    GridSearchCV,
    ParameterSampler,
    RandomizedSearchCV,
    ShuffleSplit,
    learning_curve,
)
from sklearn.svm import SVC, LinearSVC

from payload import (
    DistributedSearch,
    JournalMismatch,
    guided_batches,
    learning_curve_distributed,
    persist_cv_splits,
    plot_heatmap,
    plot_learning_curve,
    plot_param_boxplots,
    read_manifest,
    report_text,
    submission_order,
    verify_journal,
)
from payload.splits import file_sha256

pytest_plugins = ["payload_fixtures"]  # rc (node-venv engines), digits, cv_pairs, dense_paths


GRID = {"C": [1.0, 10.0], "gamma": [1e-3, 1e-4]}
LINE = re.compile(
    r"^Rank (\d+): validation: (\d\.\d{5}) \(\+/-(\d\.\d{5})\)"
    r" train: (\d\.\d{5}) \(\+/-(\d\.\d{5})\): (\{.*\})$"
)


@pytest.fixture(scope="module")
def svc_search(rc, dense_paths):
    return DistributedSearch(rc, SVC(), GRID, dense_paths).run(timeout=120)


@pytest.fixture(scope="module")
def svc_reference(digits, cv_pairs):
    X, y = digits
    return GridSearchCV(SVC(), GRID, cv=cv_pairs, return_train_score=True).fit(X, y)


def _engine_call(rc, func):
    return rc[:].apply_sync(ipp.interactive(func))


def test_guided_batches_shrink_to_single_pairs_in_submission_order():
    from payload.scheduling import AUTO_BATCH_MAX

    pairs = list(range(100))
    batches = guided_batches(pairs, n_engines=2)
    assert [p for b in batches for p in b] == pairs
    sizes = [len(b) for b in batches]
    assert sizes[0] == 100 // 8 and sizes == sorted(sizes, reverse=True) and sizes[-10:] == [1] * 10
    assert max(map(len, guided_batches(list(range(10_000)), 3))) == AUTO_BATCH_MAX
    assert list(map(len, guided_batches(pairs, 2, 1))) == [1] * 100
    assert list(map(len, guided_batches(pairs, 2, 30))) == [30, 30, 30, 10]
    with pytest.raises(ValueError, match="batch_size must be 'auto' or a positive integer"):
        view = object.__new__(ipp.LoadBalancedView)
        DistributedSearch(view, SVC(), {"C": [1]}, ["x"], batch_size=0)


def test_pairs_batched_into_tasks_give_the_same_results(rc, dense_paths, svc_search):
    # svc_search's 12 pairs on 2 engines went one per task ("auto" for so few)
    batched = DistributedSearch(rc, SVC(), GRID, dense_paths, batch_size=5).run(timeout=120)
    assert batched.n_submitted == 12 and len(batched._batches) == 3
    for key in ("mean_test_score", "mean_train_score", "rank_test_score"):
        np.testing.assert_array_equal(batched.cv_results_[key], svc_search.cv_results_[key])


def test_engines_cannot_import_payload(rc):
    def try_import():
        try:
            import payload  # noqa: F401
        except ImportError:
            return "missing"
        return "installed"

    assert _engine_call(rc, try_import) == ["missing", "missing"]


def test_splits_are_uncompressed_joblib_files_that_memory_map(digits, cv_pairs, dense_paths):
    X, y = digits
    assert [p.name for p in dense_paths] == [f"digits_00{i}.joblib" for i in range(3)]
    manifest = read_manifest(dense_paths[0].parent)
    assert manifest["datasets"]["digits"]["n_splits"] == 3
    for path, (train, test) in zip(dense_paths, cv_pairs):
        entry = manifest["files"][path.name]
        assert entry["sha256"] == file_sha256(path)
        assert entry["X_train_shape"] == [len(train), X.shape[1]]
        assert path.stat().st_size > X[train].nbytes + X[test].nbytes  # not compressed
        X_train, y_train, X_test, y_test = joblib.load(path, mmap_mode="r")
        assert isinstance(X_train, np.memmap) and isinstance(X_test, np.memmap)
        np.testing.assert_array_equal(X_train, X[train])
        np.testing.assert_array_equal(y_test, y[test])


def test_sparse_splits_round_trip_as_memory_mapped_csr(digits, cv_pairs, tmp_path):
    X, y = digits
    Xs = sp.csr_matrix(X)
    paths = persist_cv_splits(Xs, y, cv_pairs, tmp_path, name="sparse")
    X_train, y_train, X_test, y_test = joblib.load(paths[1], mmap_mode="r")
    train, test = cv_pairs[1]
    assert sp.issparse(X_train) and X_train.format == "csr"
    assert isinstance(X_train.data, np.memmap)
    assert (X_train != Xs[train]).nnz == 0 and (X_test != Xs[test]).nnz == 0
    assert read_manifest(tmp_path)["datasets"]["sparse"]["sparse"] is True


def test_persisting_fewer_splits_removes_stale_files(digits, tmp_path):
    X, y = digits
    persist_cv_splits(X, y, ShuffleSplit(3, random_state=0), tmp_path, name="d")
    paths = persist_cv_splits(X, y, ShuffleSplit(2, random_state=0), tmp_path, name="d")
    assert sorted(tmp_path.glob("d_*.joblib")) == paths
    assert set(read_manifest(tmp_path)["files"]) == {p.name for p in paths}


def test_search_matches_grid_search_cv(svc_search, svc_reference):
    expected = svc_reference.cv_results_
    got = svc_search.cv_results_
    assert set(expected) <= set(got)
    for key in ["mean_test_score", "std_test_score", "mean_train_score", "std_train_score"]:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, err_msg=key)
    for i in range(3):
        np.testing.assert_allclose(got[f"split{i}_test_score"], expected[f"split{i}_test_score"])
    np.testing.assert_array_equal(got["rank_test_score"], expected["rank_test_score"])
    np.testing.assert_array_equal(got["param_C"], expected["param_C"])
    assert got["params"] == expected["params"]
    assert svc_search.best_params_ == svc_reference.best_params_
    assert svc_search.best_index_ == svc_reference.best_index_
    assert svc_search.best_score_ == pytest.approx(svc_reference.best_score_, rel=1e-12)
    assert svc_search.n_submitted == 12 and svc_search.progress == (12, 12)
    assert len(svc_search.engines) == 2  # both engines took tasks, none was the client
    assert all(pid != os.getpid() for _, pid in svc_search.engines)


def test_sparse_search_matches_grid_search_cv(rc, digits, cv_pairs, tmp_path):
    X, y = digits
    Xs = sp.csr_matrix(X / 16.0)
    paths = persist_cv_splits(Xs, y, cv_pairs, tmp_path, name="sparse")
    grid = {"C": [0.1, 1.0]}
    estimator = LinearSVC(random_state=0)
    search = DistributedSearch(rc, estimator, grid, paths).run(timeout=120)
    reference = GridSearchCV(estimator, grid, cv=cv_pairs, return_train_score=True).fit(Xs, y)
    for key in ["mean_test_score", "mean_train_score"]:
        np.testing.assert_allclose(
            search.cv_results_[key], reference.cv_results_[key], rtol=1e-12, err_msg=key
        )
    assert search.best_params_ == reference.best_params_


def test_randomized_search_samples_n_iter_candidates(rc, digits, cv_pairs, dense_paths):
    X, y = digits
    distributions = {"C": loguniform(1e-1, 1e2), "gamma": [1e-3, 1e-4]}
    search = DistributedSearch(rc, SVC(), distributions, dense_paths, n_iter=3, random_state=0)
    search.run(timeout=120)
    assert search.candidates == list(ParameterSampler(distributions, 3, random_state=0))
    reference = RandomizedSearchCV(SVC(), distributions, n_iter=3, random_state=0, cv=cv_pairs)
    reference.fit(X, y)
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"], rtol=1e-12
    )
    assert search.best_params_ == reference.best_params_


NON_FINITE = pytest.mark.filterwarnings("ignore:One or more of the .* scores are non-finite")


@NON_FINITE
def test_failing_candidate_is_recorded_with_error_score_and_warned(rc, dense_paths):
    search = DistributedSearch(rc, FailingClassifier(), {"parameter": [0, 1, 2]}, dense_paths)
    with pytest.warns(FitFailedWarning, match=r"3 fits failed out of a total of 9"):
        search.run(timeout=120)
    results = search.cv_results_
    failing = results["params"].index({"parameter": FailingClassifier.FAILING_PARAMETER})
    assert np.isnan(results["mean_test_score"][failing])
    assert results["rank_test_score"][failing] == 3
    assert np.isfinite(np.delete(results["mean_test_score"], failing)).all()
    assert sorted(search.fit_errors) == [(failing, s) for s in range(3)]
    assert all("Failing classifier failed as required" in e for e in search.fit_errors.values())


@NON_FINITE
def test_all_failed_fits_raise_grouped_errors(rc, dense_paths):
    search = DistributedSearch(rc, FailingClassifier(), {"parameter": [2]}, dense_paths)
    with pytest.raises(ValueError, match="All the 3 fits failed") as info:
        search.run(timeout=120)
    assert "3 fits failed with the following error" in str(info.value)
    assert "Failing classifier failed as required" in str(info.value)


def test_error_score_raise_stops_the_search(rc, dense_paths):
    search = DistributedSearch(
        rc, FailingClassifier(), {"parameter": [2]}, dense_paths, error_score="raise"
    )
    with pytest.raises(ValueError, match="Failing classifier failed as required"):
        search.run(timeout=120)


@NON_FINITE
def test_task_that_raises_is_retried_then_recorded_but_not_journaled(rc, dense_paths, tmp_path):
    paths = [dense_paths[0], tmp_path / "missing.joblib"]
    journal = tmp_path / "journal.jsonl"
    search = DistributedSearch(
        rc, FailingClassifier(), {"parameter": [0]}, paths, retries=1, journal=journal
    )
    with pytest.warns(FitFailedWarning, match=r"1 fits failed out of a total of 2"):
        search.run(timeout=120)
    assert "FileNotFoundError" in search.fit_errors[(0, 1)]
    assert search.n_retried == 1
    results = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(r["candidate"], r["split"]) for r in results if r["type"] == "result"] == [(0, 0)]


def test_journal_resume_submits_only_missing_pairs(rc, dense_paths, svc_reference, tmp_path):
    journal = tmp_path / "search.jsonl"
    first = DistributedSearch(rc, SVC(), GRID, dense_paths, journal=journal).run(timeout=120)
    assert first.n_submitted == 12
    lines = journal.read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["type"] for x in lines[:2]] == ["header", "session"]
    kept = lines[:2] + lines[2:7]  # five results survive the "crash"
    journal.write_bytes(b"".join(kept) + b'{"type": "result", "cand')  # torn last line

    second = DistributedSearch(rc, SVC(), GRID, dense_paths, journal=journal).run(timeout=120)
    assert (second.n_skipped, second.n_submitted) == (5, 7)
    np.testing.assert_allclose(
        second.cv_results_["mean_test_score"],
        svc_reference.cv_results_["mean_test_score"],
        rtol=1e-12,
    )
    assert second.best_params_ == svc_reference.best_params_
    check = verify_journal(journal)
    assert check.ok, check
    assert (check.n_sessions, check.n_results) == (2, 12)
    assert len(check.lost_in_flight) == 7  # the pairs cut from session 0, redone in session 1

    third = DistributedSearch(rc, SVC(), GRID, dense_paths, journal=journal).run(timeout=120)
    assert (third.n_skipped, third.n_submitted) == (12, 0)
    assert third.best_params_ == svc_reference.best_params_


def test_journal_of_another_search_is_refused(rc, dense_paths, tmp_path):
    journal = tmp_path / "search.jsonl"
    DistributedSearch(
        rc, FailingClassifier(), {"parameter": [0]}, dense_paths, journal=journal
    ).run()
    other = DistributedSearch(
        rc, FailingClassifier(), {"parameter": [1]}, dense_paths, journal=journal
    )
    with pytest.raises(JournalMismatch, match="different search"):
        other.start()


def test_report_lines_show_mean_and_standard_error(svc_search):
    results = svc_search.cv_results_
    lines = report_text(results, top=3).splitlines()
    assert len(lines) == 3
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == [1, 2, 3]
    best = svc_search.best_index_
    scores = [results[f"split{i}_test_score"][best] for i in range(3)]
    assert matches[0].group(2) == f"{np.mean(scores):.5f}"
    assert matches[0].group(3) == f"{sem(scores):.5f}"
    assert matches[0].group(6) == str(svc_search.best_params_)
    report = svc_search.report(top=2)
    assert report.startswith("Progress: 100% (012/012)\n\n")
    assert report.splitlines()[2] == lines[0]


def test_plots_write_png_files(svc_search, tmp_path):
    png = b"\x89PNG\r\n\x1a\n"
    for path in [
        plot_param_boxplots(svc_search.cv_results_, tmp_path / "box.png", train=True),
        plot_heatmap(svc_search.cv_results_, tmp_path / "heat.png", x="gamma", y="C"),
    ]:
        assert path.read_bytes().startswith(png) and path.stat().st_size > 5000


def test_learning_curve_matches_sklearn(rc, digits, cv_pairs, dense_paths, tmp_path):
    X, y = digits
    estimator = SVC(C=10.0, gamma=1e-3)
    sizes = np.linspace(0.1, 1.0, 5)
    result = learning_curve_distributed(rc, estimator, dense_paths, train_sizes=sizes)
    sizes_abs, train, test = learning_curve(
        estimator, X, y, cv=cv_pairs, train_sizes=sizes, shuffle=False
    )
    np.testing.assert_array_equal(result["train_sizes_abs"], sizes_abs)
    np.testing.assert_allclose(result["train_scores"], train, rtol=1e-12)
    np.testing.assert_allclose(result["test_scores"], test, rtol=1e-12)
    path = plot_learning_curve(result, tmp_path / "curve.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000


def test_abort_cancels_tasks_not_yet_started(rc, dense_paths):
    never_fails = [p for p in range(21) if p != FailingClassifier.FAILING_PARAMETER]
    # One pair per task, so the counts below are exact (a batch is cancelled whole).
    search = DistributedSearch(
        rc, SlowClassifier(), {"parameter": never_fails}, dense_paths, batch_size=1
    )
    search.start()
    deadline = time.monotonic() + 30
    while search.progress[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    search.abort()
    assert search.wait(timeout=30)
    done, total = search.progress
    assert search.n_submitted == total == 60
    assert search.n_aborted > 40 and done + search.n_aborted == total
    assert np.isnan(search.cv_results_["mean_test_score"]).sum() >= 15


def test_engines_cache_each_split_once_and_pin_blas(rc, svc_search, dense_paths):
    def engine_state():
        import sys

        import numpy as np
        from threadpoolctl import threadpool_info

        state = sys.modules["_payload_engine_state"]
        paths = [key[0] for key in state.splits]
        mapped = all(  # dense or sparse arrays (a list of documents cannot be mapped)
            isinstance(split[0].data if hasattr(split[0], "tocsr") else split[0], np.memmap)
            for split in state.splits.values()
            if hasattr(split[0], "dtype")
        )
        threads = {info["num_threads"] for info in threadpool_info()}
        return paths, mapped, threads

    for paths, mapped, threads in _engine_call(rc, engine_state):
        assert len(paths) == len(set(paths))  # one cached, memory-mapped copy per split file
        assert set(map(str, dense_paths)) & set(paths)
        assert mapped
        assert threads <= {1}


def test_longest_first_orders_expensive_candidates_first():
    grid = [
        {"svc__C": 1.0, "svc__gamma": 1e-3},
        {"svc__C": 100.0, "svc__gamma": 1e-3},
        {"svc__C": 10.0, "svc__gamma": 1e-3},
    ]
    assert submission_order(grid) == [1, 2, 0]
    assert submission_order(grid, "given") == [0, 1, 2]
    assert submission_order([{"alpha": 1.0}, {"alpha": 1e-4}]) == [1, 0]
    assert submission_order([{"kernel": "rbf"}, {"kernel": "linear"}]) == [0, 1]
    assert submission_order(grid, lambda p: -p["svc__C"]) == [0, 2, 1]


def test_search_accepts_a_direct_view_and_reports_partial_progress(rc, dense_paths):
    search = DistributedSearch(rc[:], SVC(), {"C": [1.0]}, dense_paths[:1])
    assert search.report() == "Progress: 00% (000/001)"
    assert search.best_so_far() is None
    seen = []
    search.start()
    assert search.wait(timeout=60, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (1, 1)
    assert search.best_so_far()["params"] == {"C": 1.0}
    assert Path(dense_paths[0]).exists()


def test_search_works_when_the_client_serializes_with_cloudpickle(rc, dense_paths):
    rc[:].use_cloudpickle()
    try:
        search = DistributedSearch(rc, SVC(), {"C": [1.0]}, dense_paths[:2]).run(timeout=60)
    finally:
        rc[:].use_pickle()
    assert search.progress == (2, 2) and not search.fit_errors
