"""The payload kinds ``provision run NAME KIND`` can run: name -> a callable, its
options, and how its result is shown.

A payload module registers its entry point with `payload_kind`; the options a
kind accepts are the keyword parameters of that callable after the client (the
first parameter), so the declaration cannot drift from the code. A front end
(the CLI, a notebook) looks a kind up with `kind`, checks the options it
collected with `PayloadKind.check` and calls it; adding a payload is one module
with one decorated function, imported by ``payload/__init__.py``.

Some parameter names are *inputs* a front end supplies from the cluster rather
than options a user types; by convention:

- ``estimator``: the model (unfitted).
- ``split_paths``: CV split files, ``(X_train, y_train, X_test, y_test, ...)``, on
  every host (``payload.persist_cv_splits``, ``provision put-data``).
- ``shard_paths``: row partitions ``(X, y)``, each on the hosts that hold it, and
  ``test_path``: held-out rows ``(X, y)`` on every host (``put-data --partition``).
- ``reference_data``: ``(X, y)`` of every training row where the client holds
  them, or None.
- ``param_grid``; ``param_name`` and ``param_range``: what to vary.
- ``journal``: a file to resume from; ``progress``: a ``(done, total)`` callback.

``present(result, out, **options)`` (optional) writes a kind's result under
``out`` (a directory, or a file when ``output="file"``) and returns the lines to
print; its keyword options are the kind's too (`PayloadKind.present_options`).

This module imports nothing from ``payload``, so every payload module can
import it without a cycle.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_KINDS: dict[str, PayloadKind] = {}
OUTPUTS = ("directory", "file")


def _keyword_options(func: Callable, skip: int) -> dict[str, inspect.Parameter]:
    """The named parameters of ``func`` after its first ``skip`` ones."""
    params = list(inspect.signature(func).parameters.values())[skip:]
    return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@dataclass(frozen=True)
class PayloadKind:
    """One runnable payload."""

    name: str
    run: Callable[..., Any]  # run(client, **options)
    description: str
    options: dict[str, inspect.Parameter] = field(default_factory=dict)
    present: Callable[..., Iterable[str]] | None = None  # present(result, out, **options)
    output: str = "directory"  # what `present` writes: a directory of results, or one file
    option_help: Mapping[str, str] = field(default_factory=dict)  # option -> one line
    # Default estimators (dotted paths) for a classification and a regression target.
    models: tuple[str, str] | None = None

    @property
    def required(self) -> list[str]:
        """Options without a default."""
        return [n for n, p in self.options.items() if p.default is inspect.Parameter.empty]

    @property
    def present_options(self) -> dict[str, inspect.Parameter]:
        """Keyword options of `present`, after the result and the output path."""
        return _keyword_options(self.present, 2) if self.present is not None else {}

    def check(self, options: Mapping[str, Any]) -> None:
        """Refuse unknown or missing options, naming the kind and what it takes."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"payload {self.name!r} has no option {', '.join(unknown)}; "
                f"it takes: {', '.join(self.options)}"
            )
        missing = [name for name in self.required if name not in options]
        if missing:
            raise ValueError(f"payload {self.name!r} needs {', '.join(missing)}")

    def __call__(self, client: Any, **options: Any) -> Any:
        self.check(options)
        return self.run(client, **options)


def payload_kind(
    name: str,
    description: str,
    *,
    present: Callable[..., Iterable[str]] | None = None,
    output: str = "directory",
    option_help: Mapping[str, str] | None = None,
    models: tuple[str, str] | None = None,
) -> Callable[[Callable], Callable]:
    """Register the decorated ``func(client, **options)`` as payload ``name``."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")

    def register(func: Callable) -> Callable:
        if name in _KINDS and _KINDS[name].run is not func:
            raise ValueError(f"payload kind {name!r} is registered twice")
        _KINDS[name] = PayloadKind(
            name, func, description, _keyword_options(func, 1), present, output,
            dict(option_help or {}), models,
        )
        return func

    return register


def kind(name: str) -> PayloadKind:
    """The registered payload ``name``, or a ValueError listing the known ones."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown payload kind {name!r}; known: {', '.join(sorted(_KINDS))}"
        ) from None


def kinds() -> dict[str, PayloadKind]:
    """Every registered payload kind, by name."""
    return dict(sorted(_KINDS.items()))
