"""What put-data reads: a scikit-learn dataset by name or a local file, as (X, y, groups).

Files: ``.npz`` with arrays X and y (and the group labels under any name); ``X.npy,y.npy``;
``.csv`` with a header row; a joblib dump of ``(X, y)`` (sparse X allowed).
X is 2-D (samples x features), or 1-D text (one document per row, for a
``TfidfVectorizer`` pipeline); y is 1-D or 2-D (multi-output). In a CSV a
column is numeric when every value parses as a number (empty: NaN), text
otherwise; X is the numeric feature columns as a float matrix, or a single text
column as 1-D text (a non-number among several columns is a typo, not text).
Several ``--target`` columns make a 2-D y. Whether the model can use what it
gets is the estimator's to say; what can be checked here (shapes, lengths, NaN
targets, a missing column) is bad input, one line naming the file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from provision.errors import BadInput

BUILTIN = ("digits", "iris", "wine", "breast_cancer")


@dataclass
class Dataset:
    """Rows to split or partition: features, targets, optional group labels."""

    X: Any
    y: np.ndarray
    groups: np.ndarray | None
    label: str  # the name it gets on the cluster

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1]) if len(self.X.shape) > 1 else 1


def _is_text(a: np.ndarray) -> bool:
    return a.dtype.kind in "USO"


def check_xy(X: Any, y: Any, where: str, groups: Any = None) -> tuple[Any, np.ndarray, Any]:
    """X, y (and groups) as arrays, or bad input naming `where` and the problem."""
    import scipy.sparse as sp

    if not sp.issparse(X):
        X = np.asarray(X)
        if not (X.ndim == 2 or X.ndim == 1 and _is_text(X)):
            raise BadInput(
                f"{where}: X must be 2-D (samples x features) or 1-D text, got shape {X.shape}"
            )
    y = np.asarray(y)
    if y.ndim not in (1, 2):
        raise BadInput(f"{where}: y must be 1-D, or 2-D for multi-output, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise BadInput(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] < 2:
        raise BadInput(f"{where}: needs at least 2 samples, got {X.shape[0]}")
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise BadInput(f"{where}: y contains {int(np.isnan(y).sum())} NaN value(s)")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.ndim != 1 or groups.shape[0] != X.shape[0]:
            raise BadInput(
                f"{where}: groups must be 1-D with one label per row ({X.shape[0]}), "
                f"got shape {groups.shape}"
            )
    return X, y, groups


def load_dataset(
    spec: str, target: str | None = None, groups: str | None = None, label: str | None = None
) -> Dataset:
    """The dataset `spec` names (a scikit-learn dataset or a file).

    ``target``: the target column(s) of a CSV, comma-separated for multi-output
    (default: the last column). ``groups``: group labels, a CSV column or an
    array of the ``.npz`` by name, or a ``.npy`` file for any format.
    """
    group_file = _group_file(groups)
    if spec in BUILTIN:
        if groups is not None and group_file is None:
            raise BadInput(f"--groups: {spec} has no columns; give a .npy file of labels")
        import sklearn.datasets

        X, y = getattr(sklearn.datasets, f"load_{spec}")(return_X_y=True)
        return _dataset(X, y, group_file, spec, label or spec)
    if "," in spec:
        return _npy_pair(spec, groups, group_file, label)
    path = Path(spec).expanduser()
    if not path.is_file():
        bare = "/" not in spec and "." not in spec
        hint = f" (built-in datasets: {', '.join(BUILTIN)})" if bare else ""
        raise BadInput(f"{spec}: no such file or dataset{hint}")
    suffix = path.suffix.lower()
    g = group_file
    try:
        if suffix == ".npz":
            X, y, g = _read_npz(path, groups, group_file)
        elif suffix == ".csv":
            X, y, g = _read_csv(path, target, groups if group_file is None else None)
            g = group_file if group_file is not None else g
        elif suffix in (".joblib", ".pkl", ".pickle"):
            X, y = _read_joblib(path)
            _names_need_columns(groups, group_file, path)
        else:
            raise BadInput(
                f"{path}: unknown data format {suffix or '(none)'} "
                "(use .npz, .csv, .joblib or X.npy,y.npy)"
            )
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file is bad input
        raise BadInput(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    return _dataset(X, y, g, str(path), label or path.stem)


def _dataset(X: Any, y: Any, groups: Any, where: str, label: str) -> Dataset:
    return Dataset(*check_xy(X, y, where, groups), label=label)


def _group_file(groups: str | None) -> np.ndarray | None:
    """Group labels from a .npy file, when `groups` names one."""
    if groups is None or not groups.endswith(".npy"):
        return None
    path = Path(groups).expanduser()
    if not path.is_file():
        raise BadInput(f"--groups: {path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise BadInput(f"--groups: {path}: cannot read as .npy ({e})") from e


def _names_need_columns(groups: str | None, group_file: Any, path: Path) -> None:
    if groups is not None and group_file is None:
        raise BadInput(f"--groups: {path} has no named columns; give a .npy file of labels")


def _npy_pair(spec: str, groups: str | None, group_file: Any, label: str | None) -> Dataset:
    xs, ys = (Path(p).expanduser() for p in spec.split(",", 1))
    for p in (xs, ys):
        if not p.is_file():
            raise BadInput(f"{p}: no such file")
    _names_need_columns(groups, group_file, xs)
    try:
        X, y = np.load(xs, allow_pickle=False), np.load(ys, allow_pickle=False)
    except ValueError as e:
        raise BadInput(f"{xs}: cannot read as .npy ({e})") from e
    return _dataset(X, y, group_file, str(xs), label or xs.stem)


def _read_npz(path: Path, groups: str | None, group_file: Any) -> tuple[Any, Any, Any]:
    with np.load(path, allow_pickle=False) as f:
        wanted = {"X", "y"} | ({groups} if groups is not None and group_file is None else set())
        missing = wanted - set(f.files)
        if missing:
            lacks, has = ", ".join(sorted(missing)), ", ".join(f.files)
            flag = "--groups: " if missing == {groups} else ""
            raise BadInput(f"{flag}{path}: missing array(s) {lacks} (has {has})")
        g = f[groups] if groups is not None and group_file is None else group_file
        return f["X"], f["y"], g


def _read_joblib(path: Path) -> tuple[Any, Any]:
    import joblib

    obj = joblib.load(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise BadInput(f"{path}: expected a joblib dump of (X, y), got {type(obj).__name__}")
    return obj[0], obj[1]


def _read_csv(path: Path, target: str | None, groups: str | None) -> tuple[Any, Any, Any]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise BadInput(f"{path}: needs a header row and data rows")
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise BadInput(f"{path}: line {i} has {len(row)} columns, the header {len(header)}")
    columns = {name: [row[j] for row in body] for j, name in enumerate(header)}
    targets = header[-1:] if target is None else [t.strip() for t in target.split(",")]
    for name, flag in [*((t, "") for t in targets), *([(groups, "--groups: ")] if groups else [])]:
        if name not in columns:
            what = "target" if not flag else "group"
            raise BadInput(f"{flag}{path}: no {what} column {name!r} "
                           f"(columns: {', '.join(header)})")
    features = [c for c in header if c not in targets and c != groups]
    if not features:
        raise BadInput(f"{path}: no feature columns left besides the target and groups")
    y = _block([_parse(columns[t]) for t in targets])
    parsed = {c: _parse(columns[c]) for c in features}
    text = [c for c in features if parsed[c].dtype.kind != "f"]
    if text and len(features) > 1:
        first = next(v for v in parsed[text[0]] if not _number(v))
        raise BadInput(
            f"{path}: non-numeric value {first!r} in column {text[0]!r}: X is numeric columns, "
            "or one text column (for a text pipeline)"
        )
    X = parsed[features[0]] if text else np.column_stack([parsed[c] for c in features])
    return X, y, np.asarray(columns[groups]) if groups else None


def _parse(values: list[str]) -> np.ndarray:
    """A numeric column as floats (empty: NaN), any other as text."""
    try:
        return np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return np.array(values)


def _number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _block(cols: list[np.ndarray]) -> np.ndarray:
    """One target column as 1-D, several as 2-D (multi-output)."""
    return cols[0] if len(cols) == 1 else np.column_stack(cols)
