"""NaN in X: put-data puts it (with a warning) and records it; `run` refuses a model
that cannot take it, from the estimator's ``allow_nan`` tag followed through
pipelines, and lets every model that can take it go on to the cluster. Also the
user's view of bad input from a plain subprocess: the console script, exit 2,
one line on stderr, no traceback, nothing contacted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn.utils
from sklearn.base import BaseEstimator
from sklearn.compose import make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from test_bad_input import HOLES, Case, case, keys

from provision import data, lifecycle, state, suitability
from provision.cli import main
from provision.datasets import load_dataset
from provision.errors import ProvisionError

SHARED_FIXTURES = (case, keys)  # a cluster file and moto's EC2, as test_bad_input's cases use
IMPUTED = """
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC

estimator = make_pipeline(SimpleImputer(), SVC())
"""


class DuckEstimator:
    """fit/get_params but no scikit-learn tags: whether it takes NaN is unknown."""

    def fit(self, X: Any, y: Any) -> DuckEstimator:
        return self

    def get_params(self, deep: bool = True) -> dict:
        return {}


class OldTagsEstimator(BaseEstimator):
    """scikit-learn < 1.6 style: tags from `_get_tags()` (`_more_tags`)."""

    def _get_tags(self) -> dict:
        return {"allow_nan": True}


@pytest.mark.parametrize(("estimator", "allowed"), [
    (SVC(), False),
    (HistGradientBoostingClassifier(), True),
    (make_pipeline(SimpleImputer(), SVC()), True),  # the pipeline's own tag says False
    (make_pipeline(StandardScaler(), SVC()), False),  # the scaler passes NaN on to SVC
    (make_pipeline(StandardScaler(), HistGradientBoostingClassifier()), True),
    (make_pipeline(make_column_transformer((SimpleImputer(), [0])), SVC()), True),
    (make_pipeline(make_column_transformer((SimpleImputer(), [0]), remainder="passthrough"),
                   SVC()), False),  # the other columns reach SVC with their NaN
    (make_pipeline(FunctionTransformer(np.nan_to_num), SVC()), None),  # the function decides
    (DuckEstimator(), None),
])
def test_whether_a_model_takes_nan_follows_nan_through_its_steps(estimator, allowed):
    assert suitability.allows_nan(estimator) is allowed


def test_before_scikit_learn_1_6_the_tag_comes_from_get_tags(monkeypatch):
    monkeypatch.delattr(sklearn.utils, "get_tags")
    assert suitability.allows_nan(OldTagsEstimator()) is True
    assert suitability.allows_nan(DuckEstimator()) is None


def test_nan_in_x_is_counted_by_column_name_and_recorded_for_run(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("age,height,y\n1,,0\n,4,1\n5,,0\n7,8,1\n")
    loaded = load_dataset(str(path))
    assert loaded.nonfinite() == {"x_nan": 3, "x_nan_columns": ["age", "height"]}
    assert data.summary(loaded)["x_nan"] == 3


def test_put_data_warns_of_nan_then_goes_on(case):
    holes = np.arange(20.0).reshape(10, 2)
    holes[3, 1] = np.nan
    np.savez(case.dir / "holes.npz", X=holes, y=np.array([0, 1] * 5))
    result = invoke("put-data", "unit", str(case.dir / "holes.npz"), "--config", str(case.cfg))
    text = " ".join(result.output.split())
    assert "warning: holes: X has 1 NaN value(s) (column(s) 1): only a model that takes NaN" \
        in text
    assert "cluster 'unit' has no running nodes" in text  # past the data: on to the cluster


@pytest.mark.parametrize("model", [
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "imputed.py",
])
def test_a_model_that_takes_nan_goes_on_to_the_cluster(case, monkeypatch, model):
    (case.dir / "imputed.py").write_text(IMPUTED)
    state.update("unit", datasets={"holes": HOLES})

    def connect(name: str) -> Any:
        raise ProvisionError("reached connect")

    monkeypatch.setattr(lifecycle, "connect", connect)
    param = "max_iter=[5]" if "Hist" in model else "svc__C=[1]"
    result = invoke("run", "unit", "gridsearch", "--data", "holes", "--model",
                    str(case.dir / model) if model.endswith(".py") else model,
                    "--param", param, "--out", str(case.dir / "out"), "--config", str(case.cfg))
    assert "reached connect" in result.output, result.output


def invoke(*args: str) -> Any:
    from click.testing import CliRunner

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def console_script(c: Case, *args: str) -> subprocess.CompletedProcess:
    """`provision ARGS` as a shell runs it; any AWS call would go to a closed port."""
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9", PYTHONWARNINGS="default")
    exe = Path(sys.executable).parent / "provision"
    return subprocess.run([str(exe), *args, "--config", str(c.cfg)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=c.dir)


@pytest.mark.parametrize(("args", "expected"), [
    (lambda c: ["put-data", "unit", c.npz(X=np.array([[1.0, np.inf]] * 4), y=[0, 1, 0, 1])],
     "data.npz: X contains 4 inf value(s) (column(s) 1)"),
    (lambda c: ["put-data", "unit", c.npz(X=np.zeros((4, 2)), y=[0, 1, 0])],
     "data.npz: X has 4 rows but y has 3"),
    (lambda c: ["run", "unit", "gridsearch", "--data", "digits", "--model", "math.sqrt",
                "--param", "C=[1]"],
     "--model: math.sqrt is not a scikit-learn estimator class or factory"),
    (lambda c: ["run", "unit", "gridsearch", "--data", "digits", "--param", "C=[1]",
                "--scoring", "f1_macor"],
     "--scoring: unknown scorer 'f1_macor'; close ones: f1_macro"),
])
def test_bad_data_and_models_from_the_console_script_are_one_line_on_stderr(case, args,
                                                                            expected):
    done = console_script(case, *args(case))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert not (case.dir / "provision-results").exists()  # no journal, no results
