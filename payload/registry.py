"""The payload kinds ``provision run NAME KIND`` can run: name -> a callable and
its options.

A payload module registers its entry point with `payload_kind`; the options a
kind accepts are the keyword parameters of that callable after the client (the
first parameter), so the declaration cannot drift from the code. A front end
(the CLI, a notebook) looks a kind up with `kind`, checks the options it
collected with `PayloadKind.check` and calls it; adding a payload is one module
with one decorated function, imported by ``payload/__init__.py``.

This module imports nothing from ``payload``, so every payload module can
import it without a cycle.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_KINDS: dict[str, PayloadKind] = {}


@dataclass(frozen=True)
class PayloadKind:
    """One runnable payload."""

    name: str
    run: Callable[..., Any]  # run(client, **options)
    description: str
    options: dict[str, inspect.Parameter] = field(default_factory=dict)

    @property
    def required(self) -> list[str]:
        """Options without a default."""
        return [n for n, p in self.options.items() if p.default is inspect.Parameter.empty]

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


def payload_kind(name: str, description: str) -> Callable[[Callable], Callable]:
    """Register the decorated ``func(client, **options)`` as payload ``name``."""

    def register(func: Callable) -> Callable:
        if name in _KINDS and _KINDS[name].run is not func:
            raise ValueError(f"payload kind {name!r} is registered twice")
        params = list(inspect.signature(func).parameters.values())[1:]  # after the client
        options = {
            p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        _KINDS[name] = PayloadKind(name, func, description, options)
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
