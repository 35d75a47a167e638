"""The `provision` command: parse, call the Python API, print with Rich.

Nothing here decides what happens in the cloud or on a node; each command turns
flags into settings, calls the API (`lifecycle`, `query`, `files`, `data`, the
payload) and prints the result. Commands are grouped by what they act on:
`cluster` (the cluster as a whole), `nodes` (its nodes), `data` (data and
runs); the simulated region's commands live with it (`provision.sim.cli`).
The command group is in `app`, shared options, output and error handling in
`common`, tables in `tables`. The console script is `entry.run`: it owns
Ctrl-C (exit 130 with a hint, at any moment) and the exit itself.

This package's own import is light on purpose: `entry` is imported through it,
and must install its SIGINT handler before Click, Rich or boto3 load. `main`
and `Main` are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provision.cli.app import main
    from provision.cli.common import Main

_LAZY = {"main": "provision.cli.app", "Main": "provision.cli.common"}
__all__ = ["Main", "main"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'provision.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
