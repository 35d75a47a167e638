"""Can the model take the data: checked by `run`, where the model is known.

put-data reads the data but does not know which models will run on it (one
dataset serves many searches), so it refuses only what no estimator takes (see
`provision.datasets`) and records how many NaN X holds. `run` resolves the
model, and refuses here, before anything is submitted, a dataset with NaN for
an estimator that cannot take NaN: otherwise every fit on the cluster fails
with the same ValueError and the search ends with nothing but that.

Whether an estimator takes NaN is its ``allow_nan`` input tag
(``sklearn.utils.get_tags`` from scikit-learn 1.6, ``_get_tags()`` before),
the flag its own ``check_array`` call honours. A composite's tag is not enough
(a Pipeline's is False whatever its steps): NaN is followed through it instead.
A step that refuses NaN before one removed it (an imputer) fails every fit; a
scikit-learn step that takes NaN passes it on (a scaler does, and so does a
``passthrough`` column); a step of the user's own that takes NaN may remove it
or not, so what follows it is not known, and neither is what a
``FunctionTransformer`` does. Where the answer is unknown nothing is refused:
the fits will tell.
"""

from __future__ import annotations

from typing import Any, Literal

from provision.errors import BadInput

NAN_TAKERS = "HistGradientBoostingClassifier/Regressor, or a pipeline that imputes first"
# What a step does with NaN: "takes" it (no telling whether it passes it on); None: unknown.
Flow = Literal["refuses", "removes", "passes", "takes"] | None


def allows_nan(estimator: Any) -> bool | None:
    """Whether `estimator` accepts NaN in X: True, False, or None when unknown."""
    flow = nan_flow(estimator)
    return None if flow is None else flow != "refuses"


def nan_flow(estimator: Any) -> Flow:
    """What `estimator` does with NaN in its input: refuses it, removes it (an
    imputer), passes it on (a scikit-learn step that takes it), takes it (a step
    of the user's that allows NaN), or None: unknown."""
    name = type(estimator).__name__
    if name == "Pipeline" and isinstance(getattr(estimator, "steps", None), list):
        for i, (_, step) in enumerate(estimator.steps, start=1):
            flow = "passes" if step is None or step == "passthrough" else nan_flow(step)
            if flow == "takes" and i < len(estimator.steps):
                return None  # what the next steps get is not known
            if flow != "passes":
                return flow
        return "passes"
    if name == "ColumnTransformer" and isinstance(getattr(estimator, "transformers", None), list):
        parts = [t for _, t, _ in estimator.transformers]
        parts.append(getattr(estimator, "remainder", "drop"))  # the columns no part names
        flows = {"passes" if isinstance(t, str) and t == "passthrough" else nan_flow(t)
                 for t in parts if not (isinstance(t, str) and t == "drop")}
        for flow in ("refuses", None, "takes", "passes"):
            if flow in flows:
                return flow
        return "removes"
    module = type(estimator).__module__
    if module.startswith("sklearn.impute"):
        return "removes"
    if name == "FunctionTransformer":  # validates nothing by default: the function decides
        return None
    allowed = _tag(estimator)
    if allowed is None:
        return None
    if not allowed:
        return "refuses"
    return "passes" if module.startswith("sklearn.") else "takes"


def _tag(estimator: Any) -> bool | None:
    try:
        from sklearn.utils import get_tags
    except ImportError:  # scikit-learn < 1.6: the dict of `_get_tags()` / `_more_tags`
        try:
            return bool(estimator._get_tags()["allow_nan"])
        except (AttributeError, KeyError):
            return None
    try:
        return bool(get_tags(estimator).input_tags.allow_nan)
    except AttributeError:  # no __sklearn_tags__: not a BaseEstimator
        return None


def check_data(estimator: Any, record: dict[str, Any], label: str, spec: str) -> None:
    """Bad input if dataset `label` (its put-data `record`) holds NaN in X and
    `estimator` (from --model `spec`) cannot take NaN."""
    nan = record.get("x_nan", 0)
    if not nan or allows_nan(estimator) is not False:
        return
    columns = record.get("x_nan_columns") or []
    where = f" (column(s) {', '.join(columns)})" if columns else ""
    raise BadInput(
        f"--model {spec}: {type(estimator).__name__} does not take NaN, and --data {label!r} "
        f"has {nan} NaN value(s) in X{where}; use a model that does ({NAN_TAKERS})"
    )
