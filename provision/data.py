"""put-data: a dataset's CV splits, or its rows partitioned, persisted once and
shipped once per host.

Splits are written with `payload.persist_cv_splits` (uncompressed joblib, so
engines open them with ``mmap_mode='r'`` and every engine on a host shares one
copy in the page cache). The directory is named by the content hash of its
files, both locally and on the nodes; a node that already holds a directory
with that name and a matching manifest gets nothing, so a second run moves no
bytes, and nodes added later receive exactly what the others have.

A *partitioned* dataset (``--partition``, for ``run NAME sgd-average``) is
different: a held-out part goes to every node, and the other rows are cut into
one shard per node, each node receiving its own shard only. Nodes added later
get none of it (the shards were cut for the nodes there were).

The splitter is anything scikit-learn takes as ``cv``: a name from
`provision.splitters` with its flags, a splitter object, or an iterable of
(train, test) indices. Loading, splitting and partitioning are checked before
anything is written or shipped (`plan`): bad input creates nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from provision import cloud, splitters, state
from provision.cloud.common import InstanceInfo
from provision.context import Context
from provision.datasets import Dataset, load_dataset
from provision.errors import BadInput
from provision.shipping import ShipResult, file_hashes, footprint, remote_dir, ship

__all__ = ["Dataset", "ShipResult", "file_hashes", "footprint", "load_dataset", "make_cv", "plan",
           "put_data", "remote_dir", "ship"]
PARTITION = "partition"  # the layout of a partitioned dataset's record


def make_cv(
    kind: str = "shuffle",
    n_splits: int | None = None,
    test_size: float | None = None,
    seed: int | None = None,
    *,
    n_repeats: int | None = None,
    shuffle: bool | None = None,
    groups: bool = False,
) -> Any:
    """The splitter a user names on the command line (see `provision.splitters`)."""
    spec = splitters.CVSpec(kind, n_splits, n_repeats, test_size, seed, shuffle, groups)
    return splitters.make_splitter(spec)


@dataclass
class Plan:
    """A dataset loaded, checked and split (indices only): ready to persist."""

    dataset: Dataset
    cv: Any  # the splitter object (or the iterable the caller gave)
    splits: list[tuple[np.ndarray, np.ndarray]]
    warnings: list[str]  # scikit-learn's, e.g. a class smaller than the folds


def plan(
    dataset: str | Dataset | tuple,
    cv: Any = "shuffle",
    *,
    n_splits: int | None = None,
    n_repeats: int | None = None,
    test_size: float | None = None,
    seed: int | None = None,
    shuffle: bool | None = None,
    groups: Any = None,
    target: str | None = None,
    label: str | None = None,
) -> Plan:
    """Load `dataset` and compute its splits; everything wrong with them is BadInput.

    `dataset`: a name or file (see `provision.datasets`), a loaded `Dataset`, or
    ``(X, y)``. `cv`: a splitter name with its flags, or any splitter object or
    iterable of (train, test) pairs (then the flags must be left unset).
    `groups`: a column/array name or .npy file for a named dataset, labels for
    ``(X, y)``.
    """
    data = as_dataset(dataset, target, groups, label)
    if isinstance(cv, str):
        splitter = make_cv(cv, n_splits, test_size, seed, n_repeats=n_repeats, shuffle=shuffle,
                           groups=data.groups is not None)
    else:
        flags = {"n_splits": n_splits, "n_repeats": n_repeats, "test_size": test_size,
                 "seed": seed, "shuffle": shuffle}
        given = [name for name, value in flags.items() if value is not None]
        if given:
            raise BadInput(f"{', '.join(given)}: do not apply when cv is a splitter object")
        splitter = cv
    pairs, caught = splitters.compute_splits(splitter, data.X, data.y, data.groups, data.label)
    return Plan(data, splitter, pairs, caught)


def as_dataset(
    dataset: str | Dataset | tuple, target: str | None, groups: Any, label: str | None
) -> Dataset:
    """A loaded `Dataset` from a name or file, ``(X, y)``, or one already loaded."""
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, str):
        return load_dataset(dataset, target, groups, label)
    from provision.datasets import check_xy

    X, y = dataset
    return Dataset(*check_xy(X, y, label or "dataset", groups), label=label or "dataset")


def _digest(directory: Path) -> str:
    """Content hash of the data files (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(directory.iterdir()):
        if p.name == "manifest.json":
            continue
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@contextmanager
def new_cache_dir() -> Iterator[tuple[Path, list[Path]]]:
    """A temp dir in the local cache; on success the caller's ``final[0]`` is its
    content-named home (an existing one with the same content is reused)."""
    cache = state.root() / "data"
    state.mkdir_private(cache)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".new-"))
    final: list[Path] = []
    try:
        yield tmp, final
        digest = _digest(tmp)
        final.append(cache / digest)
        if final[0].exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(final[0])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def persist_local(X: Any, y: Any, cv: Any, groups: Any = None) -> tuple[Path, str]:
    """Write the splits once into the local cache, named by their content hash."""
    from payload import persist_cv_splits

    with new_cache_dir() as (tmp, final):
        persist_cv_splits(X, y, cv, tmp, groups=groups)
    return final[0], final[0].name


def ship_recorded(ctx: Context, nodes: Sequence[InstanceInfo]) -> None:
    """Give new nodes the datasets already put on the cluster (addnode, replacements);
    partitions were cut for the nodes of their time, so new ones get none."""
    for entry in state.load(ctx.name).get("datasets", {}).values():
        if entry.get("layout") != PARTITION:
            ship(ctx, nodes, Path(entry["local_dir"]), entry["digest"])


def dataset_entry(name: str, label: str) -> dict[str, Any]:
    """The record of dataset `label` on cluster `name`, as put-data left it."""
    datasets = state.load(name).get("datasets", {})
    if label not in datasets:
        have = ", ".join(sorted(datasets)) or "none"
        raise BadInput(
            f"--data: {label!r} is not on cluster {name!r} (have: {have}); "
            f"run `provision put-data {name} {label}` first"
        )
    return datasets[label]


def split_paths(name: str, label: str) -> list[str]:
    """The split files of dataset `label` on cluster `name`'s nodes."""
    entry = dataset_entry(name, label)
    if entry.get("layout") == PARTITION:
        raise BadInput(f"--data: {label!r} is partitioned (put-data --partition); this payload "
                       f"needs CV splits: put it again without --partition (--label to keep both)")
    return [f"{entry['remote_dir']}/{f}" for f in entry["files"]]


def running_nodes(ctx: Context) -> list[InstanceInfo]:
    """The cluster's running nodes, or bad input if there are none."""
    info = cloud.describe_cluster(ctx.region, ctx.name)
    if not info.nodes:
        raise BadInput(f"NAME: cluster {ctx.name!r} has no running nodes: run `provision up` first")
    return list(info.nodes)


def record_dataset(ctx: Context, label: str, entry: dict[str, Any]) -> None:
    """Remember dataset `label` in the cluster's local record (`run --data` finds it)."""
    datasets = state.load(ctx.name).get("datasets", {})
    datasets[label] = entry
    state.update(ctx.name, datasets=datasets)


def summary(data: Dataset) -> dict[str, Any]:
    """What a record says about the rows (the target type picks a default model)."""
    from sklearn.utils.multiclass import type_of_target

    return {"n_samples": int(data.X.shape[0]), "n_features": data.n_features,
            "target_type": type_of_target(data.y), **data.nonfinite()}


def put_data(ctx: Context, dataset: str | Dataset | tuple | Plan, **options: Any) -> ShipResult:
    """Load, split, persist and ship a dataset to every node of the cluster.

    `dataset` and `options` are those of `plan` (or a `Plan` already made).
    """
    ready = dataset if isinstance(dataset, Plan) else plan(dataset, **options)
    data = ready.dataset
    local_dir, digest = persist_local(data.X, data.y, ready.splits)
    result = ship(ctx, running_nodes(ctx), local_dir, digest)
    record_dataset(ctx, data.label, {
        "layout": "splits", "digest": digest, "local_dir": str(local_dir),
        "remote_dir": result.remote_dir, "files": result.files,
        "cv": splitters.describe(ready.cv) if hasattr(ready.cv, "split") else "given splits",
        "n_splits": len(ready.splits), "groups": data.groups is not None, **summary(data),
    })
    return result
