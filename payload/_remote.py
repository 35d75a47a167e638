"""Client-side plumbing shared by the search and the learning curves.

Engines only need numpy/scipy/scikit-learn/joblib/cloudpickle/ipyparallel. Task
functions live in ``payload._engine`` and travel by value: this module registers
``_engine`` with ``cloudpickle.register_pickle_by_value`` and pickles the task
function (with the estimator and scorer bound in) *once* per search into a blob.
Every task then sends the same small blob plus its own arguments; the split data
never goes over the wire, only its path. Failed tasks are retried from here (see
``TaskSender``).

The function ipyparallel itself sees is ``_run_task``, marked ``interactive`` so
that it is shipped as code whatever serializer the client uses (ipyparallel's
default pickle canning or ``use_cloudpickle()``), and it unpickles the blob once
per engine.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import cloudpickle
import ipyparallel as ipp
from ipyparallel.error import RemoteError, TaskAborted
from sklearn.exceptions import FitFailedWarning

from . import _engine, _engine_files, _engine_models

cloudpickle.register_pickle_by_value(_engine)
cloudpickle.register_pickle_by_value(_engine_files)
cloudpickle.register_pickle_by_value(_engine_models)
log = logging.getLogger(__name__)

# How many distinct task functions an engine keeps unpickled.
_MAX_CACHED_FUNCTIONS = 16


def _run_task_impl(
    digest: str,
    blob: bytes,
    args: bytes,
    data: tuple = (),
    state_name: str = _engine.STATE_MODULE,
    max_cached: int = _MAX_CACHED_FUNCTIONS,
) -> Any:
    """Engine side: unpickle the task function once per engine, then call it.

    It runs with the engine's namespace as globals (``interactive``), so it
    refers to nothing from this module; its constants come in as defaults
    (positional: ipyparallel's function canning drops keyword-only defaults).
    ``data`` (bytes) are passed after the unpickled arguments: ipyparallel
    sends them as zero-copy message frames instead of pickling them.
    """
    import pickle
    import sys

    state = sys.modules.get(state_name)
    func = state.functions.get(digest) if state is not None else None
    if func is None:
        engine_state, func = pickle.loads(blob)
        state = engine_state()
        while len(state.functions) >= max_cached:
            state.functions.pop(next(iter(state.functions)))
        state.functions[digest] = func
    return func(*pickle.loads(args), *data)


_run_task = ipp.interactive(_run_task_impl)


def load_balanced_view(view_or_client: Any) -> ipp.LoadBalancedView:
    """Accept a Client, a DirectView or a LoadBalancedView; return a load-balanced view."""
    if isinstance(view_or_client, ipp.LoadBalancedView):
        return view_or_client
    if isinstance(view_or_client, ipp.Client):
        return view_or_client.load_balanced_view()
    if isinstance(view_or_client, ipp.DirectView):
        targets = view_or_client.targets
        targets = None if targets in (None, "all") else targets
        return view_or_client.client.load_balanced_view(targets)
    raise TypeError(f"expected an ipyparallel Client or view, got {type(view_or_client).__name__}")


class TaskSender:
    """Submit calls of one engine-side function (on a load-balanced view, or
    `apply` on a direct or broadcast one).

    Retries are done here, by resubmitting, rather than with the view's
    ``retries`` flag: ipyparallel 9.2's scheduler treats an *aborted* task as a
    failure, retries it on the other engines (which abort it again) and then
    leaves it queued forever, so ``abort()`` could never finish. Resubmitting
    from the client keeps abort clean and still moves a failed task off the
    engine that failed it, as the scheduler's retry would.
    """

    def __init__(self, view: Any, func: Callable) -> None:
        self.view = view
        self.blob = cloudpickle.dumps((_engine.engine_state, func))
        self.digest = hashlib.sha256(self.blob).hexdigest()[:24]

    def submit(self, *args: Any, avoid: int | None = None) -> ipp.AsyncResult:
        """Submit one call; only ``args`` (paths, indices, params) differ per task.

        ``avoid`` is an engine id to keep the task away from (a retry), unless
        it is the only engine left.
        """
        payload = cloudpickle.dumps(args)
        targets = self.view.targets
        if avoid is not None:
            ids = self.view.client.ids if targets is None else list(targets)
            others = [i for i in ids if i != avoid]
            targets = others or targets
        with self.view.temp_flags(retries=0, targets=targets, block=False):
            return self.view.apply_async(_run_task, self.digest, self.blob, payload)


    def apply(self, *args: Any, data: tuple = ()) -> ipp.AsyncResult:
        """Run the call once on every engine of a direct or broadcast view.

        ``data`` (bytes, memoryviews) go after ``args`` as message frames of
        their own, not through pickle.
        """
        payload = cloudpickle.dumps(args)
        return self.view.apply_async(_run_task, self.digest, self.blob, payload, tuple(data))


def call_on(view: Any, func: Callable, *args: Any, data: tuple = ()) -> ipp.AsyncResult:
    """``func(*args, *data)`` on each engine of a direct or broadcast ``view``,
    ``func`` shipped by value."""
    return TaskSender(view, func).apply(*args, data=data)


def forget(ar: ipp.AsyncResult) -> None:
    """Drop the client's per-message caches of a task whose result was read.

    ipyparallel purges them when both the reply and the task's iopub "idle"
    have arrived; iopub is a PUB socket that drops messages under load, so on
    long searches most entries would stay forever (measured: ~30 KB per task,
    ~300 MB client growth for 10,000 tasks). Results are streamed to the
    journal and the search's arrays, so nothing here is needed afterwards.
    """
    client = ar._client
    for msg_id in ar.msg_ids:
        client.results.pop(msg_id, None)
        client.metadata.pop(msg_id, None)
        client._futures.pop(msg_id, None)
        client._output_futures.pop(msg_id, None)


def engine_of(ar: ipp.AsyncResult) -> int | None:
    """Engine id a finished task ran (or died) on, if ipyparallel recorded it."""
    try:
        return ar["engine_id"]
    except (KeyError, IndexError, TimeoutError):  # no metadata: the task never reached one
        return None


def gather(
    sender: TaskSender, calls: dict[Any, tuple], retries: int, timeout: float | None = None
) -> dict[Any, Any]:
    """Run ``calls`` (key -> args) and block for all; failures come back as exceptions.

    A task that raised is resubmitted away from its engine up to ``retries``
    times; aborted tasks are not retried.
    """
    pending = {key: (sender.submit(*args), 0) for key, args in calls.items()}
    results: dict[Any, Any] = {}
    while pending:
        key, (ar, attempt) = next(iter(pending.items()))
        del pending[key]
        try:
            results[key] = ar.get(timeout)
            forget(ar)
        except TaskAborted as exc:
            results[key] = exc
        except TimeoutError:
            raise
        except Exception as exc:
            if attempt < retries:
                pending[key] = (sender.submit(*calls[key], avoid=engine_of(ar)), attempt + 1)
            else:
                results[key] = exc
    return {key: results[key] for key in calls}


def remote_error_text(exc: BaseException) -> str:
    """Traceback text of a task that raised on the engine (or never ran)."""
    if isinstance(exc, RemoteError):
        return "\n".join(exc.render_traceback())
    return f"{type(exc).__name__}: {exc}"


def task_failure(
    candidate: int, split: int, exc: BaseException, error_score: Any, train: bool
) -> dict:
    """The result of a pair whose task raised (retries exhausted): a failed fit,
    with the task's error as ``fit_error`` and ``exc`` to raise under "raise"."""
    nan = float("nan") if error_score == "raise" else float(error_score)
    return {
        "candidate": candidate,
        "split": split,
        "test_scores": nan,
        "train_scores": nan if train else None,
        "fit_time": 0.0,
        "score_time": 0.0,
        "n_test_samples": 0,
        "fit_error": "Task failed on the cluster:\n" + remote_error_text(exc),
        "exception": exc,
        "hostname": None,
        "pid": None,
    }


class RemoteTraceback(Exception):
    """The engine's traceback, chained as the cause of a re-raised engine exception."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def raise_remote(text: str, exception: Any) -> None:
    """Raise what a fit raised on an engine, with its type (``error_score="raise"``).

    ``exception`` is the exception pickled by the engine (or an exception
    object from this side, for a task that never ran); its engine traceback
    is chained as the cause. A failure that cannot be rebuilt raises
    RuntimeError with the traceback text.
    """
    if isinstance(exception, bytes):
        try:
            exception = cloudpickle.loads(exception)
        except Exception as e:  # its class cannot be rebuilt here: keep the text
            log.debug("engine exception not rebuilt: %r", e)
            exception = None
    if isinstance(exception, BaseException):
        raise exception from RemoteTraceback(text)
    raise RuntimeError(
        "A fit failed and error_score='raise'; the remaining tasks were aborted. "
        f"Traceback from the engine:\n{text}"
    )


def judge_fit_failures(fit_errors: list[str], n_fits: int, error_score: Any) -> None:
    """Raise if every fit failed, warn if some did (sklearn's wording and grouping).

    Mirrors ``sklearn.model_selection._validation._warn_or_raise_about_fit_failures``
    so users see the message they know from GridSearchCV.
    """
    if not fit_errors:
        return
    delimiter = "-" * 80 + "\n"
    summary = "\n".join(
        f"{delimiter}{count} fits failed with the following error:\n{error}"
        for error, count in Counter(fit_errors).items()
    )
    if len(fit_errors) == n_fits:
        raise ValueError(
            f"\nAll the {n_fits} fits failed.\n"
            "It is very likely that your model is misconfigured.\n"
            "You can try to debug the error by setting error_score='raise'.\n\n"
            f"Below are more details about the failures:\n{summary}"
        )
    warnings.warn(
        f"\n{len(fit_errors)} fits failed out of a total of {n_fits}.\n"
        "The score on these train-test partitions for these parameters"
        f" will be set to {error_score}.\n"
        "If these failures are not expected, you can try to debug them "
        "by setting error_score='raise'.\n\n"
        f"Below are more details about the failures:\n{summary}",
        FitFailedWarning,
        stacklevel=3,
    )
