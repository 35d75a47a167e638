"""Strategies that configure nodes once they run: Fabric (built in) or Ansible.

Both bring every node to the same layout under ``remote_root`` (venv, wheels,
controller profile, pid files, logs, data), so every other command works the
same whichever configured the cluster. `up` takes one by name or as an object
(tests pass their own); see `base.Strategy` for the interface.
"""

from __future__ import annotations

from provision.configure.ansible import AnsibleStrategy
from provision.configure.base import Results, Step, Strategy
from provision.configure.fabric import FabricStrategy
from provision.errors import BadInput

STRATEGIES: dict[str, type[Strategy]] = {"fabric": FabricStrategy, "ansible": AnsibleStrategy}
DEFAULT = "fabric"

__all__ = ["DEFAULT", "STRATEGIES", "AnsibleStrategy", "FabricStrategy", "Results", "Step",
           "Strategy", "strategy"]


def strategy(choice: str | Strategy = DEFAULT) -> Strategy:
    """A fresh strategy by name, or `choice` itself when it already is one."""
    if isinstance(choice, Strategy):
        return choice
    if choice not in STRATEGIES:
        raise BadInput(f"--configure-with: must be {' or '.join(STRATEGIES)} (got {choice!r})")
    return STRATEGIES[choice]()
