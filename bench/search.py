"""The payload's search on E engines against scikit-learn on the same host and splits.

Three methods run the same grid on the same cross-validation splits:

- ``serial``: ``GridSearchCV(n_jobs=None)``, BLAS pinned to one thread (as in
  every parallel worker below), so efficiency is measured against one core;
- ``loky``: ``GridSearchCV(n_jobs=E)``, joblib's default backend;
- ``ours``: ``payload.DistributedSearch`` on a local ``ipyparallel.Cluster(n=E)``
  over the splits persisted by ``payload.persist_cv_splits`` (memory-mapped).

Each method runs in its own child process, so its peak memory is its own: the PSS
of the child's whole process tree (parent + loky workers; client + controller +
engines), sampled by the parent every ``--pss-interval`` s. The table splits ours
into client + engines (the search proper, the figure set against loky's
parent + workers) and the controller, which on a real cluster runs on the master.

Start-up is timed apart from the search for both parallel methods: for ours the
cluster start, the engines' registration and their first import of scikit-learn;
for loky the spawning of its (reusable) workers and the same import. Then each
search runs ``--repeat`` times on the warm pool and the best wall time counts.
``--rounds R`` runs the whole set of methods R times, interleaved, so a CPU whose
speed drifts (a VM's often does) weighs on every method alike.
``refit=False`` and no train scores everywhere: ours has no refit.

efficiency = (serial wall / E) / wall. On a busy machine wall times mean little,
so the CPU time (user + system) of each method's whole process tree during the
search is reported too: CPU eff = serial CPU / CPU is the share of the CPU spent
on the fits themselves, whatever the load. Every mean validation score and the
best parameters must agree across methods (``assert_allclose``, atol 1e-12).

Our local controller gets provision's flags (``TaskScheduler.hwm``, see
``provision.nodes.engines.TASK_HWM``). ``--controller-arg``/``--engine-arg`` pass
more flags to our controller and engines, e.g. ``--controller-arg=--TaskScheduler.hwm=1``
(ipyparallel's default) or, for lighter
engines, ``--engine-arg=--IPEngine.enable_nanny=False`` (ipyparallel starts a
~27 MiB nanny process beside every engine by default).

Workloads: ``digits`` (the seed grid: SVC, C in logspace(-1, 2, 4), gamma in
logspace(-4, 0, 5), 5 ShuffleSplit splits, test_size 0.25, random_state 42) and
``synthetic`` (``make_classification`` with ``--samples`` x ``--features``, same
grid and splits; the default 3000 x 100 takes a few minutes for all three
methods on 2 cores).

Commands::

    python -m bench.search                        # both workloads, E=2
    python -m bench.search --quick                # smoke size (CI)
    python -m bench.search --repeat 2 --rounds 3 --workloads digits   # the README figures
    # a 16-core host, the 20000 x 200 set (the serial baseline alone takes about
    # 16 times the parallel wall; add --methods loky ours to skip it, and with it
    # the efficiency column):
    python -m bench.search --engines 16 --workloads synthetic --samples 20000 --features 200

If ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are set on this processor, unset
both in the benchmark command alone: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
python -m bench.search``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import (
    ROOT,
    PeakPSS,
    base_parser,
    controller_flags,
    engine_flags,
    local_cluster,
    machine_info,
    machine_line,
    mib,
    table,
    write_json,
)

METHODS = ("serial", "loky", "ours")
SEED = 42
N_SPLITS = 5
TEST_SIZE = 0.25


def grid(quick: bool) -> dict[str, list[float]]:
    if quick:
        return {"C": [1.0, 10.0], "gamma": [1e-3]}
    return {"C": np.logspace(-1, 2, 4).tolist(), "gamma": np.logspace(-4, 0, 5).tolist()}


def load_workload(name: str, samples: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)
    if name == "synthetic":
        from sklearn.datasets import make_classification

        return make_classification(
            n_samples=samples,
            n_features=features,
            n_informative=max(2, features // 2),
            random_state=0,
        )
    raise ValueError(f"unknown workload {name!r}")


def splitter() -> Any:
    from sklearn.model_selection import ShuffleSplit

    return ShuffleSplit(n_splits=N_SPLITS, test_size=TEST_SIZE, random_state=SEED)


def tree_cpu(by_role: dict[str, float] | None = None) -> float:
    """CPU seconds (user + system) used so far by this process and its descendants alive now.

    With ``by_role``, also add each process's seconds under its role (client,
    controller, engine, worker, other).
    """
    from bench.common import role_of, tree

    total = 0.0
    me = os.getpid()
    for proc in tree([me]):
        try:
            times = proc.cpu_times()
        except psutil.Error:  # exited since the tree was listed
            continue
        seconds = times.user + times.system
        total += seconds
        if by_role is not None:
            role = role_of(proc, [me])
            by_role[role] = by_role.get(role, 0.0) + seconds
    return total


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before.get(role, 0.0) for role in after}


def timeline(ars: list[Any]) -> dict[str, Any]:
    """Where the engines' time went, from ipyparallel's per-task engine timestamps.

    Over the span from the first task started to the last completed, E engines
    have E x span seconds: ``busy`` (a task ran, unpickling and result included),
    ``gaps`` (idle between two tasks on one engine: the round trip to the
    scheduler for the next task), ``head`` (before an engine's first task) and
    ``tail`` (after an engine's last task, waiting for the others to finish).
    """
    by_engine: dict[int, list[tuple[float, float]]] = {}
    for ar in ars:
        md = ar.metadata
        if md.get("started") is None or md.get("completed") is None:
            continue
        by_engine.setdefault(md["engine_id"], []).append(
            (md["started"].timestamp(), md["completed"].timestamp())
        )
    if not by_engine:
        return {}
    first = min(t[0] for ts in by_engine.values() for t in ts)
    last = max(t[1] for ts in by_engine.values() for t in ts)
    span = last - first
    busy = gaps = head = tail = 0.0
    n = 0
    for ts in by_engine.values():
        ts.sort()
        n += len(ts)
        busy += sum(b - a for a, b in ts)
        gaps += sum(max(0.0, ts[i + 1][0] - ts[i][1]) for i in range(len(ts) - 1))
        head += ts[0][0] - first
        tail += last - ts[-1][1]
    total = span * len(by_engine)
    return {
        "span_s": span,
        "tasks": n,
        "busy_share": busy / total,
        "gap_share": gaps / total,
        "head_share": head / total,
        "tail_share": tail / total,
        "gap_ms_per_task": 1000 * gaps / max(1, n - len(by_engine)),
    }


def _warm() -> int:
    """Engine/worker warm-up: the imports a first fit would pay."""
    import os

    import sklearn.model_selection  # noqa: F401
    import sklearn.svm  # noqa: F401

    return os.getpid()


# -- children: one method each, in a fresh process -------------------------------


def run_child(method: str, spec: dict[str, Any]) -> dict[str, Any]:
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    X, y = load_workload(spec["workload"], spec["samples"], spec["features"])
    param_grid = spec["grid"]
    engines = spec["engines"]
    out: dict[str, Any] = {"method": method, "walls": [], "cpus": [], "startup": None}
    if method in ("serial", "loky"):
        cv = list(splitter().split(X, y))
        n_jobs = None if method == "serial" else engines
        if method == "loky":
            from joblib import Parallel, delayed

            start = time.perf_counter()
            pids = Parallel(n_jobs=engines)(delayed(_warm)() for _ in range(4 * engines))
            out["startup"] = time.perf_counter() - start
            out["workers"] = len(set(pids))
        limits = threadpool_limits(1) if method == "serial" else None
        for _ in range(spec["repeat"]):
            search = GridSearchCV(SVC(), param_grid, cv=cv, refit=False, n_jobs=n_jobs)
            roles0: dict[str, float] = {}
            start, cpu0 = time.perf_counter(), tree_cpu(roles0)
            search.fit(X, y)
            out["walls"].append(time.perf_counter() - start)
            roles1: dict[str, float] = {}
            out["cpus"].append(tree_cpu(roles1) - cpu0)
            out.setdefault("cpu_roles", []).append(_cpu_delta(roles0, roles1))
        if limits is not None:
            limits.restore_original_limits()
        results = search.cv_results_
        out["best_params"] = search.best_params_
    elif method == "ours":
        import ipyparallel as ipp

        from payload import DistributedSearch, split_paths

        paths = split_paths(spec["splits_dir"], spec["workload"])
        start = time.perf_counter()
        cluster = local_cluster(
            engines, spec.get("controller_args", []), spec.get("engine_args", [])
        )
        rc = cluster.start_and_connect_sync()
        try:
            rc.wait_for_engines(engines, timeout=180)
            pids = rc[:].apply_sync(ipp.interactive(_warm))
            out["startup"] = time.perf_counter() - start
            out["workers"] = len(set(pids))
            view = rc.load_balanced_view()
            ars: list[Any] = []  # every task's AsyncResult, for its engine timestamps
            submit = view.apply_async

            def recording(*args: Any, **kwargs: Any) -> Any:
                ar = submit(*args, **kwargs)
                ars.append(ar)
                return ar

            view.apply_async = recording
            cpu = []
            for _ in range(spec["repeat"]):
                search = DistributedSearch(
                    view, SVC(), param_grid, paths, return_train_score=False, order=spec["order"],
                    batch_size=spec["batch_size"],
                )
                ars.clear()
                roles0: dict[str, float] = {}
                start, cpu0, tree0 = time.perf_counter(), time.process_time(), tree_cpu(roles0)
                search.run()
                out["walls"].append(time.perf_counter() - start)
                roles1: dict[str, float] = {}
                out["cpus"].append(tree_cpu(roles1) - tree0)
                out.setdefault("cpu_roles", []).append(_cpu_delta(roles0, roles1))
                cpu.append(time.process_time() - cpu0)
                out.setdefault("timeline", []).append(timeline(ars))
            out["client_cpu"] = cpu
            out["fits_per_engine"] = sorted(search.engines.values())
        finally:
            rc.close()
            cluster.stop_cluster_sync()
        results = search.cv_results_
        out["best_params"] = search.best_params_
    else:
        raise ValueError(method)
    out["mean_test_score"] = np.asarray(results["mean_test_score"]).tolist()
    out["params"] = [{k: float(v) for k, v in p.items()} for p in results["params"]]
    out["task_seconds"] = float(
        np.sum(results["mean_fit_time"] + results["mean_score_time"]) * N_SPLITS
    )
    out["best_params"] = {k: float(v) for k, v in out["best_params"].items()}
    return out


def spawn(method: str, spec: dict[str, Any], interval: float) -> dict[str, Any]:
    """Run one method in a child process; sample its tree's PSS meanwhile."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        cmd = [sys.executable, "-m", "bench.search", "--child", method,
               "--spec", json.dumps(spec), "--result", result.name]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        with PeakPSS([proc.pid], interval=interval) as sampler:
            code = proc.wait()
        process_s = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"bench.search child {method} exited {code}")
        out = json.loads(Path(result.name).read_text())
    out["memory"] = sampler.as_dict()
    out["process_s"] = process_s
    return out


# -- orchestration -----------------------------------------------------------------


_PER_REPEAT = ("walls", "cpus", "cpu_roles", "timeline", "client_cpu")


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's rounds as one run: per-repeat lists joined, the highest memory peak."""
    merged = dict(rounds[0])
    for key in _PER_REPEAT:
        if all(isinstance(r.get(key), list) for r in rounds):
            merged[key] = [x for r in rounds for x in r[key]]
    merged["memory"] = max((r["memory"] for r in rounds), key=lambda m: m["peak_pss_bytes"])
    return merged


def compare_scores(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every mean validation score and the best parameters, against the serial run."""
    ref = runs.get("serial") or next(iter(runs.values()))
    problems = []
    for method, run in runs.items():
        if run["params"] != ref["params"]:
            problems.append(f"{method}: candidates in another order")
            continue
        try:
            np.testing.assert_allclose(
                run["mean_test_score"], ref["mean_test_score"], rtol=0, atol=1e-12
            )
        except AssertionError as err:
            problems.append(f"{method}: mean_test_score differs: {err}")
        if run["best_params"] != ref["best_params"]:
            problems.append(f"{method}: best_params {run['best_params']} != {ref['best_params']}")
    return {"scores_agree": not problems, "problems": problems, "best_params": ref["best_params"]}


def summarize(workload: str, runs: dict[str, dict[str, Any]], engines: int) -> dict[str, Any]:
    serial = min(runs["serial"]["walls"]) if "serial" in runs else None
    loky = min(runs["loky"]["walls"]) if "loky" in runs else None
    serial_cpu = min(runs["serial"]["cpus"]) if "serial" in runs else None
    summary: dict[str, Any] = {"workload": workload, "methods": {}}
    for method, run in runs.items():
        wall = min(run["walls"])
        mem = run["memory"]
        roles = mem["peak_breakdown_bytes"]
        # Everything but the controller: client + engines; parent + workers + loky's tracker.
        search_pss = mem["peak_pss_bytes"] - roles.get("controller", 0)
        cpu = min(run["cpus"])
        summary["methods"][method] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "cpus_s": run["cpus"],
            "cpu_efficiency": None
            if serial_cpu is None or method == "serial"
            else serial_cpu / cpu,
            "walls_s": run["walls"],
            "startup_s": run["startup"],
            "efficiency": None
            if serial is None or method == "serial"
            else (serial / engines) / wall,
            "vs_loky": None if loky is None else wall / loky,
            "peak_pss_bytes": mem["peak_pss_bytes"],
            "peak_search_pss_bytes": search_pss,
            "peak_controller_pss_bytes": roles.get("controller"),
            "memory": mem,
            "task_seconds": run["task_seconds"],
            "client_cpu_s": run.get("client_cpu"),
            "fits_per_engine": run.get("fits_per_engine"),
            "process_s": run["process_s"],
            "timeline": run.get("timeline"),
            "cpu_by_role_s": run.get("cpu_roles"),
        }
    summary.update(compare_scores(runs))
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--engines", "-E", type=int, default=2, help="engines / loky workers (default 2)"
    )
    parser.add_argument(
        "--workloads", nargs="+", default=["digits", "synthetic"], choices=["digits", "synthetic"]
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="synthetic rows (default 3000; --quick 400)"
    )
    parser.add_argument(
        "--features", type=int, default=None, help="synthetic columns (default 100; --quick 20)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per method on the warm pool; the best counts"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every method this many times, interleaved (serial, loky, ours, serial, ...), "
        "so a CPU whose speed drifts weighs on all alike; the best wall counts",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--order", default="longest-first", help="DistributedSearch order (longest-first|given)"
    )
    parser.add_argument(
        "--batch-size",
        default="auto",
        type=lambda v: v if v == "auto" else int(v),
        help="DistributedSearch batch_size: auto (guided) or pairs per task, e.g. 1",
    )
    parser.add_argument(
        "--controller-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra ipcontroller flag for ours, e.g. --TaskScheduler.hwm=2 (repeatable)",
    )
    parser.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="ipengine flag for ours on top of provision's, "
        "e.g. --IPEngine.enable_nanny=True (repeatable)",
    )
    parser.add_argument(
        "--pss-interval", type=float, default=0.2, help="seconds between PSS samples"
    )
    parser.add_argument("--child", choices=METHODS, help=argparse_hidden())
    parser.add_argument("--spec", help=argparse_hidden())
    parser.add_argument("--result", help=argparse_hidden())
    args = parser.parse_args(argv)

    if args.child:
        out = run_child(args.child, json.loads(args.spec))
        Path(args.result).write_text(json.dumps(out))
        return out

    from payload import persist_cv_splits

    # Resolved here, not in the child: importing provision would weigh on its memory.
    controller_args = controller_flags(args.controller_arg)
    engine_args = engine_flags(args.engine_arg)
    samples = args.samples or (400 if args.quick else 3000)
    features = args.features or (20 if args.quick else 100)
    machine = machine_info()
    print(machine_line(machine), flush=True)
    workloads = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for workload in args.workloads:
            X, y = load_workload(workload, samples, features)
            persist_cv_splits(X, y, splitter(), tmp, name=workload)
            spec = {
                "workload": workload, "samples": samples, "features": features,
                "grid": grid(args.quick), "engines": args.engines, "repeat": args.repeat,
                "splits_dir": tmp, "order": args.order, "batch_size": args.batch_size,
                "controller_args": controller_args, "engine_args": engine_args,
            }
            rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
            for r in range(args.rounds):
                for method in args.methods:
                    print(f"{workload}: {method} (round {r + 1}/{args.rounds}) ...", flush=True)
                    rounds[method].append(spawn(method, spec, args.pss_interval))
            runs = {m: merge_rounds(rs) for m, rs in rounds.items()}
            summary = summarize(workload, runs, args.engines)
            summary["shape"] = list(X.shape)
            summary["n_candidates"] = len(runs[args.methods[0]]["params"])
            summary["n_splits"] = N_SPLITS
            workloads.append(summary)
            print(render(summary, args.engines), flush=True)
    data = {
        "engines": args.engines,
        "repeat": args.repeat,
        "rounds": args.rounds,
        "order": args.order,
        "batch_size": args.batch_size,
        "controller_args": controller_args,
        "engine_args": engine_args,
        "quick": args.quick,
        "workloads": workloads,
        "scores_agree": all(w["scores_agree"] for w in workloads),
    }
    path = write_json("search", data, machine, args.json)
    print(f"\nwrote {path}")
    for w in workloads:
        for problem in w["problems"]:
            print(f"SCORES DISAGREE ({w['workload']}): {problem}", file=sys.stderr)
    if not data["scores_agree"]:
        raise SystemExit(1)
    return data


def render(summary: dict[str, Any], engines: int) -> str:
    rows = []
    for method, m in summary["methods"].items():
        rows.append([
            method,
            m["startup_s"],
            m["wall_s"],
            m["efficiency"],
            m["vs_loky"],
            m["cpu_s"],
            m["cpu_efficiency"],
            mib(m["peak_search_pss_bytes"]),
            mib(m["peak_controller_pss_bytes"]),
            mib(m["peak_pss_bytes"]),
        ])
    shape = "x".join(map(str, summary.get("shape", [])))
    title = (
        f"\n{summary['workload']} ({shape}), {summary.get('n_candidates')} candidates x "
        f"{summary.get('n_splits')} splits, E={engines}; scores agree: {summary['scores_agree']}"
    )
    header = ["method", "startup s", "wall s", "efficiency", "wall/loky", "CPU s", "CPU eff",
              "search PSS MiB", "controller MiB", "tree PSS MiB"]
    text = table(rows, header, title)
    ours = summary["methods"].get("ours", {})
    if ours.get("timeline"):
        best = min(range(len(ours["walls_s"])), key=ours["walls_s"].__getitem__)
        t = ours["timeline"][best]
        if t:
            text += (
                f"\nours, engine time over the search span: busy {t['busy_share']:.1%}, "
                f"gaps between tasks {t['gap_share']:.1%} ({t['gap_ms_per_task']:.1f} ms each), "
                f"head {t['head_share']:.1%}, tail {t['tail_share']:.1%}"
            )
    for method, m in summary["methods"].items():
        if m.get("cpu_by_role_s"):
            best = min(range(len(m["walls_s"])), key=m["walls_s"].__getitem__)
            roles = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(m["cpu_by_role_s"][best].items()) if v > 0.005
            )
            text += f"\n{method} CPU s by process: {roles}"
    return text


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
