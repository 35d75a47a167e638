"""Run on the master by its venv's Python (``-c``, standard library only): tee one
tar stream into several receivers as it arrives, so workers get the laptop's bytes
while the master is still receiving them (`provision.nodes.stream` sends it and reads
its answers).

Argument: JSON ``{"dests": [[name, shell command], ...], "own": name, "local": shell
command}``. Each destination is a receiver (`transfer.receive_script`, for a worker
wrapped in the master's ssh to it) that first answers one line (``have``, ``send``,
``resend``, ``nospace FREE``). All start at once, so their connections, hash checks
and free-space checks run in parallel with each other and with the upload.

The first stdout line says where the bytes come from, as soon as the master's own
receiver (`own`) has answered: ``stdin`` (the laptop streams them), ``local`` (the
master already holds a verified copy: its ``local`` tar is the source, started only
if a worker wants it; nothing crosses the laptop's link) or ``none``. Chunks go to a
`Spool` that each wanting receiver reads from the start at its own pace: a worker
whose ssh is still connecting when the upload begins catches up from the spool
instead of holding the upload back. A receiver that breaks is dropped, the others
go on. The last line gives every answer and each destination's exit status, stderr
tail and bytes written. This script exits 0 whatever the receivers did.
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
SPOOL_CAP = 128 << 20  # bytes held for a receiver that lags; the upload waits beyond that


class Spool:
    """Chunks of the stream, kept until every receiver still reading has had them."""

    def __init__(self, names: list[str], cap: int = SPOOL_CAP) -> None:
        self.chunks: list[bytes] = []
        self.base, self.held, self.cap, self.eof = 0, 0, cap, False
        self.pos = dict.fromkeys(names, 0)  # reader -> index of its next chunk
        self.cond = threading.Condition()

    def put(self, chunk: bytes) -> None:
        with self.cond:
            while self.pos and self.held > self.cap:
                self.cond.wait()
            if self.pos:  # nobody reads any more: the chunk is dropped
                self.chunks.append(chunk)
                self.held += len(chunk)
                self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def get(self, name: str) -> bytes | None:
        """`name`'s next chunk, waiting for it; None at the end of the stream."""
        with self.cond:
            while self.pos[name] - self.base >= len(self.chunks) and not self.eof:
                self.cond.wait()
            i = self.pos[name] - self.base
            if i >= len(self.chunks):
                return None
            chunk = self.chunks[i]
            self.pos[name] += 1
            self._trim()
            return chunk

    def leave(self, name: str) -> None:
        with self.cond:
            self.pos.pop(name, None)
            self._trim()
            self.cond.notify_all()

    def _trim(self) -> None:
        low = min(self.pos.values(), default=self.base + len(self.chunks))
        drop = low - self.base
        if drop > 0:
            self.held -= sum(len(c) for c in self.chunks[:drop])
            del self.chunks[:drop]
            self.base = low
            self.cond.notify_all()


class Tee:
    """The receivers, their answers and outcomes."""

    def __init__(self, dests: list[list[str]], stack: contextlib.ExitStack) -> None:
        self.names = [name for name, _ in dests]
        self.spool = Spool(self.names)
        self.answers: dict[str, str] = {}
        self.done: dict[str, list[Any]] = {}
        self.answered = threading.Condition()
        self.procs, self.errs = {}, {}
        for name, cmd in dests:
            err = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack
            self.errs[name] = err
            self.procs[name] = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=err)
        self.threads = [threading.Thread(target=self.serve, args=(n,), daemon=True)
                        for n in self.names]
        for t in self.threads:
            t.start()

    def serve(self, name: str) -> None:
        """One receiver: its answer, then the spool's chunks if it wants them."""
        p = self.procs[name]
        line = p.stdout.readline().decode(errors="replace").strip()  # type: ignore[union-attr]
        with self.answered:
            self.answers[name] = line
            self.answered.notify_all()
        written = 0
        if line.split(" ")[0] in WANT:
            while (chunk := self.spool.get(name)) is not None:
                try:
                    p.stdin.write(chunk)  # type: ignore[union-attr]
                    p.stdin.flush()  # type: ignore[union-attr]
                except OSError:  # it quit (its status and stderr say why): the others go on
                    break
                written += len(chunk)
        self.spool.leave(name)
        with contextlib.suppress(OSError):
            p.stdin.close()  # type: ignore[union-attr]
        p.stdout.read()  # type: ignore[union-attr]
        code = p.wait()
        self.errs[name].seek(0)
        self.done[name] = [code, self.errs[name].read().decode(errors="replace")[-TAIL:],
                           written]

    def wait_answers(self, names: list[str]) -> dict[str, str]:
        with self.answered:
            self.answered.wait_for(lambda: all(n in self.answers for n in names))
            return {n: self.answers[n] for n in names}

    def wanted(self) -> bool:
        """Whether some receiver wants the bytes (waits until one does or all answered)."""
        with self.answered:
            self.answered.wait_for(lambda: len(self.answers) == len(self.names) or any(
                a.split(" ")[0] in WANT for a in self.answers.values()))
            return any(a.split(" ")[0] in WANT for a in self.answers.values())

    def feed(self, src: IO[bytes]) -> None:
        while chunk := src.read1(CHUNK):  # type: ignore[attr-defined]
            self.spool.put(chunk)


def main(spec: dict[str, Any]) -> None:
    with contextlib.ExitStack() as stack:
        tee = Tee(spec["dests"], stack)
        own = tee.wait_answers([spec["own"]])[spec["own"]]
        if own == "have":
            source = "local"
        elif own.split(" ")[0] in WANT or tee.wanted():
            source = "stdin"  # the master takes it, or (it cannot) a worker does
        else:
            source = "none"
        print(json.dumps({"source": source}), flush=True)
        if source == "stdin":
            tee.feed(sys.stdin.buffer)
        elif source == "local" and tee.wanted():
            local = subprocess.Popen(["sh", "-c", spec["local"]], stdout=subprocess.PIPE)
            tee.feed(local.stdout)  # type: ignore[arg-type]
            local.wait()
        tee.spool.close()
        for t in tee.threads:
            t.join()
        print(json.dumps({"answers": tee.answers, "done": tee.done}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
