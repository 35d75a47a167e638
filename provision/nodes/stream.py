"""The laptop's side of the streaming relay: one tar stream to the master, which
writes it into its own copy and into every worker that needs it as it arrives.

One SSH session to the master runs `provision.nodes.tee` there: it starts the
master's own receiver and, over the cluster network, each worker's (the master's
ssh with the cluster key, `relay.ssh_to`), all at once, so their content-hash
skips, free-space checks and connection set-up run in parallel with each other and
with the upload (a worker still connecting catches up from the master's spool)
rather than after it. Each receiver is `transfer.receive_script` with its
hashes checked where the copy lands, into a temp dir renamed into place: a receiver
that breaks mid-stream keeps nothing, and the others go on. When the master already
holds a verified copy it is the source (a node added later gets the master's copy,
nothing crosses the laptop's link). Uploading first and forwarding after would add
the whole forward to every put-data; streaming hides it behind the upload.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provision.nodes import relay, transfer
from provision.nodes.remote import Endpoint, NodeError

TEE = Path(__file__).with_name("tee.py")


@dataclass(frozen=True)
class Leg:
    """One destination: its endpoint as shown in errors, and the hop the master uses
    (None for the master itself)."""

    ep: Endpoint
    hop: relay.Hop | None = None


@dataclass
class Outcome:
    """What each destination got: bytes written (0: it had the copy) or its error, and
    the bytes that crossed the laptop's link."""

    bytes_to: dict[str, int] = field(default_factory=dict)
    errors: dict[str, NodeError] = field(default_factory=dict)
    laptop_bytes: int = 0


def tee_command(dests: list[tuple[str, str]], own: str, local: str, remote_root: str) -> str:
    """The master's command: `provision.nodes.tee` with its destinations, run by the
    node's venv (an image may have no ``python3``: then uv brought the interpreter)."""
    spec = json.dumps({"dests": dests, "own": own, "local": local})
    py = shlex.quote(f"{remote_root}/venv/bin/python")
    return (f"P={py}; [ -x \"$P\" ] || P=python3; \"$P\" "
            + shlex.join(["-c", TEE.read_text(), spec]))


def relay_stream(
    master: Leg, workers: list[Leg], local_dir: Path, target: str, names: list[str],
    sums: dict[str, str], need: int, remote_root: str, *,
    on_bytes: Callable[[int], None] | None = None,
    on_resend: Callable[[str], Callable[[], None]] | None = None,
) -> Outcome:
    """Stream `local_dir` to the master and on to `workers` (see the module).

    Raises `NodeError` naming the master only when the session to it fails as a
    whole; each destination's own failure is in `Outcome.errors`.
    """
    script, cmd = transfer.receive_script(target, f"{target}/manifest.json", sums, need,
                                          check=True)
    dests = [(master.ep.name, script)] + [
        (w.ep.name, relay.ssh_to(w.hop, remote_root, script)) for w in workers if w.hop]
    local = f"cd {shlex.quote(target)} && tar -c -f - " + " ".join(map(shlex.quote, names))
    command = tee_command(dests, master.ep.name, local, remote_root)
    said: dict = {}

    def have(ep: Endpoint, line: bytes) -> bool:  # the tee's first line: where bytes come from
        said.update(json.loads(line or b"{}"))
        return said.get("source") != "stdin"

    def fail(ep: Endpoint, code: int | None, stderr: str, what: str = "") -> NodeError:
        return NodeError.from_command(ep, "python3 -c <provision.nodes.tee>", code, stderr,
                                      what=what)

    sent, rest = transfer.send_tree(master.ep, local_dir, command, have, fail,
                                    on_bytes=on_bytes)
    total = sum(p.stat().st_size for p in local_dir.iterdir())  # data, not tar framing
    out = Outcome(laptop_bytes=0 if sent is None else total)
    last = _last_json(rest)
    done, answers = last.get("done", {}), last.get("answers", {})
    for leg in [master, *workers]:
        name = leg.ep.name
        try:
            word = answers.get(name, "")
            if word and transfer.answer(leg.ep, word.encode(), target, need,
                                        on_resend and on_resend(name)):
                out.bytes_to[name] = 0
                continue
            code, stderr, _ = done.get(name, [None, "no answer from the master's relay", 0])
            if code != 0:
                raise transfer.failure(leg.ep, cmd, code, stderr, target, need)
            out.bytes_to[name] = total
        except NodeError as err:
            out.errors[name] = err
    return out


def _last_json(rest: bytes) -> dict:
    """The tee's closing line (its last non-empty stdout line), or {} when it died first."""
    lines = [ln for ln in rest.decode(errors="replace").splitlines() if ln.strip()]
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:  # each destination then fails with "no answer"
        return {}
