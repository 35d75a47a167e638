"""Error kinds the CLI turns into one line and an exit status.

Each module keeps its own one-line exception (ConfigError, CloudError,
NodeError, SimError); this module only says which of them mean "your input is
wrong" (exit 2, nothing created) and which mean "something failed" (exit 1).
"""

from __future__ import annotations


class ProvisionError(Exception):
    """A failure with a one-line, user-facing message."""

    exit_code = 1


class BadInput(ProvisionError):
    """The user's input is wrong; nothing was created."""

    exit_code = 2
