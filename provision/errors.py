"""One hierarchy of user-facing errors, each carrying the exit status it means.

Every module raises a subclass of one of these two, so the CLI needs no list of
class names: `isinstance(err, ProvisionError)` says "print one line", and
`err.exit_code` says which status. `BadInput` (exit 2) means the user's input
is wrong and nothing was created; any other `ProvisionError` (exit 1) means
something failed on the way. A new exception class that subclasses neither
shows up as "--debug shows the traceback", which is what an unexpected error is.
"""

from __future__ import annotations


class ProvisionError(Exception):
    """A failure with a one-line, user-facing message (exit status 1)."""

    exit_code = 1


class BadInput(ProvisionError):
    """The user's input is wrong (a flag, a field, a file); nothing was created (exit 2)."""

    exit_code = 2


def one_line_tail(text: str, lines: int = 3, width: int = 400) -> str:
    """The last non-empty `lines` of a command's output joined into one line of at most
    `width` characters: what an error message quotes of stderr."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-width:]
