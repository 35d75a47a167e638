"""put-data --partition: rows cut into one shard per node, each node holding its own.

For payloads that train on partitions (``run NAME sgd-average``): a held-out
part (``--test-size``, stratified for class targets) goes to every node, and the
other rows are cut into one shard per node running engines (stratified too, so
every shard sees every class); a node receives its own shard and the held-out
part, nothing else. The local copy keeps everything, so one model on all rows
can be fitted on the laptop for comparison. Shards are cut for the nodes there
are: nodes added later get none (`provision.data.ship_recorded`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from provision import splitters
from provision.context import Context
from provision.data import (
    PARTITION,
    Dataset,
    ShipResult,
    as_dataset,
    dataset_entry,
    new_cache_dir,
    record_dataset,
    running_nodes,
    ship,
    summary,
)
from provision.errors import BadInput

TEST_FILE = "test.joblib"
DEFAULT_TEST_SIZE = 0.2


def persist_partition(
    data: Dataset, n_shards: int, test_size: float | int, seed: int | None
) -> tuple[Path, str, list[str], list[str]]:
    """Held-out rows and ``n_shards`` shards of the rest (stratified for class
    targets) in the local cache: (dir, digest, shard file names, warnings)."""
    from sklearn.utils.multiclass import type_of_target

    from payload import partition_rows
    from payload.sgd import shard_name
    from payload.splits import dump_atomic

    X, y = data.X, data.y
    stratify = type_of_target(y) in ("binary", "multiclass")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train, test, shards = partition_rows(
                y, n_shards, test_size=test_size, random_state=seed, stratify=stratify
            )
        except ValueError as e:
            raise BadInput(f"--partition: cannot cut {data.label} into {n_shards} shard(s) "
                           f"and a held-out part: {e}") from e
    names = [shard_name(i) for i in range(n_shards)]
    with new_cache_dir() as (tmp, final):
        dump_atomic((X[test], y[test]), tmp / TEST_FILE)
        for name, part in zip(names, shards, strict=True):
            dump_atomic((X[train[part]], y[train[part]]), tmp / name)
    return final[0], final[0].name, names, [str(w.message) for w in caught]


def put_partition(
    ctx: Context,
    dataset: str | Dataset | tuple,
    *,
    test_size: float | int = DEFAULT_TEST_SIZE,
    seed: int | None = 42,
    target: str | None = None,
    label: str | None = None,
) -> ShipResult:
    """Hold out `test_size` of the rows (every node gets them) and cut the rest into
    one shard per running node, each node receiving its own shard only."""
    data = as_dataset(dataset, target, None, label)
    test_size = splitters.fraction_or_rows(test_size)
    nodes = sorted((n for n in running_nodes(ctx) if ctx.engines_on(n)), key=lambda n: n.label)
    if not nodes:
        raise BadInput(f"--partition: cluster {ctx.name!r} has no node running engines")
    local_dir, digest, shards, caught = persist_partition(data, len(nodes), test_size, seed)
    for message in caught:
        ctx.reporter.warn(f"--partition: {message}")
    owner = {node.label: shard for node, shard in zip(nodes, shards, strict=True)}
    result = ship(ctx, nodes, local_dir, digest,
                  files_for={n: [TEST_FILE, s] for n, s in owner.items()})
    result.shards = owner
    record_dataset(ctx, data.label, {
        "layout": PARTITION, "digest": digest, "local_dir": str(local_dir),
        "remote_dir": result.remote_dir, "files": result.files, "shards": owner,
        "test_file": TEST_FILE, "test_size": test_size, "seed": seed, **summary(data),
    })
    return result


def partition_inputs(name: str, label: str) -> dict[str, Any]:
    """What a payload over partitioned data takes: ``shard_paths`` and ``test_path`` as
    the nodes see them, and ``reference_data`` (every training row, from the local
    copy; None if it is gone)."""
    import joblib

    entry = dataset_entry(name, label)
    if entry.get("layout") != PARTITION:
        raise BadInput(f"--data: {label!r} holds CV splits; this payload needs partitioned rows: "
                       f"run `provision put-data {name} DATASET --partition`")
    shards = sorted(set(entry["shards"].values()))
    local = Path(entry["local_dir"])
    reference = None
    if all((local / s).is_file() for s in shards):
        parts = [joblib.load(local / s) for s in shards]
        reference = tuple(_concat([p[k] for p in parts]) for k in (0, 1))
    return {
        "shard_paths": [f"{entry['remote_dir']}/{s}" for s in shards],
        "test_path": f"{entry['remote_dir']}/{entry['test_file']}",
        "reference_data": reference,
    }


def _concat(parts: list[Any]) -> Any:
    import scipy.sparse as sp

    return sp.vstack(parts).tocsr() if sp.issparse(parts[0]) else np.concatenate(parts)
