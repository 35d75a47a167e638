"""Parse what a user types for `provision run`: a model path and `--param` specs.

`--param 'C=logspace(-1,2,4)'` must not be `eval`: the right-hand side is
parsed with `ast` and only a handful of calls and literals are accepted, so a
typo is a clear one-line error (naming the flag) instead of a traceback.
"""

from __future__ import annotations

import ast
import difflib
import importlib
from typing import Any

import numpy as np

from provision.errors import BadInput

GRIDS = {
    "logspace": np.logspace,
    "linspace": np.linspace,
    "arange": np.arange,
    "geomspace": np.geomspace,
}
DISTRIBUTIONS = ("loguniform", "uniform", "randint")


def load_estimator(path: str, params: dict[str, Any] | None = None) -> Any:
    """An instance of the estimator class at dotted `path` (e.g. sklearn.svm.SVC)."""
    module, _, cls = path.rpartition(".")
    if not module:
        raise BadInput(f"--model: give a dotted path such as sklearn.svm.SVC (got {path!r})")
    try:
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise BadInput(f"--model: cannot import {path} ({e})") from e
    try:
        est = obj(**(params or {}))
    except TypeError as e:
        raise BadInput(f"--model: {path}: {e}") from e
    if not (hasattr(est, "fit") and hasattr(est, "get_params")):
        raise BadInput(f"--model: {path} is not a scikit-learn estimator (no fit/get_params)")
    return est


def _literal(node: ast.AST, spec: str, flag: str = "--param") -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError) as e:  # TypeError: e.g. {[1]: 2}
        raise BadInput(f"{flag} {spec}: not a literal value") from e


def parse_value(expr: str, spec: str, flag: str = "--param") -> tuple[list[Any] | None, Any]:
    """(grid values, None) or (None, a scipy distribution) for one right-hand side;
    errors name `flag` and the whole `spec`."""
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as e:
        raise BadInput(f"{flag} {spec}: cannot parse {expr!r}") from e
    if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name):
        fn = tree.func.id
        args = [_literal(a, spec, flag) for a in tree.args]
        if fn in GRIDS:
            try:
                return [v.item() for v in GRIDS[fn](*args)], None
            except (TypeError, ValueError) as e:  # ValueError: e.g. linspace(1, 2, -1)
                raise BadInput(f"{flag} {spec}: {fn}{tuple(args)}: {e}") from e
        if fn in DISTRIBUTIONS:
            from scipy import stats

            dist = {
                "loguniform": stats.loguniform,
                "uniform": stats.uniform,
                "randint": stats.randint,
            }[fn]
            try:
                return None, dist(*args)
            except (TypeError, ValueError) as e:  # e.g. loguniform(1): a shape is missing
                raise BadInput(f"{flag} {spec}: {fn}{tuple(args)}: {e}") from e
        known = ", ".join((*GRIDS, *DISTRIBUTIONS))
        raise BadInput(f"{flag} {spec}: unknown function {fn!r} (use one of {known})")
    value = _literal(tree, spec, flag)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise BadInput(f"{flag} {spec}: empty list of values")
    return values, None


def parse_params(specs: list[str], estimator: Any) -> dict[str, Any]:
    """{name: values or distribution}, each name checked against the estimator."""
    valid = sorted(estimator.get_params())
    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, expr = spec.partition("=")
        name = name.strip()
        if not sep or not name or not expr.strip():
            raise BadInput(f"--param {spec}: expected NAME=VALUES, e.g. C=logspace(-1,2,4)")
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadInput(
                f"--param {spec}: {type(estimator).__name__} has no parameter {name!r}{hint}"
            )
        values, dist = parse_value(expr.strip(), spec)
        if values is not None and not values:
            raise BadInput(f"--param {spec}: empty grid")
        out[name] = values if values is not None else dist
    if not out:
        raise BadInput("--param: give at least one, e.g. --param 'C=logspace(-1,2,4)'")
    return out
