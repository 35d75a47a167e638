"""provision: disposable EC2 spot clusters for scikit-learn model selection."""

__version__ = "0.1.0"
