"""What a notebook user runs, run as a plain Python process (not under pytest).

Pytest replaces warning filters, the environment and the working directory, so
it can hide what a user hits. Each test writes a user script, runs it with this
venv's Python against the session's node-venv engines (which have only the node
packages: no urllib3, no matplotlib, no payload), with the usual notebook
imports loaded first, and the default serializer that ``provision.connect()``
users get.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ipyparallel as ipp
import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.svm import SVC

pytest_plugins = ["payload_fixtures"]  # rc, client_json: the node-venv engines

NOTEBOOK_IMPORTS = """\
import json, sys, warnings
import matplotlib.pyplot as plt  # the usual notebook imports, before anything else
import provision
import boto3  # any notebook import can do it: urllib3 registers filters with its own classes
import ipyparallel as ipp
rc = ipp.Client(sys.argv[1])
rc.wait_for_engines(2, timeout=60)
foreign = sorted({f[2].__module__ for f in warnings.filters
                  if f[2].__module__.split(".")[0] in ("urllib3", "matplotlib")})
"""


def run_script(tmp_path: Path, body: str, client_json: Path) -> dict:
    """Run ``NOTEBOOK_IMPORTS + body`` as ``python script.py CLIENT_JSON TMP_PATH``;
    its last stdout line is JSON."""
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK_IMPORTS + body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    done = subprocess.run(
        [sys.executable, str(script), str(client_json), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, f"user script failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_engines_have_only_the_node_packages(rc):
    def probe():
        import importlib.util
        import sys

        names = ("payload", "provision", "urllib3", "boto3", "matplotlib", "sklearn")
        return sys.prefix, {n: importlib.util.find_spec(n) is not None for n in names}

    for prefix, found in rc[:].apply_sync(ipp.interactive(probe)):
        assert prefix != sys.prefix and "provision-test-node-env" in prefix
        assert found == {
            "payload": False, "provision": False, "urllib3": False, "boto3": False,
            "matplotlib": False, "sklearn": True,
        }


def test_sklearn_search_through_the_joblib_backend_from_a_notebook_process(
    tmp_path, client_json
):
    body = """\
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.svm import SVC
X, y = load_iris(return_X_y=True)
before = len(rc.history)
with provision.joblib_backend(rc):
    gs = GridSearchCV(SVC(), {"C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=-1).fit(X, y)
    cv = cross_validate(SVC(), X, y, cv=3, n_jobs=-1)
print(json.dumps({"foreign": foreign, "tasks": len(rc.history) - before,
                  "grid": gs.cv_results_["mean_test_score"].tolist(),
                  "cv": cv["test_score"].tolist()}))
"""
    got = run_script(tmp_path, body, client_json)
    assert "urllib3.exceptions" in got["foreign"]  # the filters that used to break engines
    assert got["tasks"] > 0, "tasks went through the cluster"
    X, y = load_iris(return_X_y=True)
    local = GridSearchCV(SVC(), {"C": [0.1, 1.0, 10.0]}, cv=3).fit(X, y)
    np.testing.assert_array_equal(got["grid"], local.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(got["cv"], cross_validate(SVC(), X, y, cv=3)["test_score"])


def test_cluster_grid_search_of_a_notebook_estimator_from_a_notebook_process(
    tmp_path, client_json
):
    body = """\
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from payload import ClusterGridSearchCV

class Scaled(ClassifierMixin, BaseEstimator):  # defined in the notebook, unknown to engines
    def __init__(self, k=3, scale=1.0):
        self.k, self.scale = k, scale
    def fit(self, X, y):
        self.knn_ = KNeighborsClassifier(self.k).fit(X * [self.scale, 1, 1, 1], y)
        self.classes_ = self.knn_.classes_
        return self
    def predict(self, X):
        return self.knn_.predict(X * [self.scale, 1, 1, 1])

X, y = load_iris(return_X_y=True)
grid = {"k": [1, 5, 15], "scale": [0.1, 1.0, 10.0]}
ours = ClusterGridSearchCV(Scaled(), grid, cv=4, client=rc, data_dir=sys.argv[2]).fit(X, y)
theirs = GridSearchCV(Scaled(), grid, cv=4).fit(X, y)
print(json.dumps({"foreign": foreign, "engines": len(ours.search_.engines),
                  "ours": ours.cv_results_["mean_test_score"].tolist(),
                  "theirs": theirs.cv_results_["mean_test_score"].tolist(),
                  "same_best": ours.best_params_ == theirs.best_params_,
                  "same_predictions": (ours.predict(X) == theirs.predict(X)).all().item()}))
"""
    got = run_script(tmp_path, body, client_json)
    assert "urllib3.exceptions" in got["foreign"]
    assert got["engines"] == 2  # the fits ran on both engines, not in the script
    assert got["ours"] == got["theirs"]
    assert got["same_best"] and got["same_predictions"]
