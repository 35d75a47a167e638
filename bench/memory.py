"""Memory the split data adds on E engines of one host: memory-mapped vs pushed.

A dataset (``make_classification``, ``--samples`` x ``--features`` float64) is
split by a 5-fold ``ShuffleSplit`` and persisted with ``payload.persist_cv_splits``;
"one copy" is the size of those split files. On a local cluster of E engines:

1. ``mmap`` (the payload's way): every engine loads every split through the
   payload's own engine code (``payload._engine.load_split``: ``joblib.load(...,
   mmap_mode="r")``, cached per engine) and reads every page of it. The memory
   added is the PSS summed over the engines after, minus before. The pages are
   the host's page cache, mapped by all E engines: PSS counts each 1/E per engine,
   so the sum should be one copy.
2. ``push`` (the naive way): the same arrays are sent to every engine
   (``DirectView.push``), each engine holding its own copy: E copies.

Before measuring, each engine has imported everything and loaded a tiny split
once, so the figures hold the data alone, not the imports.

Commands::

    python -m bench.memory                 # 20000 x 200 (32 MB per split file), E=2
    python -m bench.memory --engines 8     # memory needs no cores: E can exceed them
    python -m bench.memory --quick
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import payload._remote  # noqa: F401 - registers payload._engine to travel by value
from bench.common import (
    base_parser,
    controller_flags,
    local_cluster,
    machine_info,
    machine_line,
    mib,
    pss_of,
    table,
    tree,
    write_json,
)
from payload._engine import load_split


def _load_all(paths: list[str]) -> int:
    """Engine side: load every split through the payload's engine code, read every page."""
    import numpy as np

    total = 0
    for path in paths:
        for array in load_split(path):  # shipped by value, as the payload ships it
            total += int(np.asarray(array).nbytes)
            np.add.reduce(np.asarray(array).ravel())  # touch every page
    return total


def _drop_splits() -> int:
    """Engine side: forget the cached splits (unmaps them), collect garbage."""
    import gc
    import sys

    state = sys.modules.get("_payload_engine_state")
    n = 0
    if state is not None:
        n = len(state.splits)
        state.splits.clear()
    gc.collect()
    return n


def _touch(*splits: tuple) -> int:
    """Engine side: read every page of the pushed arrays (passed as references)."""
    import numpy as np

    total = 0
    for split in splits:
        for array in split:
            total += int(array.nbytes)
            np.add.reduce(np.asarray(array).ravel())
    return total


def engine_pss(pids: list[int]) -> int:
    """PSS summed over the engines (their nanny processes included, unchanged by data)."""
    return sum(pss_of(tree(pids)).values())


def settle(pids: list[int], rounds: int = 3, pause: float = 0.3) -> int:
    """PSS once it stops moving (freed memory returns to the OS with a small delay)."""
    values = []
    for _ in range(rounds):
        time.sleep(pause)
        values.append(engine_pss(pids))
    return min(values[-2:]) if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__)
    parser.add_argument("--engines", "-E", type=int, default=2)
    parser.add_argument(
        "--samples", type=int, default=None, help="rows (default 20000; --quick 4000)"
    )
    parser.add_argument(
        "--features", type=int, default=None, help="columns (default 200; --quick 50)"
    )
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args(argv)

    import cloudpickle
    import ipyparallel as ipp
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.model_selection import ShuffleSplit

    from payload import persist_cv_splits

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    samples = args.samples or (4000 if args.quick else 20000)
    features = args.features or (50 if args.quick else 200)
    machine = machine_info()
    print(machine_line(machine), flush=True)

    X, y = make_classification(
        n_samples=samples, n_features=features, n_informative=features // 2, random_state=0
    )
    cv = ShuffleSplit(n_splits=args.splits, test_size=0.25, random_state=42)
    results: dict[str, Any] = {
        "engines": args.engines,
        "shape": [samples, features],
        "splits": args.splits,
        "quick": args.quick,
        "x_bytes": int(X.nbytes),
    }
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        paths = [str(p) for p in persist_cv_splits(X, y, cv, Path(tmp) / "data", name="data")]
        tiny = [
            str(p) for p in persist_cv_splits(X[:50], y[:50], 2, Path(tmp) / "tiny", name="tiny")
        ]
        one_copy = sum(os.path.getsize(p) for p in paths)
        results["one_copy_bytes"] = one_copy
        del X, y

        cluster = local_cluster(args.engines, controller_flags())
        rc = cluster.start_and_connect_sync()
        try:
            rc.wait_for_engines(args.engines, timeout=180)
            dview = rc[:]
            dview.use_cloudpickle()
            pids = dview.apply_sync(os.getpid)
            # Warm-up: imports and the payload's engine state, on a tiny split.
            dview.apply_sync(_load_all, tiny)
            dview.apply_sync(_drop_splits)

            before = settle(pids)
            start = time.perf_counter()
            touched = dview.apply_sync(_load_all, paths)
            mmap_seconds = time.perf_counter() - start
            after = settle(pids)
            results["mmap"] = {
                "before_bytes": before,
                "after_bytes": after,
                "added_bytes": after - before,
                "per_engine_bytes_read": touched,
                "seconds": mmap_seconds,
            }
            dropped = dview.apply_sync(_drop_splits)
            assert all(n == len(paths) for n in dropped), dropped

            before = settle(pids)
            names = []
            start = time.perf_counter()
            for i, path in enumerate(paths):
                arrays = tuple(np.ascontiguousarray(a) for a in joblib.load(path))
                name = f"bench_split_{i}"
                dview.push({name: arrays}, block=True)
                names.append(name)
                del arrays
            dview.apply_sync(_touch, *[ipp.Reference(name) for name in names])
            push_seconds = time.perf_counter() - start
            after = settle(pids)
            results["push"] = {
                "before_bytes": before,
                "after_bytes": after,
                "added_bytes": after - before,
                "seconds": push_seconds,
            }
            dview.execute(f"del {', '.join(names)}; import gc; gc.collect()", block=True)
        finally:
            rc.close()
            cluster.stop_cluster_sync()

    for key in ("mmap", "push"):
        results[key]["x_one_copy"] = results[key]["added_bytes"] / one_copy
    results["mmap_vs_push"] = results["mmap"]["added_bytes"] / max(
        1, results["push"]["added_bytes"]
    )
    rows = [
        [
            "mmap (payload)",
            args.engines,
            mib(results["mmap"]["added_bytes"]),
            results["mmap"]["x_one_copy"],
            results["mmap"]["seconds"],
        ],
        [
            "push to each engine",
            args.engines,
            mib(results["push"]["added_bytes"]),
            results["push"]["x_one_copy"],
            results["push"]["seconds"],
        ],
    ]
    title = (f"\nsplit data on {args.engines} engines of one host: {samples} x {features} float64, "
             f"{args.splits} splits, one copy = {mib(one_copy)} MiB")
    print(table(rows, ["method", "engines", "added PSS MiB", "x one copy", "load s"], title))
    path = write_json("memory", results, machine, args.json)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
