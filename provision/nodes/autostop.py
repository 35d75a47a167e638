"""Install, reconfigure, stop and read the autostop agent on the master (over SSH).

The agent (`provision.nodes.autostop_agent`, copied as it is) runs detached
(``setsid nohup``, like the controller) under ``{remote_root}/autostop/`` with
the node venv's python. Installing is idempotent: the script and its
``config.json`` are written again, the running agent (if any) is replaced by a
fresh one, which carries the idle clock over from the state file.

How the master powers the workers off: over SSH, with a key made on the master
(it never leaves the cluster) that each worker accepts only for ``sudo -n
poweroff`` (``restrict,command=...`` in its authorized_keys). Not through the
engines: a busy engine (``max_hours``/``budget`` stop busy clusters) runs a
request only after its current task, and a worker whose engines died has no
engine to ask; not with a key that can log in: the master's disk would then
hold a key to every worker.
"""

from __future__ import annotations

import json
import shlex
import time
from importlib import resources
from typing import Any

import fabric

from provision.errors import ProvisionError
from provision.nodes import autostop_agent, keys
from provision.nodes.remote import Borrowed, Endpoint, NodeError, run

AGENT_START_S = 30  # for a fresh agent to write its first state file
KEY_COMMENT = "provision-autostop"


def _dir(remote_root: str) -> str:
    return f"{remote_root}/autostop"


def _write(conn: fabric.Connection, path: str, text: str, mode: int = 0o644) -> None:
    """Write a file atomically (a reader never sees half of it)."""
    sftp = conn.sftp()
    with sftp.open(path + ".tmp", "w") as f:
        f.chmod(mode)
        f.write(text.encode())
    sftp.posix_rename(path + ".tmp", path)


_STOP = (  # the agent of the pid file, if it is one: TERM, up to 5 s, then KILL
    'p=$(cat "$D/agent.pid" 2>/dev/null); '
    'if [ -n "$p" ] && tr "\\000" " " < "/proc/$p/cmdline" 2>/dev/null '
    '| grep -q autostop/agent.py; '
    'then kill "$p"; i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; '
    'i=$((i+1)); done; kill -9 "$p" 2>/dev/null; fi; rm -f "$D/agent.pid"'
)


def ensure_key(ep_master: Endpoint | fabric.Connection, remote_root: str) -> str:
    """The agent's key on the master (made once); returns the public key the workers
    must accept (see `authorize`) before the agent starts: a limit already reached
    makes it stop the workers at its first look."""
    return run(ep_master, keys.ensure_key_script(_dir(remote_root), KEY_COMMENT)).strip()


def install(ep_master: Endpoint | fabric.Connection, remote_root: str,
            config: dict[str, Any]) -> None:
    """Have the agent run on the master with `config` (its key made by `ensure_key`
    and accepted by the workers first)."""
    d = _dir(remote_root)
    source = resources.files("provision.nodes").joinpath("autostop_agent.py").read_text()
    with Borrowed(ep_master) as b:
        run(b.conn, f"mkdir -p -m 700 {shlex.quote(d)}")
        _write(b.conn, f"{d}/agent.py", source)
        _write(b.conn, f"{d}/config.json", json.dumps(config, indent=1), 0o600)
        run(b.conn, "\n".join([
            f"D={shlex.quote(d)}; R={shlex.quote(remote_root)}",
            _STOP,
            'rm -f "$D/go"',
            'setsid nohup "$R/venv/bin/python" "$D/agent.py" "$R" >> "$D/agent.log" 2>&1 '
            "< /dev/null &",
        ]))
        _wait_started(b.conn, d)


def _wait_started(conn: fabric.Connection, d: str) -> None:
    """Until the new agent has written its state (its pid in it), or its log's tail."""
    deadline = time.monotonic() + AGENT_START_S
    q = shlex.quote(d)
    while time.monotonic() < deadline:
        found = run(conn, f"cat {q}/agent.pid 2>/dev/null; echo; cat {q}/state.json 2>/dev/null; "
                          "true")
        pid, _, doc = found.partition("\n")
        try:
            if pid.strip() and json.loads(doc).get("pid") == int(pid):
                run(conn, f"touch {q}/go")  # the agent's first look comes after this
                return
        except ValueError:
            pass
        time.sleep(0.5)
    tail = run(conn, f"tail -n 5 {q}/agent.log 2>/dev/null || true")
    raise ProvisionError(f"the autostop agent did not start within {AGENT_START_S}s: {tail}")


def authorize(ep: Endpoint | fabric.Connection, public_key: str) -> None:
    """Let the agent's key run ``sudo -n poweroff`` on this node, and nothing else."""
    run(ep, keys.authorize_script(f'restrict,command="{autostop_agent.POWEROFF}" {public_key}'))


def stop(ep_master: Endpoint | fabric.Connection, remote_root: str) -> None:
    """Stop the agent (if any) and remove its settings: the cluster no longer stops itself."""
    run(ep_master, f"D={shlex.quote(_dir(remote_root))}\n{_STOP}\n"
                   'rm -f "$D/config.json" "$D/state.json"')


def read_state(ep_master: Endpoint | fabric.Connection, remote_root: str) -> dict[str, Any] | None:
    """The agent's last state file (None: no agent was ever installed, or it was stopped)."""
    try:
        return _read_json(ep_master, remote_root, "state.json")
    except NodeError:
        return None


def read_config(ep_master: Endpoint | fabric.Connection, remote_root: str) -> dict[str, Any] | None:
    """The agent's ``config.json`` (None: no agent installed, or it was stopped)."""
    return _read_json(ep_master, remote_root, "config.json")


def _read_json(
    ep: Endpoint | fabric.Connection, remote_root: str, name: str
) -> dict[str, Any] | None:
    """One of the agent's JSON files (None: absent or not a JSON object)."""
    text = run(ep, f"cat {shlex.quote(_dir(remote_root))}/{name} 2>/dev/null || true")
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def write_config(ep_master: Endpoint | fabric.Connection, remote_root: str,
                 config: dict[str, Any]) -> None:
    """Replace the running agent's ``config.json`` (atomically); it reads it at every
    poll, so no restart is needed."""
    with Borrowed(ep_master) as b:
        _write(b.conn, f"{_dir(remote_root)}/config.json", json.dumps(config, indent=1), 0o600)
