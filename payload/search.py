"""Distributed grid / randomized search over memory-mapped CV splits.

Each (candidate, split) pair is one fit on a ``LoadBalancedView``; only the
split's *path* and the candidate's parameters travel with it (the estimator and
scorer are pickled once per search, see ``payload._remote``). Engines memory-map
each split once and keep it cached, and pin BLAS to one thread.

Pairs go out in batches sized by guided self-scheduling (`guided_batches`):
each batch takes a share of what is left, so the first, expensive pairs travel
several to a message and the last go one by one. An ipyparallel task costs the
engine a few milliseconds beyond the fit (measured in ``bench/overhead.py``), which
is most of a sub-10 ms fit; the single pairs at the end keep the finish even.

Results arrive through done-callbacks on ipyparallel's IO thread: each is stored
in compact ``(n_candidates, n_splits)`` arrays and appended to the journal right
away, so progress, partial reports and the journal stay current whether or not
anyone is blocked in :meth:`DistributedSearch.wait`.

``cv_results_`` follows ``GridSearchCV.cv_results_`` (``params``,
``param_<name>`` masked arrays, ``split{i}_test_score``, ``mean/std/rank``,
train scores, fit and score times), and failures follow sklearn's rules:
recorded with ``error_score``, then a ``FitFailedWarning`` if some fits failed
or a ``ValueError`` grouping the errors if all did. There is no refit: the data
lives on the engines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from ipyparallel.error import TaskAborted
from numpy.ma import MaskedArray
from scipy.stats import rankdata
from sklearn.metrics import check_scoring
from sklearn.model_selection import ParameterGrid, ParameterSampler

from . import _engine
from ._remote import (
    TaskSender,
    engine_of,
    forget,
    judge_fit_failures,
    load_balanced_view,
    remote_error_text,
)
from .journal import Journal
from .report import report_text
from .splits import split_identities

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


def guided_batches(
    pairs: Sequence[Any], n_engines: int, size: int | str = "auto"
) -> list[list[Any]]:
    """Split ``pairs`` (in submission order) into consecutive batches.

    ``size="auto"``: guided self-scheduling, ``len(left) // (AUTO_BATCH_SHARE *
    n_engines)`` pairs per batch, between 1 and ``AUTO_BATCH_MAX``; an int: that
    many pairs per batch (1 = one task per pair).
    """
    _check_batch_size(size)
    batches, i, n = [], 0, len(pairs)
    while i < n:
        if size == "auto":
            step = min(AUTO_BATCH_MAX, max(1, (n - i) // (AUTO_BATCH_SHARE * max(1, n_engines))))
        else:
            step = int(size)
        batches.append(list(pairs[i : i + step]))
        i += step
    return batches


def _check_batch_size(size: Any) -> None:
    if size != "auto" and not (isinstance(size, numbers.Integral) and size >= 1):
        raise ValueError(f"batch_size must be 'auto' or a positive integer, got {size!r}")


def submission_order(
    candidates: Sequence[Mapping[str, Any]],
    order: str | Callable[[Mapping[str, Any]], float] = "longest-first",
) -> list[int]:
    """Candidate indices in the order their tasks are submitted.

    Submitting the slowest fits first keeps engines from idling at the end
    behind one long straggler. ``"longest-first"`` estimates the cost from the
    parameters known to drive fit time (``C``, ``n_estimators``, ``alpha``...,
    also as ``step__C`` in pipelines): each contributes the normalized rank of
    its value, signed by direction. Candidates without known parameters, and
    ties, keep the given order. A callable maps params to an estimated cost;
    ``"given"`` keeps the order as is.
    """
    indices = list(range(len(candidates)))
    if order == "given":
        return indices
    if callable(order):
        costs = [float(order(params)) for params in candidates]
    elif order == "longest-first":
        costs = _heuristic_costs(candidates)
    else:
        raise ValueError(f"order must be 'longest-first', 'given' or a callable, got {order!r}")
    return sorted(indices, key=lambda i: -costs[i])


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


class DistributedSearch:
    """Grid or randomized search whose fits run on an ipyparallel cluster.

    Constructing does not touch the cluster; :meth:`start` submits every
    missing (candidate, split) pair and returns at once, :meth:`wait` blocks
    (``Ctrl-C`` only stops waiting: tasks keep running and results keep being
    journaled; :meth:`abort` cancels what has not started). A search object
    runs once: to resume, build a new one with the same arguments and journal.

    ``param_grid_or_distributions`` is a grid (``ParameterGrid``) unless
    ``n_iter`` is given, then it is sampled with ``ParameterSampler``; pass
    ``random_state`` for a randomized search to be resumable, since the
    journal is keyed by the candidates. ``scoring`` is a single metric (None
    uses ``estimator.score``). ``retries`` re-runs, on another engine, tasks
    that *raised* (a lost engine, a missing split file); a failing fit does not
    raise, it is recorded with ``error_score``.
    ``batch_size`` ("auto", or pairs per task) groups pairs into tasks, see
    `guided_batches`; a retry or an abort applies to a whole batch.
    """

    def __init__(
        self,
        view_or_client: Any,
        estimator: Any,
        param_grid_or_distributions: Mapping | Sequence[Mapping],
        split_paths: Iterable[str | Path],
        *,
        scoring: str | Callable | None = None,
        n_iter: int | None = None,
        random_state: int | np.random.RandomState | None = None,
        journal: str | Path | None = None,
        retries: int = 2,
        return_train_score: bool = True,
        error_score: float | str = np.nan,
        order: str | Callable[[Mapping[str, Any]], float] = "longest-first",
        batch_size: int | str = "auto",
    ) -> None:
        self.view = load_balanced_view(view_or_client)
        self.estimator = estimator
        self.split_paths = [str(p) for p in split_paths]
        if not self.split_paths:
            raise ValueError("split_paths is empty")
        if n_iter is None:
            self.candidates = list(ParameterGrid(param_grid_or_distributions))
        else:
            sampler = ParameterSampler(
                param_grid_or_distributions, n_iter, random_state=random_state
            )
            self.candidates = list(sampler)
        if not self.candidates:
            raise ValueError("no candidate parameters to evaluate")
        if not (error_score == "raise" or isinstance(error_score, numbers.Number)):
            raise ValueError("error_score must be 'raise' or a number")
        self.scoring = scoring
        self.journal = Path(journal) if journal is not None else None
        self.retries = retries
        self.return_train_score = return_train_score
        self.error_score = error_score
        self.order = submission_order(self.candidates, order)
        _check_batch_size(batch_size)  # now, not at start()
        self.batch_size = batch_size

        shape = (len(self.candidates), len(self.split_paths))
        self._test = np.full(shape, np.nan)
        self._train = np.full(shape, np.nan)
        self._fit_time = np.full(shape, np.nan)
        self._score_time = np.full(shape, np.nan)
        self._n_test = np.zeros(shape, dtype=np.int64)
        self._done = np.zeros(shape, dtype=bool)
        self.fit_errors: dict[tuple[int, int], str] = {}
        self.engines: Counter = Counter()  # (hostname, pid) -> fits run there
        self.n_submitted = 0
        self.n_skipped = 0
        self.n_aborted = 0
        self.n_retried = 0
        self.aborted = False

        self._cond = threading.Condition(threading.RLock())
        self._batches: list[list[tuple[int, int]]] = []
        self._pending: dict[int, Any] = {}  # batch index -> AsyncResult
        self._journal: Journal | None = None
        self._callback_error: BaseException | None = None
        self._raise_error: str | None = None
        self._started = False
        self._finished = False

    # -- running -------------------------------------------------------------

    def start(self) -> DistributedSearch:
        """Submit every pair not already in the journal; return without waiting."""
        if self._started:
            raise RuntimeError("this search was already started; build a new one to run again")
        self._started = True
        scorer = check_scoring(self.estimator, self.scoring)
        if self.journal is not None:
            self._journal, records = Journal.open(self.journal, self._header())
            for record in records:
                self._store(record)
            self.n_skipped = int(self._done.sum())
        n_splits = len(self.split_paths)
        todo = [(c, s) for c in self.order for s in range(n_splits) if not self._done[c, s]]
        if self._journal is not None:
            self._journal.start_session([c * n_splits + s for c, s in todo], self.n_skipped)
        task = partial(
            _engine.evaluate_many, self.estimator, scorer, self.return_train_score, self.error_score
        )
        self._sender = TaskSender(self.view, task)
        targets = self.view.targets
        n_engines = len(targets) if isinstance(targets, list | tuple) else len(self.view.client.ids)
        self._batches = guided_batches(todo, n_engines, self.batch_size)
        for b, batch in enumerate(self._batches):
            if self.aborted:
                break
            self._submit(b)
            self.n_submitted += len(batch)
        return self

    def _submit(self, b: int, attempt: int = 0, avoid: int | None = None) -> None:
        items = [(c, s, self.split_paths[s], self.candidates[c]) for c, s in self._batches[b]]
        ar = self._sender.submit(items, avoid=avoid)
        with self._cond:
            self._pending[b] = ar
            late = self.aborted  # a retry racing with abort(): cancel it too
        if late:
            with contextlib.suppress(Exception):
                self.view.abort(jobs=[ar], block=False)
        ar.add_done_callback(partial(self._on_done, b, attempt))

    def wait(
        self,
        timeout: float | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> bool:
        """Block until every submitted task is done; False if ``timeout`` ran out.

        ``progress(done, total)`` is called from this thread whenever the count
        changes. When everything is in, failures are judged (warn or raise)
        and ``cv_results_``/``best_*_`` are set.
        """
        if not self._started:
            raise RuntimeError("call start() first")
        deadline = None if timeout is None else time.monotonic() + timeout
        reported = -1
        while True:
            with self._cond:
                if self._callback_error is not None:
                    raise self._callback_error
                if self._raise_error is not None:
                    break
                done, total = self.progress
                pending = bool(self._pending)
                if pending and done == reported:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
                    continue
            if progress is not None and done != reported:
                progress(done, total)
            reported = done
            if not pending:
                break
        self._finish()
        return True

    def run(
        self, timeout: float | None = None, progress: Callable[[int, int], Any] | None = None
    ) -> DistributedSearch:
        """``start()`` then ``wait()``; raise ``TimeoutError`` if ``timeout`` runs out."""
        self.start()
        if not self.wait(timeout, progress):
            raise TimeoutError(f"search not finished after {timeout} s: {self.progress}")
        return self

    def abort(self, block: bool = True) -> None:
        """Cancel tasks that have not started; running fits finish and are kept.

        Cancelled tasks resolve as aborted (counted in ``n_aborted``, not
        journaled), so :meth:`wait` returns once the running ones are in.
        ``block=False`` is for the IO thread, which must not wait for replies.
        """
        with self._cond:
            self.aborted = True
            pending = list(self._pending.values())
        if pending:
            # Some may have finished in between: nothing left to cancel there.
            with contextlib.suppress(Exception):
                self.view.abort(jobs=pending, block=block)

    @property
    def progress(self) -> tuple[int, int]:
        """(pairs done, total pairs), counting pairs loaded from the journal."""
        with self._cond:
            return int(self._done.sum()), self._done.size

    def best_so_far(self) -> dict | None:
        """Best candidate among those with every split done, or None yet."""
        with self._cond:
            complete = self._done.all(axis=1)
            if not complete.any():
                return None
            means = np.where(complete, self._test.mean(axis=1), np.nan)
            if np.isnan(means).all():
                index = int(np.flatnonzero(complete)[0])
            else:
                index = int(np.nanargmax(means))
            return {
                "candidate": index,
                "params": self.candidates[index],
                "mean_test_score": float(means[index]),
                "n_complete": int(complete.sum()),
            }

    def report(self, top: int = 5) -> str:
        """Progress line plus the top candidates among the completed ones."""
        done, total = self.progress
        text = f"Progress: {int(100 * done / total):02d}% ({done:03d}/{total:03d})"
        results = self.partial_cv_results()
        if results["params"]:
            text += "\n\n" + report_text(results, top=top)
        return text

    def partial_cv_results(self) -> dict:
        """``cv_results_`` restricted to the candidates whose splits are all done."""
        with self._cond:
            rows = np.flatnonzero(self._done.all(axis=1))
            return self._cv_results(rows)

    def __repr__(self) -> str:
        done, total = self.progress
        return f"<DistributedSearch {type(self.estimator).__name__}: {done}/{total} fits>"

    # -- results -------------------------------------------------------------

    def _on_done(self, b: int, attempt: int, ar: Any) -> None:
        """Runs on ipyparallel's IO thread (or inline if already done)."""
        batch = self._batches[b]
        try:
            journaled = True
            try:
                results = ar.result()
            except TaskAborted:
                with self._cond:
                    self._pending.pop(b, None)
                    self.n_aborted += len(batch)
                    self._cond.notify_all()
                return
            except Exception as exc:
                if attempt < self.retries and not self.aborted:
                    self.n_retried += len(batch)
                    self._submit(b, attempt + 1, avoid=engine_of(ar))
                    return
                # The task itself raised, retries exhausted: not a result of
                # the fits, so it is not journaled and a resume runs them again.
                journaled = False
                results = [self._task_failure(c, s, exc) for c, s in batch]
            forget(ar)
            records = [{**r, "params": self.candidates[r["candidate"]]} for r in results]
            with self._cond:
                self._pending.pop(b, None)
                abort = False
                for record in records:
                    self._store(record)
                    if journaled and self._journal is not None and not self._finished:
                        self._journal.append(record)
                    if self.error_score == "raise" and record["fit_error"] and not self._raise_error:
                        self._raise_error = record["fit_error"]
                        abort = True
                self._cond.notify_all()
            if abort:
                self.abort(block=False)
        except BaseException as exc:  # surfaced by wait(), never lost in the IO thread
            with self._cond:
                self._callback_error = exc
                self._pending.pop(b, None)
                self._cond.notify_all()

    def _task_failure(self, candidate: int, split: int, exc: BaseException) -> dict:
        nan = float("nan") if self.error_score == "raise" else float(self.error_score)
        return {
            "candidate": candidate,
            "split": split,
            "test_score": nan,
            "train_score": nan if self.return_train_score else None,
            "fit_time": 0.0,
            "score_time": 0.0,
            "n_test_samples": 0,
            "fit_error": "Task failed on the cluster:\n" + remote_error_text(exc),
            "hostname": None,
            "pid": None,
        }

    def _store(self, record: Mapping[str, Any]) -> None:
        c, s = record["candidate"], record["split"]
        self._test[c, s] = _float(record["test_score"])
        self._train[c, s] = _float(record.get("train_score"))
        self._fit_time[c, s] = record["fit_time"]
        self._score_time[c, s] = record["score_time"]
        self._n_test[c, s] = record["n_test_samples"]
        self._done[c, s] = True
        if record.get("fit_error"):
            self.fit_errors[(c, s)] = record["fit_error"]
        else:
            self.fit_errors.pop((c, s), None)
        if record.get("hostname") is not None:
            self.engines[(record["hostname"], record["pid"])] += 1

    def _finish(self) -> None:
        with self._cond:
            if self._finished:
                return
            self._finished = True
            if self._journal is not None:
                self._journal.close()
            if self._raise_error is not None:
                raise RuntimeError(
                    "A fit failed and error_score='raise'; the remaining tasks were "
                    f"aborted. Traceback from the engine:\n{self._raise_error}"
                )
            # Missing pairs of an aborted search are not failures: no warning then.
            results = self._cv_results(np.arange(len(self.candidates)), warn=not self.aborted)
            self.cv_results_ = results
            self.best_index_ = int(np.argmin(results["rank_test_score"]))
            self.best_params_ = self.candidates[self.best_index_]
            self.best_score_ = float(results["mean_test_score"][self.best_index_])
            self.n_splits_ = len(self.split_paths)
            done = self._done
            errors = [self.fit_errors[k] for k in sorted(self.fit_errors) if done[k]]
            n_fits = int(done.sum())
        if n_fits:
            judge_fit_failures(errors, n_fits, self.error_score)

    def _cv_results(self, rows: np.ndarray, warn: bool = False) -> dict:
        """Format the rows of the result arrays like ``GridSearchCV._format_results``."""
        params = [self.candidates[i] for i in rows]
        results: dict[str, Any] = {}

        def store(key: str, array: np.ndarray, splits: bool = False, rank: bool = False) -> None:
            array = array[rows]
            if splits:
                for s in range(array.shape[1]):
                    results[f"split{s}_{key}"] = array[:, s].copy()
            means = array.mean(axis=1)
            results[f"mean_{key}"] = means
            if warn and key.endswith("_score") and not np.isfinite(means).all():
                import warnings

                warnings.warn(
                    f"One or more of the {key.split('_')[0]} scores are non-finite: {means}",
                    UserWarning,
                    stacklevel=4,
                )
            results[f"std_{key}"] = array.std(axis=1)
            if rank:
                results[f"rank_{key}"] = _rank(means)

        store("fit_time", self._fit_time)
        store("score_time", self._score_time)
        results.update(_param_columns(params))
        results["params"] = params
        store("test_score", self._test, splits=True, rank=True)
        if self.return_train_score:
            store("train_score", self._train, splits=True)
        return results

    def _header(self) -> dict:
        """What identifies this search in a journal: everything that shapes results."""
        identity = {
            "estimator": _full_repr(self.estimator),
            "candidates": [repr(sorted(p.items())) for p in self.candidates],
            "splits": split_identities(self.split_paths),
            "scoring": repr(self.scoring),
            "return_train_score": self.return_train_score,
            "error_score": repr(self.error_score),
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return {
            "key": key,
            "n_candidates": len(self.candidates),
            "n_splits": len(self.split_paths),
            "estimator": identity["estimator"],
            "scoring": identity["scoring"],
            "splits": self.split_paths,
            "split_identities": identity["splits"],
        }


def _rank(means: np.ndarray) -> np.ndarray:
    """Rank descending with NaN tied last, as ``GridSearchCV`` does."""
    if means.size == 0:
        return np.zeros(0, dtype=np.int32)
    if np.isnan(means).all():
        return np.ones_like(means, dtype=np.int32)
    filled = np.where(np.isnan(means), np.nanmin(means) - 1, means)
    return rankdata(-filled, method="min").astype(np.int32)


def _param_columns(params: Sequence[Mapping[str, Any]]) -> dict[str, MaskedArray]:
    """One masked array per parameter, masked where a candidate lacks it (as sklearn)."""
    by_name: dict[str, dict[int, Any]] = defaultdict(dict)
    for i, p in enumerate(params):
        for name, value in p.items():
            by_name[f"param_{name}"][i] = value
    columns = {}
    for key, values in by_name.items():
        try:
            arr = np.array(list(values.values()))
            dtype = arr.dtype if arr.dtype.kind != "U" and arr.ndim == 1 else object
        except ValueError:
            dtype = np.dtype(object)
        column = MaskedArray(np.empty(len(params), dtype=dtype), mask=True)
        for i, value in values.items():
            column[i] = value
        columns[key] = column
    return columns


def _full_repr(estimator: Any) -> str:
    """The estimator's repr without sklearn's 700-character ellipsis."""
    try:
        return estimator.__repr__(N_CHAR_MAX=sys.maxsize)
    except TypeError:
        return repr(estimator)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
