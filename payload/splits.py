"""Persist cross-validation splits as memory-mappable joblib files.

Each split is one file holding ``(X_train, y_train, X_test, y_test)``, dumped
*uncompressed*: an engine opens it with ``joblib.load(path, mmap_mode="r")``
and every engine on a host then reads the same pages from the OS page cache
instead of holding its own copy. For scipy sparse matrices joblib memory-maps
the underlying ``data``/``indices``/``indptr`` arrays, so CSR works the same way.

A ``manifest.json`` next to the files records, per file, its sha256, size and
shapes; ``provision`` compares these content hashes with what a host already
has to skip re-shipping, and the search uses them to identify its splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import check_cv
from sklearn.utils.multiclass import type_of_target

MANIFEST = "manifest.json"
SUFFIX = ".joblib"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def split_filename(name: str, index: int) -> str:
    """Deterministic file name of split ``index`` of dataset ``name``."""
    return f"{name}_{index:03d}{SUFFIX}"


def persist_cv_splits(
    X: Any,
    y: Any,
    cv: Any,
    directory: str | os.PathLike,
    name: str = "split",
    *,
    groups: Any = None,
) -> list[Path]:
    """Write one uncompressed joblib file per CV split and update ``manifest.json``.

    ``cv`` is anything ``sklearn.model_selection.check_cv`` accepts: an int (a
    stratified k-fold when ``y`` is a classification target, as GridSearchCV
    does for a classifier), a splitter, or an iterable of ``(train, test)``
    index arrays. Files are written to a temporary name and renamed, so a
    reader never sees half a split; files of an earlier, longer run under the
    same ``name`` are removed so the directory matches the manifest.
    """
    if not _NAME.match(name):
        raise ValueError(f"name must be a plain file-name stem, got {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    y = np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    classifier = type_of_target(y) in ("binary", "multiclass")
    splitter = check_cv(cv, y, classifier=classifier)

    paths: list[Path] = []
    files: dict[str, dict] = {}
    for index, (train, test) in enumerate(splitter.split(X, y, groups)):
        path = directory / split_filename(name, index)
        split = (X[train], y[train], X[test], y[test])
        dump_atomic(split, path)
        files[path.name] = {
            "dataset": name,
            "split": index,
            "sha256": file_sha256(path),
            "size": path.stat().st_size,
            "X_train_shape": list(split[0].shape),
            "y_train_shape": list(split[1].shape),
            "X_test_shape": list(split[2].shape),
            "y_test_shape": list(split[3].shape),
        }
        paths.append(path)
    if not paths:
        raise ValueError("cv produced no splits")

    manifest = read_manifest(directory)
    stale = {f for f, entry in manifest["files"].items() if entry.get("dataset") == name}
    stale |= {p.name for p in directory.glob(f"{name}_[0-9][0-9][0-9]{SUFFIX}")}
    for old in stale - set(files):
        (directory / old).unlink(missing_ok=True)
        manifest["files"].pop(old, None)
    manifest["files"].update(files)
    manifest["datasets"][name] = {
        "n_splits": len(paths),
        "files": [p.name for p in paths],
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]) if X.ndim > 1 else 1,
        "sparse": bool(sp.issparse(X)),
        "dtype": str(X.dtype),
    }
    _write_json_atomic(manifest, directory / MANIFEST)
    return paths


def read_manifest(directory: str | os.PathLike) -> dict:
    """The directory's manifest, or an empty one if none was written yet."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return {"version": 1, "files": {}, "datasets": {}}
    manifest = json.loads(path.read_text())
    manifest.setdefault("files", {})
    manifest.setdefault("datasets", {})
    return manifest


def split_paths(directory: str | os.PathLike, name: str = "split") -> list[Path]:
    """Paths of the splits of ``name`` in ``directory``, in split order, from the manifest."""
    dataset = read_manifest(directory)["datasets"].get(name)
    if dataset is None:
        raise FileNotFoundError(f"no dataset {name!r} in {Path(directory) / MANIFEST}")
    return [Path(directory) / f for f in dataset["files"]]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks so large splits do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def split_identities(paths: Iterable[str | os.PathLike]) -> list[str]:
    """A content identity per split path, as seen from the client.

    The paths are where the *engines* find the splits; the client may not have
    them. Use the manifest's sha256 when a local manifest lists the file with a
    matching size, hash the local file otherwise, and fall back to the path.
    """
    identities = []
    for raw in paths:
        path = Path(raw)
        identity = f"path:{path}"
        try:
            size = path.stat().st_size
        except OSError:
            identities.append(identity)
            continue
        entry = read_manifest(path.parent)["files"].get(path.name)
        if entry and entry.get("size") == size and entry.get("sha256"):
            identity = f"sha256:{entry['sha256']}"
        else:
            identity = f"sha256:{file_sha256(path)}"
        identities.append(identity)
    return identities


def dump_atomic(obj: Any, path: Path) -> None:
    """joblib-dump ``obj`` uncompressed (memory-mappable) under a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        joblib.dump(obj, tmp, compress=0)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
