"""The cross-validation splitter a user names for put-data, and the splits it makes.

Every scikit-learn splitter that cuts rows into a few train/test splits is
here by name (`SPLITTERS`). A flag applies to a splitter when its constructor
takes the parameter (``--n-splits``: ``n_splits``, ``--n-repeats``:
``n_repeats``, ``--test-size``: ``test_size``, ``--seed``: ``random_state``,
``--shuffle``: ``shuffle``), read from the class's signature, so the table cannot
drift from scikit-learn; a flag given to a splitter that does not take it is bad
input rather than silently ignored. Leave-one-out and leave-p-out are left out on
purpose: put-data writes one file per split, and they make one split per row.

The splits themselves (indices) are computed before anything is written or
shipped, so a dataset that cannot be split (a class smaller than the folds,
fewer groups than splits, a continuous target for a stratified splitter) is a
one-line error and nothing is started.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from provision.errors import BadInput

SPLITTERS = {
    "kfold": "KFold",
    "stratified-kfold": "StratifiedKFold",
    "group-kfold": "GroupKFold",
    "stratified-group-kfold": "StratifiedGroupKFold",
    "time-series": "TimeSeriesSplit",
    "repeated-kfold": "RepeatedKFold",
    "repeated-stratified-kfold": "RepeatedStratifiedKFold",
    "shuffle": "ShuffleSplit",
    "stratified-shuffle": "StratifiedShuffleSplit",
    "group-shuffle": "GroupShuffleSplit",
    "leave-one-group-out": "LeaveOneGroupOut",
}
GROUPED = {"group-kfold", "stratified-group-kfold", "group-shuffle", "leave-one-group-out"}
# Old names: still accepted, with a warning saying what to use.
DEPRECATED = {
    "stratified": (
        "stratified-shuffle",
        "--cv stratified is deprecated: it means stratified-shuffle (StratifiedShuffleSplit); "
        "for StratifiedKFold use --cv stratified-kfold",
    ),
}
FLAGS = {
    "n_splits": "--n-splits",
    "n_repeats": "--n-repeats",
    "test_size": "--test-size",
    "random_state": "--seed",
    "shuffle": "--shuffle/--no-shuffle",
}
# provision's defaults where a splitter takes the parameter; scikit-learn's otherwise.
DEFAULTS = {"n_splits": 5, "test_size": 0.25, "random_state": 42}


@dataclass(frozen=True)
class CVSpec:
    """A splitter as the user asked for it; None means "not given"."""

    name: str = "shuffle"
    n_splits: int | None = None
    n_repeats: int | None = None
    test_size: float | None = None
    seed: int | None = None
    shuffle: bool | None = None
    groups: bool = False  # whether group labels come with the data

    def given(self) -> dict[str, Any]:
        """Constructor parameters the user set, by their scikit-learn names."""
        values = {"n_splits": self.n_splits, "n_repeats": self.n_repeats,
                  "test_size": self.test_size, "random_state": self.seed, "shuffle": self.shuffle}
        return {k: v for k, v in values.items() if v is not None}


def canonical(name: str) -> tuple[str, str | None]:
    """(splitter name, deprecation warning or None); unknown names are bad input."""
    if name in DEPRECATED:
        return DEPRECATED[name]
    if name not in SPLITTERS:
        close = difflib.get_close_matches(name, SPLITTERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BadInput(f"--cv: unknown splitter {name!r} (use one of {', '.join(SPLITTERS)}){hint}")
    return name, None


def takes(name: str) -> list[str]:
    """The flags splitter `name` takes."""
    cls = _class(name)
    params = inspect.signature(cls).parameters
    return [flag for param, flag in FLAGS.items() if param in params] + (
        ["--groups"] if name in GROUPED else []
    )


def _class(name: str) -> type:
    import sklearn.model_selection

    return getattr(sklearn.model_selection, SPLITTERS[name])


def make_splitter(spec: CVSpec) -> Any:
    """The scikit-learn splitter `spec` names, its flags checked against its signature."""
    name, _ = canonical(spec.name)
    cls = _class(name)
    accepted = inspect.signature(cls).parameters
    given = spec.given()
    for param in given:
        if param not in accepted:
            raise BadInput(
                f"{FLAGS[param].split('/')[0]}: does not apply to --cv {name} "
                f"(it takes: {', '.join(takes(name)) or 'no options'})"
            )
    if spec.groups and name not in GROUPED:
        raise BadInput(f"--groups: does not apply to --cv {name} "
                       f"(group splitters: {', '.join(sorted(GROUPED))})")
    if name in GROUPED and not spec.groups:
        raise BadInput(f"--cv {name}: needs group labels (--groups COLUMN)")
    kwargs = {k: given.get(k, DEFAULTS[k]) for k in DEFAULTS if k in accepted}
    if "n_repeats" in given:
        kwargs["n_repeats"] = given["n_repeats"]
    if "shuffle" in accepted:
        kwargs["shuffle"] = given.get("shuffle", True)
        if not kwargs["shuffle"]:
            if "random_state" in given:
                raise BadInput(f"--seed: does not apply to --cv {name} with --no-shuffle")
            kwargs["random_state"] = None
    if name == "time-series":
        kwargs.pop("test_size", None)
        if "test_size" in given:
            kwargs["test_size"] = _rows(given["test_size"], name)
    elif "test_size" in kwargs:
        kwargs["test_size"] = fraction_or_rows(kwargs["test_size"])
    _check_counts(name, kwargs)
    return cls(**kwargs)


def _check_counts(name: str, kwargs: dict[str, Any]) -> None:
    n_splits = kwargs.get("n_splits")
    least = 1 if "test_size" in kwargs and name != "time-series" else 2
    if n_splits is not None and n_splits < least:
        raise BadInput(f"--n-splits: too small ({n_splits}); --cv {name} needs at least {least}")
    if kwargs.get("n_repeats", 1) < 1:
        raise BadInput(f"--n-repeats: must be at least 1 (got {kwargs['n_repeats']})")


def fraction_or_rows(value: float) -> float | int:
    if 0 < value < 1:
        return float(value)
    if value >= 1 and float(value).is_integer():
        return int(value)
    raise BadInput(
        f"--test-size: must be between 0 and 1 (a fraction) or a whole number of rows (got {value})"
    )


def _rows(value: float, name: str) -> int:
    if value >= 1 and float(value).is_integer():
        return int(value)
    raise BadInput(f"--test-size: --cv {name} takes a whole number of rows (got {value})")


def describe(splitter: Any) -> str:
    """One line naming the splitter and its parameters, for records and messages."""
    return " ".join(repr(splitter).split())


def compute_splits(
    splitter: Any, X: Any, y: Any, groups: Any, where: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """The (train, test) index pairs `splitter` makes of the data, and the warnings
    scikit-learn gave on the way (e.g. a class smaller than the folds).

    Anything that cannot be split is bad input naming `where` (the dataset).
    An iterable of index pairs is accepted as it is, as scikit-learn does.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if hasattr(splitter, "split"):
                pairs = list(splitter.split(X, y, groups))
            else:
                pairs = [(np.asarray(tr), np.asarray(te)) for tr, te in splitter]
        except (ValueError, TypeError) as e:
            reason = " ".join(str(e).split())  # one line, whatever scikit-learn wrote
            raise BadInput(f"--cv: cannot split {where} with {describe(splitter)}: {reason}") from e
    n_rows = X.shape[0]
    for i, (train, test) in enumerate(pairs):
        train, test = np.asarray(train), np.asarray(test)
        if not len(train) or not len(test):
            raise BadInput(f"--cv: split {i} of {where} has an empty train or test set")
        if not _indices(train, n_rows) or not _indices(test, n_rows):
            raise BadInput(f"--cv: split {i} of {where} is not row indices within {n_rows} rows")
    if not pairs:
        raise BadInput(f"--cv: {describe(splitter)} made no splits of {where}")
    return pairs, [str(w.message) for w in caught]


def _indices(rows: np.ndarray, n_rows: int) -> bool:
    return (
        rows.ndim == 1 and all(isinstance(v, numbers.Integral) for v in rows[:1].tolist())
        and bool((rows >= 0).all() and (rows < n_rows).all())
    )
