"""Run on the master (``python3 -c``, standard library only): tee one tar stream into
several receivers as it arrives, so workers get the laptop's bytes while the master
is still receiving them (`provision.nodes.stream` sends it and reads its answers).

Argument: JSON ``{"dests": [[name, shell command], ...], "own": name, "local": shell
command}``. Each destination is a receiver (`transfer.receive_script`, for a worker
wrapped in the master's ssh to it) that first answers one line (``have``, ``send``,
``resend``, ``nospace FREE``). All are started at once, so their connections, hash
checks and free-space checks run in parallel and before any byte arrives. Then one
JSON line goes out: every answer, and where the bytes come from: ``stdin`` (the
laptop streams them), ``local`` (the master's own copy `own` answered ``have``: its
``local`` tar is the source; nothing crosses the laptop's link) or ``none``.

Every chunk goes to each receiver still taking bytes; one that breaks is dropped
and the others go on. A last JSON line gives each destination's exit status, stderr
tail and bytes written. This script exits 0 whatever the receivers did: their own
statuses say who failed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
from typing import IO, Any

CHUNK = 1 << 16
WANT = ("send", "resend")
TAIL = 4000  # stderr characters kept per destination


def main(spec: dict[str, Any]) -> None:
    with contextlib.ExitStack() as stack:
        _tee(spec, stack)


def _tee(spec: dict[str, Any], stack: contextlib.ExitStack) -> None:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    errs: dict[str, IO[bytes]] = {}
    for name, cmd in spec["dests"]:
        errs[name] = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - closed by the stack
        procs[name] = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=errs[name])
    answers = {name: p.stdout.readline().decode(errors="replace").strip()  # type: ignore[union-attr]
               for name, p in procs.items()}
    drains = [threading.Thread(target=p.stdout.read, daemon=True)  # type: ignore[union-attr]
              for p in procs.values()]
    for t in drains:
        t.start()
    taking = {n: procs[n] for n, a in answers.items() if a.split(" ")[0] in WANT}
    for name, p in procs.items():
        if name not in taking:
            p.stdin.close()  # type: ignore[union-attr]
    source, local = "none", None
    if taking:
        source = "local" if answers.get(spec["own"]) == "have" else "stdin"
    print(json.dumps({"answers": answers, "source": source}), flush=True)
    if source == "local":
        local = subprocess.Popen(["sh", "-c", spec["local"]], stdout=subprocess.PIPE)
        src: IO[bytes] = local.stdout  # type: ignore[assignment]
    else:
        src = sys.stdin.buffer
    written = dict.fromkeys(procs, 0)
    if taking:
        _copy(src, taking, written)
    for p in taking.values():
        with contextlib.suppress(OSError):
            p.stdin.close()  # type: ignore[union-attr]
    if local is not None:
        local.wait()
    done = {}
    for name, p in procs.items():
        code = p.wait()
        errs[name].seek(0)
        tail = errs[name].read().decode(errors="replace")[-TAIL:]
        done[name] = [code, tail, written[name]]
    for t in drains:
        t.join()
    print(json.dumps({"done": done}), flush=True)


def _copy(src: IO[bytes], taking: dict[str, subprocess.Popen[bytes]],
          written: dict[str, int]) -> None:
    """Each chunk of `src` to every receiver in `taking`; a broken one is dropped."""
    while taking:
        chunk = src.read1(CHUNK) if hasattr(src, "read1") else src.read(CHUNK)
        if not chunk:
            return
        for name in list(taking):
            try:
                taking[name].stdin.write(chunk)  # type: ignore[union-attr]
                taking[name].stdin.flush()  # type: ignore[union-attr]
                written[name] += len(chunk)
            except OSError:  # it quit (its status and stderr say why): the others go on
                del taking[name]
    # Nobody takes bytes any more: read the rest so the sender is not stuck on a full pipe.
    while src.read(CHUNK):
        pass


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
