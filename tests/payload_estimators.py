"""Estimators that fail or dawdle on purpose, as in scikit-learn's own tests.

They are defined in this module, which engines cannot import: it is registered
with cloudpickle to travel by value, as a notebook's classes do.
"""

from __future__ import annotations

import sys
import time

import cloudpickle
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CustomFitError(ValueError):
    """An exception class the engines know only by value."""


class FailingClassifier(ClassifierMixin, BaseEstimator):
    """Fails to fit when ``parameter == FAILING_PARAMETER`` (as in sklearn's tests)."""

    FAILING_PARAMETER = 2

    def __init__(self, parameter=None):
        self.parameter = parameter

    def fit(self, X, y):
        if self.parameter == FailingClassifier.FAILING_PARAMETER:
            raise ValueError("Failing classifier failed as required")
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(X.shape[0], self.classes_[0])


class CustomFailingClassifier(FailingClassifier):
    """Fails with an exception type of its own module."""

    def fit(self, X, y):
        if self.parameter == FailingClassifier.FAILING_PARAMETER:
            raise CustomFitError("custom failure on the engine")
        return super().fit(X, y)


class SlowClassifier(FailingClassifier):
    """Sleeps in fit, to have tasks still queued when the search is aborted."""

    def fit(self, X, y):
        time.sleep(0.2)
        return super().fit(X, y)


class SlowC(ClassifierMixin, BaseEstimator):
    """A constant classifier with a ``C`` (a cost parameter for longest-first) that
    takes 0.1 s to fit."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        time.sleep(0.1)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


class MockClassifier(ClassifierMixin, BaseEstimator):
    """Dummy classifier to test the parameter search algorithms (sklearn's)."""

    def __init__(self, foo_param=0):
        self.foo_param = foo_param

    def fit(self, X, Y):
        assert len(X) == len(Y)
        self.classes_ = np.unique(Y)
        return self

    def predict(self, T):
        return T.shape[0]

    def transform(self, X):
        return X + self.foo_param

    def inverse_transform(self, X):
        return X - self.foo_param

    predict_proba = predict
    predict_log_proba = predict
    decision_function = predict

    def score(self, X=None, Y=None):
        return 1.0 if self.foo_param > 1 else 0.0

    def get_params(self, deep=False):
        return {"foo_param": self.foo_param}

    def set_params(self, **params):
        self.foo_param = params["foo_param"]
        return self


class SklearnFailingClassifier(BaseEstimator):
    """Classifier that raises a ValueError on fit() (sklearn's)."""

    FAILING_PARAMETER = 2

    def __init__(self, parameter=None):
        self.parameter = parameter

    def fit(self, X, y=None):
        if self.parameter == SklearnFailingClassifier.FAILING_PARAMETER:
            raise ValueError("Failing classifier failed as required")

    def predict(self, X):
        return np.zeros(X.shape[0])

    def score(self, X=None, Y=None):
        return 0.0
