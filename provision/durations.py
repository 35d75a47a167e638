"""Durations as people type them: ``40s``, ``30m``, ``1.5h``; a bare number is minutes.

Minutes by default because that is the unit an idle timeout is thought in
(SkyPilot's ``-i 30`` means 30 minutes); seconds are allowed so a test (or a
demo) can see an autostop happen without waiting a minute.
"""

from __future__ import annotations

import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$")


def parse_duration(text: str | float) -> float:
    """Seconds in `text` (``40s``, ``30m``, ``2h``, ``30`` = 30 minutes).

    `ValueError` with what a duration looks like for anything else, and for
    zero: a cluster that stops the moment it is idle would stop before use.
    """
    if isinstance(text, bool):
        raise ValueError(f"must be a duration like 30m, 40s or 1.5h (got {text!r})")
    if isinstance(text, (int, float)):
        seconds = float(text) * UNITS["m"]
    else:
        match = DURATION_RE.match(str(text).lower())
        if match is None:
            raise ValueError(f"must be a duration like 30m, 40s or 1.5h (got {text!r})")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "m"]
    if not seconds > 0:
        raise ValueError(f"must be longer than zero (got {text!r})")
    return seconds


def show_duration(seconds: float) -> str:
    """Seconds as the shortest exact unit: 1800 -> ``30m``, 40 -> ``40s``, 5400 -> ``90m``."""
    for unit in ("h", "m"):
        count = seconds / UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"
