"""The autostop agent: runs on the master, stops the cluster when it is idle,
too old or too expensive, with the laptop closed.

This file is copied to the master as it is and run with the node venv's python
(``{root}/venv/bin/python {root}/autostop/agent.py {root}``), so it imports
only the standard library at the top and ipyparallel (in that venv) when it
runs; never `provision`, which nodes do not have. `provision.nodes.autostop`
installs it; `decide` is a pure function the unit tests call directly.

Files under ``{root}/autostop/``: ``config.json`` (written by the laptop, read
at every poll, so a new setting applies without a restart), ``state.json``
(written here at every poll: what `provision status` shows), ``agent.log``,
``agent.pid``, and ``id_ed25519`` (the key whose public half each worker
accepts only to run ``sudo -n poweroff``).

Idle means: the controller has no task queued, unassigned or running, no task
completed since the last poll (one that ran between two polls), and no client
other than this agent is connected to the controller's client-facing ports
(a laptop's client holds TCP connections to them through its SSH tunnel; the
engines use other ports). The hub's queue status is the authority on work, so
a search left running with the laptop closed keeps the cluster up until its
queue drains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL_S = 5.0  # how often the agent looks
POWEROFF = "sudo -n poweroff"  # the only command a worker accepts with the agent's key
SSH_OPTS = ("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR")
GO_WAIT_S = 60.0  # for the installer's go-ahead (see `Agent.run`); then it goes ahead anyway
RETRY_STOP_S = 30.0  # after a stop that left this node running (e.g. no sudo)
IDLE, MAX_HOURS, BUDGET = "idle", "max_hours", "budget"


@dataclass(frozen=True)
class Limits:
    """What the laptop asked for (``config.json``); None = no such limit."""

    idle_s: float | None = None
    max_hours: float | None = None
    budget: float | None = None
    hourly: float | None = None  # USD/hour of the whole cluster, priced on the laptop
    spent: float = 0.0  # USD spent when the laptop wrote the config, at `set_at`
    set_at: float = 0.0  # epoch seconds the settings were written (idle counts from here)
    launched_at: float = 0.0  # epoch seconds of the first launch: the lifetime's start

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Limits:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if doc.get(k) is not None})


def spent(limits: Limits, now: float) -> float | None:
    """USD spent by `now`: the spend the laptop counted, plus the hourly rate since."""
    if limits.hourly is None:
        return None
    return limits.spent + limits.hourly * max(0.0, now - limits.set_at) / 3600


def decide(limits: Limits, last_active: float, now: float) -> str | None:
    """Why the cluster must stop now (`IDLE`, `MAX_HOURS`, `BUDGET`), or None.

    `last_active`: when work or a client was last seen (the settings' time
    counts as activity: a new setting restarts the idle clock). The hard limits
    come first: they hold however busy the cluster is.
    """
    if limits.max_hours is not None and now - limits.launched_at >= limits.max_hours * 3600:
        return MAX_HOURS
    cost = spent(limits, now)
    if limits.budget is not None and cost is not None and cost >= limits.budget:
        return BUDGET
    idle_for = now - max(last_active, limits.set_at)
    if limits.idle_s is not None and idle_for >= limits.idle_s:
        return IDLE
    return None


def busy(queues: dict[Any, Any], completed_before: int | None) -> tuple[bool, int]:
    """Whether `rc.queue_status()` shows work (queued, unassigned, running, or a task
    completed since `completed_before`), and the completed count now."""
    engines = [q for k, q in queues.items() if isinstance(q, dict)]
    completed = sum(int(q.get("completed", 0)) for q in engines)
    working = int(queues.get("unassigned", 0)) + sum(
        int(q.get("queue", 0)) + int(q.get("tasks", 0)) for q in engines)
    moved = completed_before is not None and completed != completed_before
    return working > 0 or moved, completed


# --- what the master sees ----------------------------------------------------------

Socket = tuple[str, str, str, int]  # (local "ip:port", remote "ip:port", TCP state, inode)


def _tcp() -> list[Socket]:
    """This network namespace's TCP sockets (addresses as /proc writes them, in hex)."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        rows += [(f[1], f[2], f[3], int(f[9])) for f in (line.split() for line in lines)]
    return rows


def _socket_owners() -> dict[int, str]:
    """Socket inode -> the command line of the process holding it (the processes this
    user may look into: the controller's and this agent's; sshd's are not)."""
    owners = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners[int(link[8:-1])] = f"{pid} {cmd}"
    return owners


def ports(client_json: Path, engine_json: Path) -> set[int]:
    """The controller's ports for clients: those in the client file and not in the
    engine file (the registration port, which engines share, is left out)."""
    def numbers(p: Path) -> set[int]:
        doc = json.loads(p.read_text())
        return {v for v in doc.values() if isinstance(v, int) and not isinstance(v, bool)}
    return numbers(client_json) - numbers(engine_json)


def clients(client_ports: set[int], rows: list[Socket], owners: dict[int, str],
            me: int) -> int:
    """Established connections to the client ports from anything but the controller's own
    processes (its schedulers subscribe to the hub's notifications) and this agent
    (pid `me`): a client on this node, or an SSH tunnel from a laptop."""
    by_local = {local: inode for local, _, st, inode in rows if st == "01"}
    n = 0
    for local, remote, st, _ in rows:
        if st != "01" or int(local.rsplit(":", 1)[1], 16) not in client_ports:
            continue
        owner = owners.get(by_local.get(remote, -1), "")  # the peer, when on this node
        if "ipcontroller" in owner or owner.split(" ", 1)[0] == str(me):
            continue
        n += 1
    return n


class Agent:
    """The loop: observe, decide, write the state file; stop the cluster when told to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "autostop"
        self.sec = root / "ipython" / "security"
        self.rc: Any = None
        self.completed: int | None = None
        previous = self._read("state.json") or {}
        self.last_active = float(previous.get("last_active") or time.time())

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / name).read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, doc: dict[str, Any]) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.dir / "state.json")

    def observe(self) -> dict[str, Any]:
        """Work and clients now, or why they cannot be seen (then nothing counts as active:
        a cluster whose controller is gone can run nothing, and still bills)."""
        try:
            if self.rc is None:
                import ipyparallel

                self.rc = ipyparallel.Client(str(self.sec / "ipcontroller-client.json"),
                                             timeout=20)
            working, self.completed = busy(self.rc.queue_status(), self.completed)
            n = clients(ports(self.sec / "ipcontroller-client.json",
                              self.sec / "ipcontroller-engine.json"),
                        _tcp(), _socket_owners(), os.getpid())
        except Exception as err:  # noqa: BLE001 - reported in the state file, retried
            if self.rc is not None:
                self.rc.close()
            self.rc = None
            return {"controller": f"{type(err).__name__}: {err}", "busy": False, "clients": 0}
        return {"controller": "ok", "busy": working, "clients": n, "completed": self.completed}

    def step(self, now: float) -> str | None:
        config = self._read("config.json") or {}
        limits = Limits.from_json(config)
        seen = self.observe()
        if seen["busy"] or seen["clients"]:
            self.last_active = now
        reason = decide(limits, self.last_active, now)
        self._write_state({
            "pid": os.getpid(), "updated_at": now, "last_active": self.last_active,
            "idle_s": round(now - max(self.last_active, limits.set_at), 1),
            "spent": spent(limits, now), "limits": config, "stopping": reason, **seen,
        })
        return reason

    def stop_cluster(self, reason: str) -> None:
        """Power off every worker (in parallel, through the key each accepts only for
        that), then this node; the instances were launched to terminate on shutdown."""
        config = self._read("config.json") or {}
        key, user = self.dir / "id_ed25519", config.get("user", "ubuntu")
        log(f"stopping the cluster: {reason}")
        procs = [subprocess.Popen(["ssh", "-i", str(key), *SSH_OPTS, f"{user}@{ip}", POWEROFF],
                                  stdin=subprocess.DEVNULL)
                 for ip in config.get("workers", [])]
        for ip, p in zip(config.get("workers", []), procs):
            try:
                log(f"worker {ip}: poweroff exit {p.wait(timeout=60)}")
            except subprocess.TimeoutExpired:
                p.kill()
                log(f"worker {ip}: poweroff timed out")
        done = subprocess.run(POWEROFF.split(), capture_output=True, text=True)
        log(f"master: poweroff exit {done.returncode} {done.stderr.strip()}")

    def run(self) -> None:
        (self.dir / "agent.pid").write_text(f"{os.getpid()}\n")
        self._write_state({"pid": os.getpid(), "updated_at": time.time(), "stopping": None,
                           "idle_s": 0.0, "last_active": self.last_active,
                           "controller": "starting"})  # the installer waits for this
        log(f"agent started (pid {os.getpid()})")
        # A limit already reached stops the cluster at the first look: not before the
        # installer, still connected to this node, has seen this state and said go
        # (else its session would hang on a node that powered itself off).
        go, deadline = self.dir / "go", time.monotonic() + GO_WAIT_S
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        go.unlink(missing_ok=True)
        while True:
            reason = self.step(time.time())
            wait = float((self._read("config.json") or {}).get("poll_s", POLL_S))
            if reason is not None:  # poweroff ends this process; if it did not, try again
                self.stop_cluster(reason)
                wait = max(wait, RETRY_STOP_S)
            time.sleep(wait)


def log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}", flush=True)


if __name__ == "__main__":
    Agent(Path(sys.argv[1])).run()
