"""Append-only JSON-lines journal of a search, for resuming after a crash.

Layout, one JSON object per line:

- ``{"type": "header", "key": ..., ...}`` once, first line. ``key`` hashes
  everything that determines the results (estimator, candidates, split
  contents, scoring, train scores, error_score).
- ``{"type": "session", "session": i, "submitted": [...], ...}`` each time the
  search starts: the pairs this run submits, as flat ids
  ``candidate * n_splits + split``.
- ``{"type": "result", "session": i, "candidate": c, "split": s, ...}`` per
  completed pair, as it arrives.

Opening a journal whose key differs from the search's raises
:class:`JournalMismatch` rather than starting over silently: the file may hold
hours of results of another search, and deleting them is the user's decision.

Each line is flushed as written, so a killed client loses nothing the OS has
seen; ``fsync`` runs per batch (at most once a second, and on close) so a
machine crash loses at most about a second of results without paying a disk
sync per fit. A partial last line left by a crash is cut off on reopening.
Only one process may append at a time (``flock``).

:func:`verify_journal` checks from the file alone that no pair was submitted
again after it had completed, i.e. that a restart recomputed only the pairs
that were in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .splits import split_identities

try:  # POSIX only; elsewhere concurrent appends are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT_VERSION = 1


class JournalMismatch(ValueError):
    """The journal file belongs to a different search."""


class Journal:
    """An open journal: append results, fsync in batches, close."""

    def __init__(self, path: Path, file: Any, session: int) -> None:
        self.path = path
        self._file = file
        self.session = session
        self._last_sync = time.monotonic()

    @classmethod
    def open(cls, path: str | os.PathLike, header: dict) -> tuple[Journal, list[dict]]:
        """Open or create the journal for the search described by ``header``.

        Returns the journal and the result records already in it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+b")  # noqa: SIM115 - kept open for the search's lifetime
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RuntimeError(f"journal {path} is in use by another process") from None
            file.seek(0)
            data = file.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # partial line from a crash mid-write
                file.truncate(end)
                data = data[:end]
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
            if not lines:
                header = {"type": "header", "version": FORMAT_VERSION, **header}
                header["created"] = time.time()
                file.write(_dumps(header))
                _sync(file)
                return cls(path, file, session=0), []
            found = lines[0]
            if found.get("type") != "header" or found.get("key") != header["key"]:
                raise JournalMismatch(
                    f"journal {path} belongs to a different search (key "
                    f"{found.get('key')!r}, this search {header['key']!r}); pass another "
                    "journal path, or delete the file to discard its results"
                )
            sessions = [line for line in lines if line.get("type") == "session"]
            results = [line for line in lines if line.get("type") == "result"]
            return cls(path, file, session=len(sessions)), results
        except BaseException:
            file.close()
            raise

    def start_session(self, submitted: list[int], skipped: int) -> None:
        """Record which pairs this run is about to submit."""
        line = {
            "type": "session",
            "session": self.session,
            "time": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "skipped": skipped,
            "submitted": submitted,
        }
        self._file.write(_dumps(line))
        self.sync()

    def append(self, record: dict) -> None:
        """Append one completed pair; flushed now, fsynced at most once a second."""
        self._file.write(_dumps({"type": "result", "session": self.session, **record}))
        self._file.flush()
        if time.monotonic() - self._last_sync >= 1.0:
            self.sync()

    def sync(self) -> None:
        _sync(self._file)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


@dataclass
class JournalCheck:
    """What :func:`verify_journal` found."""

    n_results: int = 0
    n_sessions: int = 0
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    """Pairs with more than one result line."""
    resubmitted_done: list[tuple[int, int]] = field(default_factory=list)
    """Pairs a session submitted although an earlier session had completed them."""
    lost_in_flight: list[tuple[int, int]] = field(default_factory=list)
    """Pairs submitted by a session that ended without their result (recomputed later)."""

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.resubmitted_done


def verify_journal(path: str | os.PathLike) -> JournalCheck:
    """Check that no pair was computed twice except those in flight at a crash."""
    lines = [json.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]
    header = lines[0]
    n_splits = header["n_splits"]
    check = JournalCheck()
    done_before: set[int] = set()
    seen: set[int] = set()
    by_session: dict[int, set[int]] = {}
    submitted: dict[int, list[int]] = {}
    for line in lines[1:]:
        if line["type"] == "session":
            check.n_sessions += 1
            submitted[line["session"]] = line["submitted"]
            done_before = set(seen)
            for pair in line["submitted"]:
                if pair in done_before:
                    check.resubmitted_done.append(divmod(pair, n_splits))
        elif line["type"] == "result":
            pair = line["candidate"] * n_splits + line["split"]
            check.n_results += 1
            if pair in seen:
                check.duplicates.append((line["candidate"], line["split"]))
            seen.add(pair)
            by_session.setdefault(line["session"], set()).add(pair)
    for session, pairs in submitted.items():
        missing = set(pairs) - by_session.get(session, set())
        check.lost_in_flight.extend(divmod(p, n_splits) for p in sorted(missing))
    return check


def search_header(
    estimator: Any,
    candidates: list[dict],
    split_paths: list[str],
    scoring: str,
    return_train_score: bool,
    error_score: Any,
) -> dict:
    """What identifies a search in its journal: everything that shapes its results.

    ``scoring`` is its stable text (``payload.scoring.scoring_identity``).
    """
    identity = {
        "estimator": _full_repr(estimator),
        "candidates": [repr(sorted(p.items())) for p in candidates],
        "splits": split_identities(split_paths),
        "scoring": scoring,
        "return_train_score": return_train_score,
        "error_score": repr(error_score),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {
        "key": key,
        "n_candidates": len(candidates),
        "n_splits": len(split_paths),
        "estimator": identity["estimator"],
        "scoring": scoring,
        "splits": split_paths,
        "split_identities": identity["splits"],
    }


def _full_repr(estimator: Any) -> str:
    """The estimator's repr without sklearn's 700-character ellipsis."""
    try:
        return estimator.__repr__(N_CHAR_MAX=sys.maxsize)
    except TypeError:
        return repr(estimator)


def _dumps(obj: dict) -> bytes:
    return (json.dumps(obj, default=_jsonable, separators=(",", ":")) + "\n").encode()


def _jsonable(value: Any) -> Any:
    """Parameters may hold numpy scalars or arbitrary objects; keep them readable."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return repr(value)


def _sync(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())
