"""The payload's cost per (candidate, split) task against a raw ``LoadBalancedView.apply``.

On a local cluster of E engines, N tasks are submitted at once and waited for, three ways:

- ``raw no-op``: ``view.apply_async(noop)`` N times: ipyparallel's own floor;
- ``raw fit``: ``view.apply_async(fit_one, path, params)`` N times, where
  ``fit_one`` is the classic recipe at its leanest: memory-map the split once per
  engine (cached in the engine's namespace), clone, set the parameters, fit,
  return the test score;
- ``payload``: ``DistributedSearch`` over the same candidates and splits (and
  its progress, results arrays, retries, failure capture and timing per task).

Figures are wall / N in ms (throughput with E engines busy), best of
``--repeat`` rounds (each round runs the three in turn), and the client's CPU per
task. The payload's overhead is ``payload - raw fit``, taken per round (the two
ran back to back) and the median over rounds; the fit is cheap on
purpose (``DummyClassifier``, ``--estimator svc`` for real SVC fits on digits),
so the overhead is not lost in the noise of the fits.

Commands::

    python -m bench.overhead                 # 100 candidates x 5 splits, E=2
    python -m bench.overhead --estimator svc
    python -m bench.overhead --quick
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from typing import Any

from bench.common import (
    base_parser,
    controller_flags,
    local_cluster,
    machine_info,
    machine_line,
    table,
    write_json,
)


def noop() -> None:
    return None


def fit_one(estimator: Any, path: str, params: dict) -> float:
    """Engine side, raw recipe: split memory-mapped once per engine, then fit and score."""
    import joblib
    from sklearn.base import clone

    cache = globals().setdefault("_bench_splits", {})
    split = cache.get(path)
    if split is None:
        split = cache[path] = joblib.load(path, mmap_mode="r")
    X_train, y_train, X_test, y_test = split
    model = clone(estimator).set_params(**params)
    model.fit(X_train, y_train)
    return float(model.score(X_test, y_test))


def workload(name: str, quick: bool) -> tuple[Any, dict[str, list]]:
    if name == "dummy":
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="prior"), {
            "random_state": list(range(20 if quick else 100))
        }
    if name == "svc":
        from sklearn.svm import SVC

        return SVC(), {
            "C": [1.0, 10.0],
            "gamma": [1e-3, 1e-4] if quick else [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
        }
    raise ValueError(name)


def timed(fn: Any) -> tuple[float, float]:
    """(wall s, client CPU s) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__)
    parser.add_argument("--engines", "-E", type=int, default=2)
    parser.add_argument("--estimator", choices=["dummy", "svc"], default="dummy")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 5; --quick 2)")
    parser.add_argument("--controller-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args(argv)

    import ipyparallel as ipp
    from sklearn.datasets import load_digits
    from sklearn.model_selection import ParameterGrid, ShuffleSplit

    from payload import DistributedSearch, persist_cv_splits

    repeat = args.repeat or (2 if args.quick else 5)
    machine = machine_info()
    print(machine_line(machine), flush=True)
    estimator, grid = workload(args.estimator, args.quick)
    candidates = list(ParameterGrid(grid))
    raw_noop = ipp.interactive(noop)
    raw_fit = ipp.interactive(fit_one)
    walls: dict[str, list[float]] = {"raw no-op": [], "raw fit": [], "payload": []}
    cpus: dict[str, list[float]] = {k: [] for k in walls}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        X, y = load_digits(return_X_y=True)
        paths = [
            str(p)
            for p in persist_cv_splits(X, y, ShuffleSplit(5, test_size=0.25, random_state=42), tmp)
        ]
        pairs = [(params, path) for params in candidates for path in paths]
        n = len(pairs)
        cluster = local_cluster(args.engines, controller_flags(args.controller_arg))
        rc = cluster.start_and_connect_sync()
        try:
            rc.wait_for_engines(args.engines, timeout=180)
            view = rc.load_balanced_view()

            def run_noop() -> None:
                ars = [view.apply_async(raw_noop) for _ in range(n)]
                for ar in ars:
                    ar.get()

            def run_fit() -> None:
                ars = [view.apply_async(raw_fit, estimator, path, params) for params, path in pairs]
                scores = [ar.get() for ar in ars]
                assert len(scores) == n

            def run_payload() -> None:
                search = DistributedSearch(view, estimator, grid, paths, return_train_score=False)
                search.run()
                assert search.progress == (n, n)

            # Warm-up: imports, split caches and the payload's function cache on every engine.
            for fn in (run_noop, run_fit, run_payload):
                fn()
            for _ in range(repeat):
                for name, fn in (
                    ("raw no-op", run_noop),
                    ("raw fit", run_fit),
                    ("payload", run_payload),
                ):
                    wall, cpu = timed(fn)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
        finally:
            rc.close()
            cluster.stop_cluster_sync()

    ms = {k: 1000 * min(v) / n for k, v in walls.items()}
    cpu_ms = {k: 1000 * min(v) / n for k, v in cpus.items()}
    results = {
        "engines": args.engines,
        "estimator": args.estimator,
        "n_tasks": n,
        "repeat": repeat,
        "quick": args.quick,
        "walls_s": walls,
        "client_cpu_s": cpus,
        "ms_per_task": ms,
        "client_cpu_ms_per_task": cpu_ms,
        # Paired by round (the two ran back to back), median over rounds: robust to load swings.
        "overhead_ms_per_task": 1000 * statistics.median(
            (p - r) / n for p, r in zip(walls["payload"], walls["raw fit"])
        ),
        "overhead_min_based_ms_per_task": ms["payload"] - ms["raw fit"],
        "overhead_vs_noop_ms_per_task": ms["payload"] - ms["raw no-op"],
    }
    rows = [[k, ms[k], cpu_ms[k], ms[k] - ms["raw fit"]] for k in walls]
    title = (
        f"\n{n} tasks ({len(candidates)} candidates x {len(paths)} splits, {args.estimator}) "
        f"on {args.engines} engines"
    )
    print(table(rows, ["method", "ms/task", "client CPU ms/task", "vs raw fit ms"], title))
    print(
        f"\npayload overhead: {results['overhead_ms_per_task']:+.3f} ms per task beyond a raw "
        f"apply of the same fit (median of {repeat} paired rounds)"
    )
    path = write_json("overhead", results, machine, args.json)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
