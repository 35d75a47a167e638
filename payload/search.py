"""Distributed grid / randomized search over memory-mapped CV splits.

Each (candidate, split) pair is one fit on a ``LoadBalancedView``; only the
split's *path* and the candidate's parameters travel with it (the estimator and
scorer are pickled once per search, see ``payload._remote``). Engines memory-map
each split once and keep it cached, and pin BLAS to one thread. Pairs go out in
batches and in an order chosen by ``payload.scheduling``.

Results arrive through done-callbacks on ipyparallel's IO thread: each is stored
in a `ResultTable` and appended to the journal right away, so progress, partial
reports and the journal stay current whether or not anyone is blocked in
:meth:`DistributedSearch.wait`.

``cv_results_`` follows ``GridSearchCV.cv_results_`` (see ``payload.results``),
for one metric or several, and failures follow sklearn's rules: recorded with
``error_score``, then a ``FitFailedWarning`` if some fits failed or a
``ValueError`` grouping the errors if all did; ``error_score="raise"`` stops the
search and raises the engine's exception, of its original type. There is no
refit here (the data lives on the engines): ``payload.ClusterGridSearchCV`` adds
it, with the rest of scikit-learn's estimator API.
"""

from __future__ import annotations

import logging
import numbers
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from ipyparallel.error import TaskAborted

from . import _engine
from ._remote import (
    TaskSender,
    engine_of,
    forget,
    judge_fit_failures,
    load_balanced_view,
    raise_remote,
    task_failure,
)
from .journal import Journal, search_header
from .report import report_text
from .results import ResultTable, format_cv_results
from .scheduling import (
    Order,
    check_batch_size,
    expand_candidates,
    guided_batches,
    submission_order,
)
from .scoring import build_scorer, scoring_identity

log = logging.getLogger(__name__)


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
    journal is keyed by the candidates. ``candidates`` (a list of param dicts)
    replaces both. ``scoring`` is anything GridSearchCV takes (None, a name, a
    callable, a list or dict for several metrics); ``best_metric`` names the one
    that ranks ``best_*`` (default: the first). ``retries`` re-runs, on another
    engine, tasks that *raised* (a lost engine, a missing split file); a
    failing fit does not raise, it is recorded with ``error_score``.
    ``order`` (see `submission_order`): ``"auto"`` is ``"shuffled"`` (seeded by
    ``random_state``) for a sampled search, so an aborted one leaves an
    unbiased sample, and ``"longest-first"`` for a grid. ``batch_size``
    ("auto", or pairs per task) groups pairs into tasks, see `guided_batches`;
    a retry or an abort applies to a whole batch.
    """

    def __init__(
        self,
        view_or_client: Any,
        estimator: Any,
        param_grid_or_distributions: Mapping | Sequence[Mapping] | None,
        split_paths: Iterable[str | Path],
        *,
        scoring: Any = None,
        n_iter: int | None = None,
        random_state: int | np.random.RandomState | None = None,
        journal: str | Path | None = None,
        retries: int = 2,
        return_train_score: bool = True,
        error_score: float | str = np.nan,
        order: Order = "auto",
        batch_size: int | str = "auto",
        candidates: Sequence[Mapping[str, Any]] | None = None,
        best_metric: str | None = None,
    ) -> None:
        self.view = load_balanced_view(view_or_client)
        self.estimator = estimator
        self.split_paths = [str(p) for p in split_paths]
        if not self.split_paths:
            raise ValueError("split_paths is empty")
        if candidates is None:
            candidates = expand_candidates(param_grid_or_distributions, n_iter, random_state)
        self.candidates = [dict(c) for c in candidates]
        if not self.candidates:
            raise ValueError("no candidate parameters to evaluate")
        if not (error_score == "raise" or isinstance(error_score, numbers.Number)):
            raise ValueError("error_score must be 'raise' or a number")
        self.scoring = scoring
        self.scorer = build_scorer(estimator, scoring, error_score)
        self.best_metric = best_metric
        self.journal = Path(journal) if journal is not None else None
        self.retries = retries
        self.return_train_score = return_train_score
        self.error_score = error_score
        if order == "auto":
            order = "longest-first" if n_iter is None else "shuffled"
        self.order = submission_order(self.candidates, order, random_state)
        check_batch_size(batch_size)  # now, not at start()
        self.batch_size = batch_size

        self.table = ResultTable(len(self.candidates), len(self.split_paths))
        self.engines: Counter = Counter()  # (hostname, pid) -> fits run there
        self.n_submitted = self.n_skipped = self.n_aborted = self.n_retried = 0
        self.aborted = self._started = self._finished = False

        self._cond = threading.Condition(threading.RLock())
        self._batches: list[list[tuple[int, int]]] = []
        self._pending: dict[int, Any] = {}  # batch index -> AsyncResult
        self._journal: Journal | None = None
        self._callback_error: BaseException | None = None
        self._raise_error: tuple[str, Any] | None = None  # (traceback text, exception)

    @property
    def fit_errors(self) -> dict[tuple[int, int], str]:
        """(candidate, split) -> traceback text of the fits that failed."""
        return self.table.fit_errors

    # -- running -------------------------------------------------------------

    def start(self) -> DistributedSearch:
        """Submit every pair not already in the journal; return without waiting."""
        if self._started:
            raise RuntimeError("this search was already started; build a new one to run again")
        self._started = True
        done = self.table.done
        if self.journal is not None:
            header = search_header(
                self.estimator, self.candidates, self.split_paths, scoring_identity(self.scoring),
                self.return_train_score, self.error_score,
            )
            self._journal, records = Journal.open(self.journal, header)
            for record in records:
                if not self._raises(record):
                    self._store(record)  # a failure that raised runs (and raises) again
            self.n_skipped = int(done.sum())
        n_splits = len(self.split_paths)
        todo = [(c, s) for c in self.order for s in range(n_splits) if not done[c, s]]
        if self._journal is not None:
            self._journal.start_session([c * n_splits + s for c, s in todo], self.n_skipped)
        task = partial(
            _engine.evaluate_many,
            self.estimator, self.scorer, self.return_train_score, self.error_score,
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
            self._abort_tasks([ar], block=False)
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
            self._abort_tasks(pending, block)

    def _abort_tasks(self, tasks: list, block: bool) -> None:
        """Ask the hub to cancel ``tasks`` (finished ones are simply not cancelled).

        May run on the IO thread, where an exception would be lost: a failure
        (the client closing, say) is logged, and the tasks then just run.
        """
        try:
            self.view.abort(jobs=tasks, block=block)
        except Exception as e:
            log.warning("could not abort %d tasks: %r", len(tasks), e)

    @property
    def progress(self) -> tuple[int, int]:
        """(pairs done, total pairs), counting pairs loaded from the journal."""
        with self._cond:
            return int(self.table.done.sum()), self.table.done.size

    def _ranking_metric(self) -> str:
        metrics = self.table.metrics()
        return self.best_metric if self.best_metric in metrics else metrics[0]

    def best_so_far(self) -> dict | None:
        """Best candidate among those with every split done, or None yet."""
        with self._cond:
            metric = self._ranking_metric()
            complete, means = self.table.complete_means(metric)
            if not complete.any():
                return None
            if np.isnan(means).all():
                index = int(np.flatnonzero(complete)[0])
            else:
                index = int(np.nanargmax(means))
            return {
                "candidate": index,
                "params": self.candidates[index],
                "metric": metric,
                "mean_test_score": float(means[index]),
                "n_complete": int(complete.sum()),
            }

    def report(self, top: int = 5) -> str:
        """Progress line plus the top candidates among the completed ones."""
        done, total = self.progress
        text = f"Progress: {int(100 * done / total):02d}% ({done:03d}/{total:03d})"
        results = self.partial_cv_results()
        if results["params"]:
            text += "\n\n" + report_text(results, top=top, metric=self._ranking_metric())
        return text

    def partial_cv_results(self) -> dict:
        """``cv_results_`` restricted to the candidates whose splits are all done."""
        with self._cond:
            rows = np.flatnonzero(self.table.done.all(axis=1))
            return format_cv_results(self.table, self.candidates, rows, self.return_train_score)

    def __repr__(self) -> str:
        return f"<DistributedSearch {type(self.estimator).__name__}: %d/%d fits>" % self.progress

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
                results = [
                    task_failure(c, s, exc, self.error_score, self.return_train_score)
                    for c, s in batch
                ]
            forget(ar)
            self._keep(b, results, journaled)
        except BaseException as exc:  # surfaced by wait(), never lost in the IO thread
            with self._cond:
                self._callback_error = exc
                self._pending.pop(b, None)
                self._cond.notify_all()

    def _keep(self, b: int, results: list[dict], journaled: bool) -> None:
        abort = False
        with self._cond:
            self._pending.pop(b, None)
            for result in results:
                exception = result.pop("exception", None)
                record = {**result, "params": self.candidates[result["candidate"]]}
                self._store(record)
                if journaled and self._journal is not None and not self._finished:
                    self._journal.append(record)
                if self._raises(record) and not self._raise_error:
                    self._raise_error = (record["fit_error"], exception)
                    abort = True
            self._cond.notify_all()
        if abort:
            self.abort(block=False)

    def _raises(self, record: Mapping[str, Any]) -> bool:
        """Whether this result stops the search, as it would stop sklearn's."""
        failed = bool(record.get("fit_error"))
        return failed and (self.error_score == "raise" or bool(record.get("must_raise")))

    def _store(self, record: Mapping[str, Any]) -> None:
        self.table.store(record)
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
                raise_remote(*self._raise_error)
            errors = self.table.errors_done()
            n_fits = int(self.table.done.sum())
        if n_fits:
            judge_fit_failures(errors, n_fits, self.error_score)
        with self._cond:
            # Missing pairs of an aborted search are not failures: no warning then.
            rows = np.arange(len(self.candidates))
            results = format_cv_results(
                self.table, self.candidates, rows, self.return_train_score, warn=not self.aborted
            )
            self.cv_results_ = results
            self.multimetric_ = self.table.multimetric
            metric = self._ranking_metric()
            self.best_index_ = int(np.argmin(results[f"rank_test_{metric}"]))
            self.best_params_ = self.candidates[self.best_index_]
            self.best_score_ = float(results[f"mean_test_{metric}"][self.best_index_])
            self.n_splits_ = len(self.split_paths)
