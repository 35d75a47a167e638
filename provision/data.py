"""put-data: cross-validation splits persisted once, shipped once per host.

Splits are written with `payload.persist_cv_splits` (uncompressed joblib, so
engines open them with ``mmap_mode='r'`` and every engine on a host shares one
copy in the page cache). The directory is named by the content hash of its
files, both locally and on the nodes; a node that already holds a directory
with that name and a matching manifest gets nothing, so a second run moves no
bytes, and nodes added later receive exactly what the others have.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from provision import cloud, state
from provision.cloud.common import InstanceInfo
from provision.context import Context
from provision.errors import BadInput
from provision.nodes import fanout, transfer
from provision.nodes.remote import Endpoint

BUILTIN = ("digits", "iris", "wine", "breast_cancer")
CV_KINDS = ("shuffle", "kfold", "stratified")


def _check_xy(X: Any, y: Any, where: str) -> tuple[Any, np.ndarray]:
    import scipy.sparse as sp

    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise BadInput(f"{where}: X must be 2-D (samples x features), got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim != 1:
        raise BadInput(f"{where}: y must be 1-D, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise BadInput(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] < 2:
        raise BadInput(f"{where}: needs at least 2 samples, got {X.shape[0]}")
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise BadInput(f"{where}: y contains {int(np.isnan(y).sum())} NaN value(s)")
    return X, y


def load_dataset(spec: str, target: str | None = None) -> tuple[Any, np.ndarray, str]:
    """(X, y, label) from a scikit-learn dataset name or a local file.

    Files: ``.npz`` with arrays X and y; ``X.npy,y.npy``; ``.csv`` with a
    header and a target column (``target`` or the last one); a joblib dump of
    ``(X, y)`` (``.joblib``/``.pkl``, sparse X allowed).
    """
    if spec in BUILTIN:
        import sklearn.datasets

        X, y = getattr(sklearn.datasets, f"load_{spec}")(return_X_y=True)
        return X, y, spec
    if "," in spec:
        xs, ys = (Path(p).expanduser() for p in spec.split(",", 1))
        for p in (xs, ys):
            if not p.is_file():
                raise BadInput(f"{p}: no such file")
        try:
            X, y = np.load(xs, allow_pickle=False), np.load(ys, allow_pickle=False)
        except ValueError as e:
            raise BadInput(f"{xs}: cannot read as .npy ({e})") from e
        return (*_check_xy(X, y, str(xs)), xs.stem)
    path = Path(spec).expanduser()
    if not path.is_file():
        hint = (
            f" (built-in datasets: {', '.join(BUILTIN)})"
            if "/" not in spec and "." not in spec
            else ""
        )
        raise BadInput(f"{spec}: no such file or dataset{hint}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                missing = {"X", "y"} - set(f.files)
                if missing:
                    lacks, has = ", ".join(sorted(missing)), ", ".join(f.files)
                    raise BadInput(f"{path}: missing array(s) {lacks} (has {has})")
                X, y = f["X"], f["y"]
        elif suffix == ".csv":
            X, y = _read_csv(path, target)
        elif suffix in (".joblib", ".pkl", ".pickle"):
            import joblib

            obj = joblib.load(path)
            if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
                raise BadInput(
                    f"{path}: expected a joblib dump of (X, y), got {type(obj).__name__}"
                )
            X, y = obj
        else:
            raise BadInput(
                f"{path}: unknown data format {suffix or '(none)'} "
                "(use .npz, .csv, .joblib or X.npy,y.npy)"
            )
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file is bad input
        raise BadInput(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    return (*_check_xy(X, y, str(path)), path.stem)


def _read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise BadInput(f"{path}: needs a header row and data rows")
    header, body = rows[0], rows[1:]
    col = len(header) - 1 if target is None else (header.index(target) if target in header else -1)
    if col < 0:
        raise BadInput(f"{path}: no target column {target!r} (columns: {', '.join(header)})")
    try:
        data = np.array([[float(v) if v != "" else np.nan for v in r] for r in body])
    except ValueError as e:
        raise BadInput(f"{path}: non-numeric value ({e})") from e
    if data.ndim != 2 or data.shape[1] != len(header):
        raise BadInput(f"{path}: rows do not all have {len(header)} columns")
    return np.delete(data, col, axis=1), data[:, col]


def make_cv(kind: str, n_splits: int, test_size: float, seed: int) -> Any:
    """The splitter a user names on the command line."""
    from sklearn.model_selection import KFold, ShuffleSplit, StratifiedShuffleSplit

    if kind not in CV_KINDS:
        raise BadInput(f"--cv: must be one of {', '.join(CV_KINDS)} (got {kind!r})")
    if n_splits < 2 and kind == "kfold" or n_splits < 1:
        raise BadInput(f"--n-splits: too small ({n_splits})")
    if not 0 < test_size < 1:
        raise BadInput(f"--test-size: must be between 0 and 1 (got {test_size})")
    if kind == "kfold":
        return KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    cls = ShuffleSplit if kind == "shuffle" else StratifiedShuffleSplit
    return cls(n_splits=n_splits, test_size=test_size, random_state=seed)


def _digest(directory: Path) -> str:
    """Content hash of the split files (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(directory.iterdir()):
        if p.name == "manifest.json":
            continue
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def persist_local(X: Any, y: np.ndarray, cv: Any) -> tuple[Path, str]:
    """Write the splits once into the local cache, named by their content hash."""
    from payload import persist_cv_splits

    cache = state.root() / "data"
    state.mkdir_private(cache)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".new-"))
    try:
        persist_cv_splits(X, y, cv, tmp)
        digest = _digest(tmp)
        final = cache / digest
        if final.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
        return final, digest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remote_dir(remote_root: str, digest: str) -> str:
    return f"{remote_root}/data/{digest}"


@dataclass
class ShipResult:
    """Bytes moved per host (0 for a host that already had everything)."""

    digest: str
    remote_dir: str
    files: list[str]
    bytes_per_host: dict[str, int] = field(default_factory=dict)

    @property
    def remote_paths(self) -> list[str]:
        return [f"{self.remote_dir}/{f}" for f in self.files if f != "manifest.json"]

    @property
    def bytes_moved(self) -> int:
        return sum(self.bytes_per_host.values())


def ship(ctx: Context, nodes: Sequence[InstanceInfo], local_dir: Path, digest: str) -> ShipResult:
    """Put the split directory on each node once, in parallel; skip nodes that have it."""
    root = ctx.config.remote_root
    target = remote_dir(root, digest)
    names = sorted(p.name for p in local_dir.iterdir())
    total = sum((local_dir / n).stat().st_size for n in names)
    result = ShipResult(
        digest=digest, remote_dir=target, files=[n for n in names if n != "manifest.json"]
    )
    lock = threading.Lock()
    done_bytes = [0]

    with ctx.reporter.wait(
        f"put-data {digest}: {len(nodes)} host(s), {total / 1e6:.1f} MB each",
        total=total * len(nodes),
        unit="bytes",
    ) as advance:

        def progress(n: int) -> None:
            with lock:
                done_bytes[0] += n
                advance(done_bytes[0])

        def one(ep: Endpoint) -> int:
            # One connection: nothing is sent where the manifest is there, else one
            # tar stream into a temp dir renamed into place (a directory is complete).
            sent = [0]

            def step(n: int) -> None:  # tar headers and padding are not data: cap at `total`
                grow = min(n, total - sent[0])
                sent[0] += grow
                if grow:
                    progress(grow)

            moved = transfer.push_tree(
                ep, local_dir, target, unless_exists=f"{target}/manifest.json", on_bytes=step
            )
            progress(total - sent[0])
            return 0 if moved is None else total

        group = fanout.on_hosts(one, [ctx.endpoint(n) for n in nodes])
    result.bytes_per_host = dict(group.succeeded)
    group.raise_for_failures()
    return result


def ship_recorded(ctx: Context, nodes: Sequence[InstanceInfo]) -> None:
    """Give new nodes the datasets already put on the cluster (addnode, replacements)."""
    for entry in state.load(ctx.name).get("datasets", {}).values():
        ship(ctx, nodes, Path(entry["local_dir"]), entry["digest"])


def split_paths(name: str, label: str) -> list[str]:
    """The split files of dataset `label` on cluster `name`'s nodes, as put-data left them."""
    datasets = state.load(name).get("datasets", {})
    if label not in datasets:
        have = ", ".join(sorted(datasets)) or "none"
        raise BadInput(
            f"--data: {label!r} is not on cluster {name!r} (have: {have}); "
            f"run `provision put-data {name} {label}` first"
        )
    entry = datasets[label]
    return [f"{entry['remote_dir']}/{f}" for f in entry["files"]]


def put_data(
    ctx: Context,
    dataset: str,
    *,
    cv: str = "shuffle",
    n_splits: int = 5,
    test_size: float = 0.25,
    seed: int = 42,
    target: str | None = None,
) -> ShipResult:
    """Load, split, persist and ship a dataset to every node of the cluster."""
    splitter = make_cv(cv, n_splits, test_size, seed)
    X, y, label = load_dataset(dataset, target)
    local_dir, digest = persist_local(X, y, splitter)
    info = cloud.describe_cluster(ctx.region, ctx.name)
    if not info.nodes:
        raise BadInput(f"NAME: cluster {ctx.name!r} has no running nodes: run `provision up` first")
    result = ship(ctx, info.nodes, local_dir, digest)
    record = state.load(ctx.name)
    datasets = record.get("datasets", {})
    datasets[label] = {
        "digest": digest, "local_dir": str(local_dir), "remote_dir": result.remote_dir,
        "files": result.files, "cv": cv, "n_splits": n_splits, "test_size": test_size, "seed": seed,
        "n_samples": int(X.shape[0]), "n_features": int(X.shape[1]),
    }
    state.update(ctx.name, datasets=datasets)
    return result
