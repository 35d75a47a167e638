"""Parse what a user types for `provision run`: the model (`--model`, `--set`),
`--param` specs and `--train-sizes`.

`--param 'C=logspace(-1,2,4)'` must not be `eval`: the right-hand side is
parsed with `ast` and only a handful of calls and literals are accepted, so a
typo is a clear one-line error (naming the flag) instead of a traceback.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
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


def load_estimator(spec: str, params: dict[str, Any] | None = None) -> Any:
    """The estimator `--model` names, with the `--set` parameters applied.

    ``spec`` is a dotted class path (``sklearn.svm.SVC``), ``module:factory`` (an
    importable module, the current directory included, and a callable in it
    returning an estimator), or a Python file: ``pipeline.py:make_pipeline``, or
    ``pipeline.py`` exposing a module-level ``estimator``. Code from the user's
    own files travels to the engines by value (cloudpickle), since the nodes do
    not have it; classes it imports from other local modules must be importable
    on the nodes too.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep and spec.endswith(".py"):
        module_name, attr = spec, "estimator"
    if module_name.endswith(".py"):
        obj = _from_file(Path(module_name).expanduser(), attr, spec)
    elif sep:
        obj = _attribute(_import_user_module(module_name, spec), attr, spec)
    else:
        module_name, _, attr = spec.rpartition(".")
        if not module_name:
            raise BadInput(f"--model: give a dotted path such as sklearn.svm.SVC, module:factory "
                           f"or file.py[:factory] (got {spec!r})")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise BadInput(f"--model: cannot import {spec} ({e})") from e
        # `sklearn.svm` is a module its package may not have imported as an attribute yet
        obj = getattr(module, attr, None) or _whole_module(spec) or _attribute(module, attr, spec)
    est = _instantiate(obj, spec)
    if params:
        for name, value in params.items():
            check_name(name, est, f"--set {name}={value!r}")
        try:
            est.set_params(**params)
        except (TypeError, ValueError) as e:
            raise BadInput(f"--set: {spec}: {e}") from e
    return est


def _whole_module(spec: str) -> ModuleType | None:
    try:
        return importlib.import_module(spec)
    except Exception:  # noqa: BLE001 - not a module either: the caller's error stands
        return None


def _is_estimator(obj: Any) -> bool:
    return hasattr(obj, "fit") and hasattr(obj, "get_params")


def _instantiate(obj: Any, spec: str) -> Any:
    """An unfitted estimator from a class, a factory or an estimator instance.

    What is plainly no estimator (a module, a class without fit/get_params, a
    function that needs arguments, such as ``math.sqrt``) is refused before
    anything is called: calling it would only fail with a message about
    arguments, not about the model.
    """
    if _is_estimator(obj) and not isinstance(obj, type):
        from sklearn.base import clone

        return clone(obj)
    not_one = f"--model: {spec} is not a scikit-learn estimator"
    if isinstance(obj, ModuleType):
        found = sorted(n for n, v in vars(obj).items()
                       if isinstance(v, type) and _is_estimator(v) and not n.startswith("_"))
        hint = f"; name a class in it, e.g. {spec}.{found[0]}" if found else ""
        raise BadInput(f"{not_one} but a module{hint}")
    if isinstance(obj, type) and not _is_estimator(obj):
        raise BadInput(f"{not_one} class (no fit/get_params)")
    if not callable(obj):
        raise BadInput(f"{not_one} (no fit/get_params)")
    needed = _required_arguments(obj)
    if needed:
        raise BadInput(f"{not_one} class or factory: it is called with no arguments, and "
                       f"needs {', '.join(needed)}")
    try:
        est = obj()
    except Exception as e:  # noqa: BLE001 - the user's factory: any failure is one line
        raise BadInput(f"--model: {spec}: calling it failed ({type(e).__name__}: {e})") from e
    if not (hasattr(est, "fit") and hasattr(est, "get_params")):
        raise BadInput(f"--model: {spec} is not a scikit-learn estimator (no fit/get_params)")
    return est


def _required_arguments(obj: Any) -> list[str]:
    """The parameters a call with no arguments would lack ([] for a class, or when
    the signature cannot be read: then calling tells)."""
    if isinstance(obj, type):
        return []
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _attribute(module: ModuleType, attr: str, spec: str) -> Any:
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BadInput(f"--model: {spec}: {module.__name__} has no {attr!r}{hint}")
    return getattr(module, attr)


def _from_file(path: Path, attr: str, spec: str) -> Any:
    """``attr`` of the Python file at ``path``, run as a module of its own."""
    if not path.is_file():
        raise BadInput(f"--model: {path}: no such file")
    name = f"provision_model_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise BadInput(f"--model: {path}: not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # cloudpickle ships by value only modules it can find
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: any failure is one line
        del sys.modules[name]
        raise BadInput(f"--model: {path}: {type(e).__name__}: {e}") from e
    _by_value(module)
    if attr == "estimator" and not hasattr(module, attr):
        raise BadInput(f"--model: {path} defines no module-level `estimator`; "
                       f"name a factory instead: {path}:make_pipeline")
    return _attribute(module, attr, spec)


def _import_user_module(name: str, spec: str) -> ModuleType:
    """Module ``name``, the current directory searched too (as ``python -m`` does);
    a module of no installed distribution is the user's own and goes by value."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise BadInput(f"--model: cannot import {name} for {spec} ({e})") from e
    except Exception as e:  # noqa: BLE001 - the user's module: any failure is one line
        raise BadInput(f"--model: {spec}: importing {name} failed ({type(e).__name__}: {e})") from e
    finally:
        if added:
            sys.path.remove(cwd)
    if name.partition(".")[0] not in importlib.metadata.packages_distributions():
        _by_value(module)
    return module


def _by_value(module: ModuleType) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)


def check_name(name: str, estimator: Any, where: str) -> None:
    """`name` must be a parameter of the estimator, nested ones too (``clf__C``,
    from ``get_params(deep=True)``); else one line citing `where`, with a did-you-mean."""
    valid = sorted(estimator.get_params(deep=True))
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BadInput(f"{where}: {type(estimator).__name__} has no parameter {name!r}{hint}")


def parse_fixed(specs: Iterable[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` specs as {name: value} (one literal each)."""
    fixed = {}
    for spec in specs:
        key, sep, expr = spec.partition("=")
        if not key.strip() or not sep:
            raise BadInput(f"--set {spec}: expected NAME=VALUE")
        values, _dist = parse_value(expr, spec, flag="--set")
        if values is None or len(values) != 1:
            raise BadInput(f"--set {spec}: expected NAME=VALUE")
        fixed[key.strip()] = values[0]
    return fixed


def parse_train_sizes(expr: str) -> list[float] | list[int]:
    """``--train-sizes``: fractions in (0, 1] or row counts, e.g. 'linspace(0.1,1,5)'."""
    values, dist = parse_value(expr, expr, flag="--train-sizes")
    if values is None:
        raise BadInput(f"--train-sizes {expr}: give values, not a distribution")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 1:
            raise BadInput(f"--train-sizes {expr}: row counts must be at least 1")
        return values
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if not all(0 < v <= 1 for v in values):
            raise BadInput(f"--train-sizes {expr}: fractions must be in (0, 1]")
        return [float(v) for v in values]
    raise BadInput(f"--train-sizes {expr}: numbers only")


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
    """{name: values or distribution}, each name checked against the estimator's
    parameters, nested ones included (``clf__C`` for a pipeline step ``clf``)."""
    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, expr = spec.partition("=")
        name = name.strip()
        if not sep or not name or not expr.strip():
            raise BadInput(f"--param {spec}: expected NAME=VALUES, e.g. C=logspace(-1,2,4)")
        check_name(name, estimator, f"--param {spec}")
        values, dist = parse_value(expr.strip(), spec)
        if values is not None and not values:
            raise BadInput(f"--param {spec}: empty grid")
        out[name] = values if values is not None else dist
    if not out:
        raise BadInput("--param: give at least one, e.g. --param 'C=logspace(-1,2,4)'")
    return out
