"""Code that runs on the engines.

Engines are not expected to have ``payload`` installed: only numpy, scipy,
scikit-learn, joblib, cloudpickle and ipyparallel. The client therefore ships
these functions *by value* (``cloudpickle.register_pickle_by_value`` on this
module, see ``payload._remote``), so nothing here may import ``payload``.

A function pickled by value gets a fresh copy of its module globals every time
it is unpickled, so a plain module-level dict would not survive from one task to
the next. Per-engine state (the split cache, unpickled task functions, the BLAS
pinning flag) lives instead in a module object registered in ``sys.modules``
under ``STATE_MODULE``: it is created once per engine process and shared by
every search and learning curve that engine runs.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
import types
from typing import Any

STATE_MODULE = "_payload_engine_state"

# Environment variables read by BLAS/OpenMP runtimes when they are first loaded.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def engine_state() -> types.ModuleType:
    """Return this engine's persistent state, creating it on first use.

    Creating it also pins BLAS/OpenMP to one thread: there is one engine per
    vCPU, so threads inside a fit would only oversubscribe the host.
    """
    state = sys.modules.get(STATE_MODULE)
    if state is None:
        state = types.ModuleType(STATE_MODULE)
        state.splits = {}  # (path, mtime_ns, size) -> (X_train, y_train, X_test, y_test, extras)
        state.functions = {}  # digest -> unpickled task function
        state.limits = _pin_threads()
        sys.modules[STATE_MODULE] = state
    return state


def _pin_threads() -> Any:
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        return None
    # Not used as a context manager: the limit stays for the life of the engine.
    return threadpool_limits(limits=1)


def load_split(path: str) -> tuple:
    """``(X_train, y_train, X_test, y_test)`` of one persisted split, memory-mapped
    once per engine process (see `load_split_extras`)."""
    return load_split_extras(path)[:4]


def load_split_extras(path: str) -> tuple:
    """Memory-map one persisted split, once per engine process.

    Returns ``(X_train, y_train, X_test, y_test, extras)``: ``extras`` holds the
    split's fit and score parameters (``{}`` for files written without them).
    The key includes mtime and size so a split rewritten in place is reloaded
    instead of served stale. Memory maps of the same file share the host's page
    cache, so every engine on a host reads the data from one copy.
    """
    import joblib

    state = engine_state()
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    split = state.splits.get(key)
    if split is None:
        for old in [k for k in state.splits if k[0] == path]:
            del state.splits[old]
        split = tuple(joblib.load(path, mmap_mode="r"))
        if len(split) == 4:
            split = (*split, {})
        state.splits[key] = split
    return split


def evaluate(
    estimator: Any,
    scorer: Any,
    return_train_score: bool,
    error_score: Any,
    candidate: int,
    split: int,
    path: str,
    params: dict,
    train_size: int | None = None,
) -> dict:
    """Fit and score one (candidate, split) pair, as sklearn's ``_fit_and_score``.

    Scores come from sklearn's own ``_score``: a float for one metric, a dict
    for several. A failed fit scores ``error_score`` (for every metric) and
    returns its traceback as ``fit_error``, so one bad candidate does not stop
    the search; the client judges failures once everything is collected. With
    ``error_score="raise"`` the exception itself comes back too (pickled, so the
    client can raise the original type), and so it does, with ``must_raise``,
    for what sklearn never records: an exception out of scoring itself. A split
    that cannot be loaded raises instead: that is the host's fault, and raising
    lets the client retry the task on another engine.

    ``params`` are not echoed back: the client already has them, and objects
    defined in a notebook could not be pickled back by the engine.
    """
    from sklearn.base import clone
    from sklearn.model_selection._validation import _score
    from sklearn.utils.validation import _num_samples

    X_train, y_train, X_test, y_test, extras = load_split_extras(path)
    fit_params = extras.get("fit", {})
    score_train, score_test = extras.get("score_train", {}), extras.get("score_test", {})
    if train_size is not None:
        fit_params = _head_params(fit_params, X_train, train_size)
        score_train = _head_params(score_train, X_train, train_size)
        X_train = X_train[:train_size]
        y_train = None if y_train is None else y_train[:train_size]

    fit_error = exception = None
    must_raise = False
    test_scores = train_scores = None
    fit_time = score_time = 0.0
    start = time.perf_counter()
    try:
        model = clone(estimator).set_params(**clone(params, safe=False))
        if y_train is None:
            model.fit(X_train, **fit_params)
        else:
            model.fit(X_train, y_train, **fit_params)
    except Exception as exc:  # recorded, judged on the client (sklearn's rules)
        fit_time = time.perf_counter() - start
        fit_error = traceback.format_exc()
        test_scores = train_scores = _error_scores(scorer, error_score)
        if error_score == "raise":
            exception = _portable(exc)
    else:
        fit_time = time.perf_counter() - start
        try:
            start_score = time.perf_counter()
            test_scores = _score(model, X_test, y_test, scorer, score_test, error_score)
            score_time = time.perf_counter() - start_score
            if return_train_score:
                train_scores = _score(model, X_train, y_train, scorer, score_train, error_score)
        except Exception as exc:  # _score already turned scoring failures into
            # error_score; what it raises (a scorer returning no number, or any
            # failure under "raise") stops sklearn's search whatever error_score is.
            fit_error = traceback.format_exc()
            test_scores = train_scores = _error_scores(scorer, error_score)
            exception, must_raise = _portable(exc), True
    return {
        "candidate": candidate,
        "split": split,
        "test_scores": test_scores,
        "train_scores": train_scores if return_train_score else None,
        "fit_time": fit_time,
        "score_time": score_time,
        "n_test_samples": int(_num_samples(X_test)),
        "n_train_samples": int(_num_samples(X_train)),
        "fit_error": fit_error,
        "exception": exception,
        "must_raise": must_raise,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def _error_scores(scorer: Any, error_score: Any) -> Any:
    """``error_score`` for a failed fit: per metric for a multi-metric scorer, as sklearn.

    ``"raise"`` travels as NaN; the client raises on ``fit_error``.
    """
    value = float("nan") if error_score == "raise" else error_score
    names = getattr(scorer, "_scorers", None)
    return {name: value for name in names} if isinstance(names, dict) else value


def _head_params(params: dict, X: Any, size: int) -> dict:
    """The first ``size`` rows of the sample-aligned parameters (learning curves)."""
    import numpy as np
    from sklearn.utils.validation import _check_method_params

    return _check_method_params(X, params=params, indices=np.arange(size))


def _portable(exc: BaseException) -> bytes | None:
    """The exception pickled by value (its class may exist only in the client's
    notebook), or None if it cannot be pickled at all."""
    import cloudpickle

    try:
        return cloudpickle.dumps(exc)
    except Exception:  # an unpicklable attribute: the traceback text still goes back
        return None


def evaluate_many(
    estimator: Any, scorer: Any, return_train_score: bool, error_score: Any, items: list
) -> list[dict]:
    """``evaluate`` for a batch of ``(candidate, split, path, params)``: one message
    and one scheduler round trip for several short fits."""
    return [
        evaluate(estimator, scorer, return_train_score, error_score, c, s, path, params)
        for c, s, path, params in items
    ]


def split_sizes(path: str) -> tuple[int, int]:
    """Number of training and test samples of one split (for learning curves)."""
    from sklearn.utils.validation import _num_samples

    X_train, _, X_test, _ = load_split(path)
    return int(_num_samples(X_train)), int(_num_samples(X_test))


def refit(estimator: Any, params: dict, path: str) -> tuple[bytes, float]:
    """Fit a clone with ``params`` on the whole training set in ``path``
    (``(X, y, fit_params)``); returns the fitted estimator pickled by value (its
    class may be the client's own) and the fit's seconds."""
    import cloudpickle
    import joblib
    from sklearn.base import clone

    X, y, fit_params = joblib.load(path, mmap_mode="r")
    model = clone(estimator).set_params(**clone(params, safe=False))
    start = time.perf_counter()
    if y is None:
        model.fit(X, **fit_params)
    else:
        model.fit(X, y, **fit_params)
    return cloudpickle.dumps(model), time.perf_counter() - start
