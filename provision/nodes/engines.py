"""ipcontroller on the master, ipengines on every node, started detached over SSH.

Everything lives under ``{remote_root}`` on the node: the venv made by
`provision.nodes.setup`, the controller's profile (``ipython/``), pid files
(``run/``), logs (``log/``) and the engine connection file (``security/``).
Processes are started with ``setsid nohup`` so they outlive the SSH session, and
tracked by pid files checked against ``/proc/PID/cmdline``: a stale pid reused
by another program never counts as an engine. Every function is idempotent:
starting counts what is alive and starts only the shortfall.

The controller runs with CurveZMQ (``IPP_ENABLE_CURVE=1``: traffic between
client, controller and engines is encrypted and authenticated, which matters on
a VPC shared with other tenants' instances) and a fast heartbeat, so a spot
node that vanishes is noticed in seconds rather than the default ~30 s and its
tasks are resubmitted (``view.retries``) while the search is still running.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Collection
from pathlib import Path

import fabric

from provision.nodes.remote import Borrowed, Endpoint, put, run

HEARTBEAT_MS = 1000  # controller pings every engine this often
HEARTBEAT_MISSES = 4  # ... and drops one after this many missed pings (~5 s)
# Tasks the scheduler hands an engine ahead (ipyparallel's default is 1): with 2,
# the next task waits on the engine while it runs one, instead of a round trip to
# the scheduler after each. `python -m bench.search` (E=2, digits seed grid):
# engines busy 97.7-97.9% of the search span vs 96.1-97.0% with 1, gap between
# tasks 6 ms vs 9-10 ms; the tail stays at 0.4-0.6% with longest-first feeding.
TASK_HWM = 2
THREAD_ENV = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1"  # one engine per core
# ipengine gives up on registering after 5 s by default and exits: on a busy
# master (engines of several nodes registering at once) that loses engines.
# No nanny process per engine (~27 MiB PSS each, `python -m bench.search`): it
# reports a crashed engine at once, but the heartbeat above does within ~5 s.
ENGINE_FLAGS = "--IPEngine.timeout=30 --IPEngine.enable_nanny=False"
# An engine alive this long whose registration the controller no longer holds is
# stranded: IPEngine.timeout (30 s) plus the controller's registration_timeout (30 s).
STRANDED_S = 60
CONTROLLER_START_S = 60  # for ipcontroller to write its connection files
CONTROLLER_POLL_S = 0.2  # how often the node looks for them meanwhile
SSH_SLACK_S = 30  # on top of a remote wait: the SSH session around it
CLIENT_JSON = "ipcontroller-client.json"
ENGINE_JSON = "ipcontroller-engine.json"

# alive PID WORD: the pid runs a program whose command line mentions WORD. A
# process in the middle of an exec (setsid -> nohup -> python) reads an empty
# command line for a moment: look again for up to 0.5 s before calling it dead,
# or a just-started engine loses its pid file and runs untracked.
_ALIVE = (
    'alive() { [ -n "$1" ] || return 1; i=0; while [ -r "/proc/$1/cmdline" ]; do '
    'c=$(tr "\\000" " " < "/proc/$1/cmdline"); case "$c" in *"$2"*) return 0;; '
    '"") [ $i -lt 10 ] || return 1; i=$((i+1)); sleep 0.05;; *) return 1;; esac; done; return 1; }'
)
# count: drop pid files of dead engines, print how many are alive.
_COUNT = (
    'count() { n=0; for f in "$R"/run/engine-*.pid; do [ -e "$f" ] || continue; '
    'if alive "$(cat "$f")" ipengine; then n=$((n+1)); else rm -f "$f"; fi; done; echo $n; }'
)
# stop_pids WORD FILE...: TERM, wait up to 5 s, then KILL; print how many were alive.
# setsid made each pid its own process group: signal the group, so the
# controller's scheduler processes and the engines' nannies go too.
_STOP = (
    'sig() { kill -"$1" -- "-$2" 2>/dev/null || kill -"$1" "$2" 2>/dev/null; }; '
    'stop_pids() { w=$1; shift; pids=""; n=0; '
    'for f in "$@"; do [ -e "$f" ] || continue; p=$(cat "$f"); '
    'if alive "$p" "$w"; then sig TERM "$p"; pids="$pids $p"; n=$((n+1)); fi; rm -f "$f"; done; '
    'i=0; while [ $i -lt 50 ]; do left=""; '
    'for p in $pids; do alive "$p" "$w" && left="$left $p"; done; '
    '[ -z "$left" ] && break; sleep 0.1; i=$((i+1)); done; '
    'for p in $left; do sig KILL "$p"; done; echo $n; }'
)


def _prelude(remote_root: str) -> str:
    return "\n".join([f"R={shlex.quote(remote_root)}", _ALIVE, _COUNT, _STOP, ""])


def _profile(remote_root: str) -> str:
    return f"{remote_root}/ipython"


def start_controller(
    ep_master: Endpoint | fabric.Connection,
    remote_root: str,
    ip: str,
) -> None:
    """Start ipcontroller on the master (unless running) and wait for its connection files.

    It listens on `ip`, the master's private address, which engines reach inside
    the VPC and clients reach through an SSH tunnel; never on 0.0.0.0, so its
    ports are not exposed on a public interface. On start, stale connection
    files are removed first, so the wait below cannot be satisfied by an
    earlier controller's keys.
    """
    prof = _profile(remote_root)
    sec = "$R/ipython/security"
    timeout = CONTROLLER_START_S
    steps = max(1, round(timeout / CONTROLLER_POLL_S))
    script = _prelude(remote_root) + "\n".join(
        [
            'mkdir -p "$R/run" "$R/log" "$R/ipython"',
            'pidf="$R/run/ipcontroller.pid"',
            'if ! alive "$(cat "$pidf" 2>/dev/null)" ipcontroller; then',
            f'  rm -f "{sec}/{CLIENT_JSON}" "{sec}/{ENGINE_JSON}"',
            f'  IPP_ENABLE_CURVE=1 setsid nohup "$R/venv/bin/ipcontroller" --ip={shlex.quote(ip)} '
            f"--location={shlex.quote(ip)} --profile-dir={shlex.quote(prof)} "
            f"--HeartMonitor.period={HEARTBEAT_MS} "
            f"--HeartMonitor.max_heartmonitor_misses={HEARTBEAT_MISSES} "
            f"--TaskScheduler.hwm={TASK_HWM} "
            '>> "$R/log/ipcontroller.log" 2>&1 < /dev/null &',
            '  echo $! > "$pidf"',
            "fi",
            f"i=0; while [ $i -lt {steps} ]; do",
            f'  [ -s "{sec}/{CLIENT_JSON}" ] && [ -s "{sec}/{ENGINE_JSON}" ] && exit 0',
            # By pid only: while the process execs (setsid -> nohup -> python), its
            # cmdline can read empty for a moment, which `alive` takes for dead.
            '  kill -0 "$(cat "$pidf")" 2>/dev/null || '
            '{ echo "ipcontroller exited:" >&2; '
            'tail -n 20 "$R/log/ipcontroller.log" >&2; exit 3; }',
            f"  sleep {CONTROLLER_POLL_S}; i=$((i+1))",
            "done",
            f'echo "no connection files after {timeout:.0f}s:" >&2; '
            'tail -n 5 "$R/log/ipcontroller.log" >&2; exit 2',
        ]
    )
    run(ep_master, script, timeout=timeout + SSH_SLACK_S)


def stop_controller(ep_master: Endpoint | fabric.Connection, remote_root: str) -> None:
    """Stop ipcontroller (TERM, then KILL after 5 s) and remove its connection files."""
    sec = "$R/ipython/security"
    run(ep_master, _prelude(remote_root) + "\n".join([
        'stop_pids ipcontroller "$R/run/ipcontroller.pid" > /dev/null',
        f'rm -f "{sec}/{CLIENT_JSON}" "{sec}/{ENGINE_JSON}"',
    ]))


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret: 0600 from its creation, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing file
    os.replace(tmp, path)


def fetch_connection_files(
    ep_master: Endpoint | fabric.Connection, remote_root: str, local_dir: Path
) -> tuple[Path, Path]:
    """Copy the client and engine connection files here (dir 0700, files 0600).

    They hold the HMAC key and the controller's CurveZMQ public key: anyone with
    them (and a route) can run code on every engine.
    """
    local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    local_dir.chmod(0o700)
    sec = f"{_profile(remote_root)}/security"
    out = []
    with Borrowed(ep_master) as b:
        sftp = b.conn.sftp()
        for name in (CLIENT_JSON, ENGINE_JSON):
            with sftp.open(f"{sec}/{name}", "rb") as f:
                data = f.read()
            path = local_dir / name
            _write_private(path, data)
            out.append(path)
    return out[0], out[1]


def start_engines(
    ep: Endpoint | fabric.Connection, remote_root: str, n: int, engine_json: Path
) -> int:
    """Have `n` engines running on the node; start only the shortfall. Returns the count.

    The engine file is pushed (0600) each call; if it differs from the node's
    copy, the controller was restarted, so engines tied to the old one are
    stopped first. Counting happens right after starting: registration with
    the controller is confirmed client-side (`provision.client.connect_client`).
    """
    with Borrowed(ep) as b:
        run(b.conn, f"mkdir -p -m 700 {shlex.quote(remote_root)}/security")
        new = f"{remote_root}/security/{ENGINE_JSON}.new"
        put(b.conn, engine_json, new, mode=0o600)
        script = _prelude(remote_root) + "\n".join(
            [
                'mkdir -p "$R/run" "$R/log" "$R/ipython"',
                f'cur="$R/security/{ENGINE_JSON}"',
                'if ! cmp -s "$cur.new" "$cur"; then',
                '  stop_pids ipengine "$R"/run/engine-*.pid > /dev/null',
                '  mv "$cur.new" "$cur"',
                'else rm -f "$cur.new"; fi',
                "live=$(count); k=0",
                f"while [ $live -lt {int(n)} ]; do",
                '  while [ -e "$R/run/engine-$k.pid" ]; do k=$((k+1)); done',
                f'  {THREAD_ENV} setsid nohup "$R/venv/bin/ipengine" --file="$cur" '
                f'--profile-dir="$R/ipython" {ENGINE_FLAGS} '
                '>> "$R/log/engine-$k.log" 2>&1 < /dev/null &',
                '  echo $! > "$R/run/engine-$k.pid"',
                "  live=$((live+1))",
                "done",
                "count",
            ]
        )
        return int(run(b.conn, script).strip())


def revive_engines(
    ep: Endpoint | fabric.Connection,
    remote_root: str,
    n: int,
    engine_json: Path,
    registered: Collection[int] | None = None,
    stranded_after_s: float = STRANDED_S,
) -> list[str]:
    """Start again the engines that exited or were dropped; why each went, one line each.

    An engine gives up when the controller does not answer its registration
    within ``IPEngine.timeout`` (a master busy with other nodes' installs), and
    nothing else would notice: the client waits for a registration that never
    comes. An engine can also be alive yet unknown to the controller (ids in
    `registered`): the controller drops an engine whose heart missed a few beats
    on a starved host, or a registration whose first beat came late, and ignores
    that heart when it beats again, while the engine, still pinged, never exits.
    Such an engine, older than `stranded_after_s`, is stopped and started again.
    Engines registering or registered are left alone.
    """
    known = " ".join(str(i) for i in sorted(registered or ()))
    check = "" if registered is None else "\n".join([
        # The id of the engine's last completed registration, none while it registers again.
        '  id=$(awk \'/Registering with controller/ {i=""} '
        '/Completed registration with id/ {i=$NF} END {print i}\' "$R/log/engine-$k.log")',
        '  age=$(ps -o etimes= -p "$(cat "$f")" 2>/dev/null | tr -d " ")',
        f'  case " {known} " in *" $id "*) continue;; esac',
        f'  [ -n "$id" ] && [ "${{age:-0}}" -ge {int(stranded_after_s)} ] || continue',
        '  echo "engine $k (id $id) is alive but the controller dropped it"',
        '  stop_pids ipengine "$f" > /dev/null',
    ])
    with Borrowed(ep) as b:
        dead = run(b.conn, _prelude(remote_root) + "\n".join([
            'for f in "$R"/run/engine-*.pid; do [ -e "$f" ] || continue',
            '  k=${f##*/engine-}; k=${k%.pid}',
            '  if ! alive "$(cat "$f")" ipengine; then',
            '    echo "engine $k exited: $(tail -n 1 "$R/log/engine-$k.log" 2>/dev/null)"',
            "    continue",
            "  fi",
            check,
            "done",
        ])).splitlines()
        if dead:
            start_engines(b.conn, remote_root, n, engine_json)
        return dead


def log_clues(ep: Endpoint | fabric.Connection, remote_root: str, *, master: bool) -> list[str]:
    """Why an engine may be missing: the last line of each engine log on the node and,
    on the master, the controller's last lines about registrations and heartbeats."""
    script = _prelude(remote_root) + "\n".join([
        'for f in "$R"/log/engine-*.log; do [ -e "$f" ] || continue',
        '  echo "${f##*/}: $(tail -n 1 "$f")"',
        "done",
    ])
    if master:
        script += ('\ngrep -a -i -e registration:: -e heartbeat::missed -e "new heart" '
                   '"$R/log/ipcontroller.log" 2>/dev/null | tail -n 6 '
                   '| sed "s/^/ipcontroller.log: /"')
    return [line[:300] for line in run(ep, script + "\ntrue").splitlines() if line.strip()]


def engine_counts(ep: Endpoint | fabric.Connection, remote_root: str) -> int:
    """How many engine processes are alive on the node (pid files of dead ones are removed)."""
    return int(run(ep, _prelude(remote_root) + "count").strip())


def stop_engines(ep: Endpoint | fabric.Connection, remote_root: str) -> int:
    """Stop every engine on the node (TERM, then KILL after 5 s); returns how many were alive."""
    return int(run(ep, _prelude(remote_root) + 'stop_pids ipengine "$R"/run/engine-*.pid').strip())


def restart_engines(
    ep: Endpoint | fabric.Connection, remote_root: str, n: int, engine_json: Path
) -> int:
    """Fresh engines, e.g. after a network cut (the controller never re-admits old ones)."""
    with Borrowed(ep) as b:
        stop_engines(b.conn, remote_root)
        return start_engines(b.conn, remote_root, n, engine_json)
