"""What put-data reads: a scikit-learn dataset by name or a local file, as (X, y, groups).

Files: ``.npz`` with arrays X and y (and the group labels under any name); ``X.npy,y.npy``;
``.csv`` with a header row; a joblib dump of ``(X, y)`` (sparse X allowed).
X is 2-D (samples x features), or 1-D text (one document per row, for a
``TfidfVectorizer`` pipeline); y is 1-D or 2-D (multi-output). In a CSV a
column is numeric when every value parses as a number (empty: NaN), text
otherwise; X is the numeric feature columns as a float matrix, or a single text
column as 1-D text (a non-number among several columns is a typo, not text).
Several ``--target`` columns make a 2-D y.

What no estimator can take is bad input here, one line naming the file: shapes,
lengths (both given), no samples or no features, a missing column, NaN or inf
in y, inf in X (scikit-learn's input validation refuses it even where NaN is
allowed), a 2-D X that is not numbers (the column and its values named; an
object array of numbers becomes float64, as ``check_array`` would make it).
NaN in X is allowed here and counted (`Dataset.nonfinite`): whether the model
takes it is the estimator's to say, and the model is known only at `run`
(`provision.suitability`).
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
    columns: list[str] | None = None  # X's column names, when the file has them (CSV)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1]) if len(self.X.shape) > 1 else 1

    def nonfinite(self) -> dict[str, Any]:
        """How many NaN X holds and in which columns (the first few), for the record
        `run` checks against the estimator's ``allow_nan`` tag (none in text)."""
        import scipy.sparse as sp

        values = self.X.data if sp.issparse(self.X) else self.X
        if values.dtype.kind not in "fc":
            return {"x_nan": 0, "x_nan_columns": []}
        return {"x_nan": int(np.isnan(values).sum()),
                "x_nan_columns": _columns_with(np.isnan, self.X, self.columns)}


def _columns_with(test: Any, X: Any, names: list[str] | None, few: int = 3) -> list[str]:
    """The first `few` columns of X holding a value `test` flags, by name or index."""
    import scipy.sparse as sp

    by_column = sp.csc_matrix(X) if sp.issparse(X) else X
    hit = []
    for j in range(by_column.shape[1]):
        col = by_column[:, j]
        col = col.data if sp.issparse(col) else col
        if test(col).any():
            hit.append(names[j] if names else str(j))
            if len(hit) == few:
                break
    return hit


def _numeric(X: np.ndarray, where: str, names: list[str] | None) -> np.ndarray:
    """A 2-D X of objects or strings as float64, or bad input naming the first column
    that does not convert and one of its values (as ``check_array`` would refuse it)."""
    for j in range(X.shape[1]):
        try:
            X[:, j].astype(np.float64)
        except (TypeError, ValueError):
            bad = next(v for v in X[:, j] if not _number(v))
            bad = bad.item() if isinstance(bad, np.generic) else bad  # 'a', not np.str_('a')
            column = repr(names[j]) if names else str(j)
            raise BadInput(
                f"{where}: X has dtype {X.dtype}: column {column} holds {type(bad).__name__} "
                f"values such as {bad!r}; X must be numbers (or one text column)"
            ) from None
    return X.astype(np.float64)


def _is_text(a: np.ndarray) -> bool:
    return a.dtype.kind in "USO"


def check_xy(
    X: Any, y: Any, where: str, groups: Any = None, columns: list[str] | None = None
) -> tuple[Any, np.ndarray, Any]:
    """X, y (and groups) as arrays, or bad input naming `where` and the problem.
    `columns`: X's column names, to name the one at fault."""
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
    if X.shape[0] == 0:
        raise BadInput(f"{where}: no samples (X has shape {X.shape}, y {y.shape})")
    if X.ndim == 2 and X.shape[1] == 0:
        raise BadInput(f"{where}: X has no features (shape {X.shape})")
    if X.shape[0] < 2:
        raise BadInput(f"{where}: needs at least 2 samples, got {X.shape[0]}")
    if X.ndim == 2 and not sp.issparse(X) and X.dtype.kind in "OUSV":
        X = _numeric(X, where, columns)
    values = X.data if sp.issparse(X) else X
    if values.dtype.kind in "fc" and np.isinf(values).any():
        raise BadInput(
            f"{where}: X contains {int(np.isinf(values).sum())} inf value(s) (column(s) "
            f"{', '.join(_columns_with(np.isinf, X, columns))}); scikit-learn refuses inf even "
            "where NaN is allowed: replace them (np.nan for a model that takes NaN)"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        nan, inf = int(np.isnan(y).sum()), int(np.isinf(y).sum())
        what = f"{nan} NaN value(s)" if nan else f"{inf} inf value(s)"
        raise BadInput(f"{where}: y contains {what}")
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
    g, names = group_file, None
    try:
        if suffix == ".npz":
            X, y, g = _read_npz(path, groups, group_file)
        elif suffix == ".csv":
            X, y, g, names = _read_csv(path, target, groups if group_file is None else None)
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
    return _dataset(X, y, g, str(path), label or path.stem, names)


def _dataset(X: Any, y: Any, groups: Any, where: str, label: str,
             columns: list[str] | None = None) -> Dataset:
    return Dataset(*check_xy(X, y, where, groups, columns), label=label, columns=columns)


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


def _read_csv(
    path: Path, target: str | None, groups: str | None
) -> tuple[Any, Any, Any, list[str] | None]:
    """X, y, groups and X's column names (None for a text column)."""
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
    return (X, y, np.asarray(columns[groups]) if groups else None,
            None if text else features)


def _parse(values: list[str]) -> np.ndarray:
    """A numeric column as floats (empty: NaN), any other as text."""
    try:
        return np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return np.array(values)


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):  # TypeError: None, a list, ... in an object array
        return False
    return True


def _block(cols: list[np.ndarray]) -> np.ndarray:
    """One target column as 1-D, several as 2-D (multi-output)."""
    return cols[0] if len(cols) == 1 else np.column_stack(cols)
