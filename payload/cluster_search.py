"""``ClusterGridSearchCV`` and ``ClusterRandomizedSearchCV``: scikit-learn's
searches, with the fits on an ipyparallel cluster.

They are ``BaseSearchCV`` subclasses taking the same parameters, so
``predict``/``score``/``classes_``/``best_*``/``cv_results_``, ``clone``,
``get_params``, nesting in a ``Pipeline`` or an outer ``cross_val_score`` all
behave as scikit-learn's; only ``fit`` differs. It checks the ``cv`` as sklearn
does, ships each split once per host (`payload.cvdata`), runs the pairs with
`DistributedSearch` (journal and resume, progress and best-so-far, abort,
retries on lost engines), then selects and refits exactly as ``BaseSearchCV.fit``
(the refit runs here by default, or on an engine with ``refit_on="cluster"``).

The client is a constructor parameter, but it is shared rather than copied:
``clone`` gives the clone the same client (a client holds sockets and threads),
and pickling a fitted search drops it, keeping the results and best estimator.
``n_jobs`` and ``pre_dispatch`` are accepted for compatibility and unused: the
cluster's engines set the parallelism.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
from sklearn.base import _fit_context, clone, is_classifier
from sklearn.metrics._scorer import _MultimetricScorer
from sklearn.model_selection import check_cv
from sklearn.model_selection._search import BaseSearchCV
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_method_params, indexable

from . import _engine
from ._remote import TaskSender, gather, load_balanced_view
from .cvdata import ship_cv_data
from .scheduling import expand_candidates
from .search import DistributedSearch


class _ClusterSearchCV(BaseSearchCV):
    """What the grid and randomized searches share: everything but the candidates."""

    _parameter_constraints: dict = {
        **BaseSearchCV._parameter_constraints,
        "client": "no_validation",  # a Client or any view; checked in fit
        "data_dir": [None, str, os.PathLike],
        "journal": [None, str, os.PathLike],
        "retries": [Interval(numbers.Integral, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "refit_on": [StrOptions({"client", "cluster"})],
        "timeout": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "order": [StrOptions({"auto", "longest-first", "shuffled", "given"}), callable],
    }

    def __init__(
        self,
        estimator: Any,
        *,
        client: Any,
        scoring: Any,
        n_jobs: int | None,
        refit: bool | str | Callable,
        cv: Any,
        verbose: int,
        pre_dispatch: Any,
        error_score: Any,
        return_train_score: bool,
        data_dir: str | os.PathLike | None,
        journal: str | os.PathLike | None,
        retries: int,
        batch_size: int | str,
        refit_on: str,
        timeout: float | None,
        order: Any,
    ) -> None:
        super().__init__(
            estimator=estimator, scoring=scoring, n_jobs=n_jobs, refit=refit, cv=cv,
            verbose=verbose, pre_dispatch=pre_dispatch, error_score=error_score,
            return_train_score=return_train_score,
        )
        self.client, self.data_dir, self.journal = client, data_dir, journal
        self.retries, self.batch_size, self.refit_on = retries, batch_size, refit_on
        self.timeout, self.order = timeout, order

    def _candidates(self) -> list[dict]:  # pragma: no cover - each subclass has its own
        raise NotImplementedError

    def _order_and_seed(self) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    @_fit_context(prefer_skip_nested_validation=False)  # *SearchCV.estimator unvalidated yet
    def fit(self, X: Any, y: Any = None, groups: Any = None, **fit_params: Any) -> Any:
        """Run fit with all sets of parameters, on the cluster; refit the best.

        As ``GridSearchCV.fit``: ``groups`` goes to the ``cv`` splitter,
        ``fit_params`` to the estimator's ``fit`` (sample-aligned ones cut to
        each split's rows). Ctrl-C stops waiting only: the search goes on (and
        journals); ``self.search_`` shows its progress, ``abort()`` cancels it,
        and calling ``fit`` again with the same ``journal`` resumes it.
        """
        if self.client is None:
            raise ValueError(
                f"{type(self).__name__}: pass client=, the ipyparallel Client (or a view) "
                "whose engines run the fits"
            )
        scorers, refit_metric = self._get_scorers()
        X, y = indexable(X, y)
        params = _check_method_params(X, params=fit_params)
        if groups is not None:
            params["groups"] = groups
        routed = self._get_routed_params_for_fit(params)
        cv = self._checked_cv_orig = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        split_params = routed.splitter.split
        self.n_splits_ = cv.get_n_splits(X, y, **split_params)
        splits = list(cv.split(X, y, **split_params))
        if len(splits) != self.n_splits_:
            raise ValueError(
                "cv.split and cv.get_n_splits return inconsistent results. "
                f"Expected {self.n_splits_} splits, got {len(splits)}"
            )
        candidates = self._candidates()
        if not splits or not candidates:
            raise ValueError(
                "No fits were performed. Was the CV iterator empty? Were there no candidates?"
            )
        base_estimator = clone(self.estimator)
        refit_here = bool(self.refit) and self.refit_on == "client"
        data = ship_cv_data(
            self.client, base_estimator, X, y, splits, routed.estimator.fit,
            routed.scorer.score, data_dir=self.data_dir, full=bool(self.refit) and not refit_here,
        )
        self.shipment_ = data.shipment
        results = self._search(base_estimator, candidates, data.split_paths)

        if callable(self.scoring) and self.multimetric_:
            self._check_refit_for_multimetric(dict.fromkeys(self.search_.table.metrics()))
            refit_metric = self.refit
        if self.refit or not self.multimetric_:
            self.best_index_ = self._select_best_index(self.refit, refit_metric, results)
            if not callable(self.refit):
                self.best_score_ = results[f"mean_test_{refit_metric}"][self.best_index_]
            self.best_params_ = results["params"][self.best_index_]
        if self.refit:
            if refit_here:
                self._refit_here(base_estimator, X, y, routed.estimator.fit)
            else:
                self._refit_on_cluster(base_estimator, data.full_path)
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
        self.scorer_ = scorers._scorers if isinstance(scorers, _MultimetricScorer) else scorers
        self.cv_results_ = results
        return self

    def _search(self, estimator: Any, candidates: list[dict], paths: list[str]) -> dict:
        order, seed = self._order_and_seed()
        search = self.search_ = DistributedSearch(
            self.client, estimator, None, paths, candidates=candidates, scoring=self.scoring,
            journal=self.journal, retries=self.retries, error_score=self.error_score,
            return_train_score=self.return_train_score, order=order, random_state=seed,
            batch_size=self.batch_size,
            best_metric=self.refit if isinstance(self.refit, str) else None,
        )
        if self.verbose > 0:
            print(
                f"Fitting {len(paths)} folds for each of {len(candidates)} candidates,"
                f" totalling {len(paths) * len(candidates)} fits"
            )
        search.start()
        progress = _Progress(search, self.verbose) if self.verbose > 0 else None
        if not search.wait(timeout=self.timeout, progress=progress):
            search.abort(block=False)  # on a dead link a blocking abort would never return
            where = f"; fit again to resume from {self.journal}" if self.journal else ""
            raise TimeoutError(
                f"search not finished within timeout={self.timeout} s "
                f"({search.progress[0]} of {search.progress[1]} fits done){where}"
            )
        self.multimetric_ = search.multimetric_
        return search.cv_results_

    def _refit_here(self, estimator: Any, X: Any, y: Any, fit_params: dict) -> None:
        self.best_estimator_ = clone(estimator).set_params(**clone(self.best_params_, safe=False))
        start = time.time()
        if y is None:
            self.best_estimator_.fit(X, **fit_params)
        else:
            self.best_estimator_.fit(X, y, **fit_params)
        self.refit_time_ = time.time() - start

    def _refit_on_cluster(self, estimator: Any, full_path: str | None) -> None:
        sender = TaskSender(load_balanced_view(self.client), _engine.refit)
        calls = {0: (estimator, self.best_params_, full_path)}
        result = gather(sender, calls, self.retries)[0]
        if isinstance(result, BaseException):
            raise result
        blob, self.refit_time_ = result
        self.best_estimator_ = cloudpickle.loads(blob)

    def abort(self) -> None:
        """Cancel the fits of a running (or interrupted) search that have not started."""
        search = getattr(self, "search_", None)
        if search is not None:
            search.abort()

    def __sklearn_clone__(self) -> Any:
        """A clone sharing this search's client (sockets and threads cannot be copied)."""
        params = self.get_params(deep=False)
        client = params.pop("client")
        return type(self)(client=client, **{k: clone(v, safe=False) for k, v in params.items()})

    def __getstate__(self) -> dict:
        """Pickle the results and best estimator, not the live client or search."""
        state = dict(super().__getstate__())  # a copy: sklearn may hand back __dict__
        state["client"] = None
        state.pop("search_", None)
        return state


class _Progress:
    """``verbose`` output while waiting: fits done and the best candidate so far,
    every tenth of the fits (``verbose=1``) or every change (``verbose>=2``)."""

    def __init__(self, search: DistributedSearch, verbose: int) -> None:
        self.search = search
        self.every = 1 if verbose >= 2 else max(1, search.progress[1] // 10)
        self.next = 0

    def __call__(self, done: int, total: int) -> None:
        if done < self.next and done < total:
            return
        self.next = done + self.every
        line = f"[CV] {done}/{total} fits"
        best = self.search.best_so_far()
        if best is not None:
            score = best["mean_test_score"]
            line += f"; best so far {best['metric']}={score:.4f}: {best['params']}"
        print(line, flush=True)


class ClusterGridSearchCV(_ClusterSearchCV):
    """``GridSearchCV`` on an ipyparallel cluster: the same parameters and
    attributes, plus ``client`` (an ``ipyparallel.Client`` or view),
    ``data_dir`` (where the engines keep the splits; default
    ``/srv/provision/data`` if writable on every host, else a per-user temp
    dir), ``journal`` (a file: resume after a crash), ``retries`` (of tasks on
    a lost engine), ``batch_size``, ``refit_on`` (``"client"``, or
    ``"cluster"``: the refit runs on an engine), ``timeout`` and ``order``
    (``"auto"``: longest fits first). ``return_train_score`` defaults to False
    as in sklearn. After ``fit``: ``search_`` (the `DistributedSearch`) and
    ``shipment_`` (where the data went, bytes per host).
    """

    _parameter_constraints: dict = {
        **_ClusterSearchCV._parameter_constraints,
        "param_grid": [dict, list],
    }

    def __init__(
        self,
        estimator: Any,
        param_grid: dict | list,
        *,
        client: Any = None,
        scoring: Any = None,
        n_jobs: int | None = None,
        refit: bool | str | Callable = True,
        cv: Any = None,
        verbose: int = 0,
        pre_dispatch: Any = "2*n_jobs",
        error_score: Any = np.nan,
        return_train_score: bool = False,
        data_dir: str | os.PathLike | None = None,
        journal: str | os.PathLike | None = None,
        retries: int = 2,
        batch_size: int | str = "auto",
        refit_on: str = "client",
        timeout: float | None = None,
        order: Any = "auto",
    ) -> None:
        super().__init__(
            estimator, client=client, scoring=scoring, n_jobs=n_jobs, refit=refit, cv=cv,
            verbose=verbose, pre_dispatch=pre_dispatch, error_score=error_score,
            return_train_score=return_train_score, data_dir=data_dir, journal=journal,
            retries=retries, batch_size=batch_size, refit_on=refit_on, timeout=timeout,
            order=order,
        )
        self.param_grid = param_grid

    def _candidates(self) -> list[dict]:
        return expand_candidates(self.param_grid)

    def _order_and_seed(self) -> tuple[Any, Any]:
        return ("longest-first" if self.order == "auto" else self.order), None


class ClusterRandomizedSearchCV(_ClusterSearchCV):
    """``RandomizedSearchCV`` on an ipyparallel cluster; parameters as
    `ClusterGridSearchCV`, plus ``n_iter`` and ``random_state``. The same
    candidates as sklearn draws for the same ``random_state``, submitted in an
    order shuffled with it (``order="auto"``): if the search is aborted or times
    out, the candidates done are an unbiased sample.
    """

    _parameter_constraints: dict = {
        **_ClusterSearchCV._parameter_constraints,
        "param_distributions": [dict, list],
        "n_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator: Any,
        param_distributions: dict | list,
        *,
        n_iter: int = 10,
        client: Any = None,
        scoring: Any = None,
        n_jobs: int | None = None,
        refit: bool | str | Callable = True,
        cv: Any = None,
        verbose: int = 0,
        pre_dispatch: Any = "2*n_jobs",
        random_state: Any = None,
        error_score: Any = np.nan,
        return_train_score: bool = False,
        data_dir: str | os.PathLike | None = None,
        journal: str | os.PathLike | None = None,
        retries: int = 2,
        batch_size: int | str = "auto",
        refit_on: str = "client",
        timeout: float | None = None,
        order: Any = "auto",
    ) -> None:
        super().__init__(
            estimator, client=client, scoring=scoring, n_jobs=n_jobs, refit=refit, cv=cv,
            verbose=verbose, pre_dispatch=pre_dispatch, error_score=error_score,
            return_train_score=return_train_score, data_dir=data_dir, journal=journal,
            retries=retries, batch_size=batch_size, refit_on=refit_on, timeout=timeout,
            order=order,
        )
        self.param_distributions, self.n_iter = param_distributions, n_iter
        self.random_state = random_state

    def _candidates(self) -> list[dict]:
        return expand_candidates(self.param_distributions, self.n_iter, self.random_state)

    def _order_and_seed(self) -> tuple[Any, Any]:
        return ("shuffled" if self.order == "auto" else self.order), self.random_state
