"""Time from ``up`` to a ready Client for N nodes on the simulated region, by phase.

For each N (one engine per node, master included), a fresh cluster is brought up
with ``provision.lifecycle.up``, then ``lifecycle.connect`` returns a Client with
all N engines; the cluster is taken down (``lifecycle.down``) before the next N.
T(N) = up + connect. If setup is parallel and pipelined, T(8)/T(1) stays near 1.

Phases come from the orchestrator's own progress calls (a ``Reporter`` that
timestamps every ``stage()`` per node):

- ``launch``: up() called -> the first node pipeline starts (validation, security
  group, key pair, the EC2 launch calls);
- ``running``: waiting for the instance to run (the region's boot delay);
- ``ssh``: waiting for SSH to answer;
- ``packages``: wheelhouse (built on the client meanwhile) pushed, venv installed
  with uv, offline;
- ``engines``: controller (master) or waiting for it (workers), engines started;
- ``client``: last node ready -> up() returned (it checks every engine registered),
  plus connect().

Per phase the table shows the longest over nodes. ``concurrency`` is the node
pipelines' summed durations over their wall time (N when they all run side by
side), and ``CPU busy`` the share of the whole machine's CPU in use during
up + connect (other processes included). On the simulated region every node
runs on this machine: with N nodes on 2 cores the installs share the same two
cores, so T(N)/T(1) there measures the machine as much as the orchestration;
concurrency shows the latter. Two modes, reported apart:
``warm`` (the client's wheelhouse cache already built; nodes always fresh) and
``cold`` (an empty wheelhouse cache: ``XDG_CACHE_HOME`` points to a temp dir, so
``wheelhouse.build_wheelhouse`` downloads every wheel again; pip's own HTTP cache is
kept, as on a laptop that has installed these packages: ``--cold-pip`` empties
it too). ``wheelhouse s`` is the client-side build, overlapped with the launch.

``link MiB`` is what crossed the laptop's link during up + connect, counted by the
kernel on the region's public bridge (`bench.common.laptop_link_bytes`): the
wheelhouse goes to the master once and the master forwards it to the workers, so
it stays near one wheelhouse whatever N. ``--uplink 20mbit`` shapes that link for
the whole run (``--rtt`` needs the kernel's netem: refused where there is none).

Every failure met is reported, never only a retry's success: an ``up`` (or a
teardown) that failed is printed and recorded in the JSON's ``failures``; a point
that never came up is listed in ``failed_points`` and the command exits 1.
``--attempts N`` tries each point up to N times (default 1).

Needs root (network namespaces); the region is started if not running (and left
running). If others share it, serialize with them, e.g. ``flock
/tmp/provision-e2e.lock python -m bench.bootstrap``.

Commands::

    python -m bench.bootstrap                    # N = 1 2 4 8, warm then cold
    python -m bench.bootstrap --modes warm --nodes 1 8
    python -m bench.bootstrap --quick            # warm N = 1 2, cold N = 1
    python -m bench.bootstrap --modes warm --nodes 1 2 4 --uplink 20mbit
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    base_parser,
    laptop_link_bytes,
    machine_info,
    machine_line,
    mib,
    sim_config,
    sim_session,
    table,
    unique_name,
    wan,
    write_json,
)
from provision.progress import Reporter

PHASES = ("launch", "running", "ssh", "packages", "engines", "client")
# Stage texts of the Fabric strategy (provision.configure.fabric) -> the phase they start.
_STARTS = (
    ("waiting for running", "running"),
    ("waiting for SSH", "ssh"),
    ("installing packages", "packages"),
    ("starting controller", "engines"),
    ("waiting for controller", "engines"),
    ("ready", "ready"),
    ("[red]failed", "failed"),
)


class TimingReporter(Reporter):
    """A quiet reporter that keeps (monotonic time, node, phase, text) of every stage."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str]] = []
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def stage(
        self, node: str, text: str, *, step: int | None = None, total: int | None = None
    ) -> None:
        phase = next((p for prefix, p in _STARTS if text.startswith(prefix)), None)
        with self._lock:
            self.events.append((time.monotonic(), node, phase or "", text))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warn(self, text: str) -> None:
        self.notes.append(f"warning: {text}")

    def per_node(self) -> dict[str, dict[str, float]]:
        """node -> {phase: time it started}; the first start of each phase counts."""
        nodes: dict[str, dict[str, float]] = {}
        for t, node, phase, _ in self.events:
            if phase:
                nodes.setdefault(node, {}).setdefault(phase, t)
        return nodes


def phases(reporter: TimingReporter, t0: float, t_up: float, connect_s: float) -> dict[str, Any]:
    """Phase durations per node, and the longest per phase."""
    nodes = reporter.per_node()
    if any("failed" in starts for starts in nodes.values()):
        raise RuntimeError(f"a node failed: {[e[3] for e in reporter.events if e[2] == 'failed']}")
    order = ("running", "ssh", "packages", "engines", "ready")
    per_node: dict[str, dict[str, float]] = {}
    for node, starts in nodes.items():
        if "running" not in starts:
            continue  # the master's "launching" stage alone
        durations = {}
        for a, b in zip(order, order[1:]):
            if a in starts and b in starts:
                durations[a] = starts[b] - starts[a]
        per_node[node] = durations
    first = min(s["running"] for s in nodes.values() if "running" in s)
    last_ready = max(s.get("ready", t_up) for s in nodes.values())
    longest = {p: max((d.get(p, 0.0) for d in per_node.values()), default=0.0) for p in PHASES[1:5]}
    spans = sum(sum(d.values()) for d in per_node.values())
    return {
        "launch": first - t0,
        **longest,
        "client": (t_up - last_ready) + connect_s,
        # Node pipelines' summed durations / their wall: N if they all ran side by side.
        "concurrency": spans / max(last_ready - first, 1e-9),
        "per_node": per_node,
    }


class WheelhouseTimer:
    """Time ``wheelhouse.build_wheelhouse`` as the orchestrator calls it (one build per up)."""

    def __init__(self) -> None:
        from provision.nodes import wheelhouse

        self.module = wheelhouse
        self.original = wheelhouse.build_wheelhouse
        self.seconds: list[float] = []

    def __enter__(self) -> WheelhouseTimer:
        def timed(*args: Any, **kwargs: Any) -> Path:
            start = time.monotonic()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds.append(time.monotonic() - start)

        self.module.build_wheelhouse = timed
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.build_wheelhouse = self.original


@contextlib.contextmanager
def cache_env(mode: str, tmp: Path, cold_pip: bool) -> Any:
    """Warm: the usual caches. Cold: an empty XDG cache (the wheelhouse), pip's kept
    unless cold_pip."""
    if mode == "warm":
        yield
        return
    import platformdirs

    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "PIP_CACHE_DIR")}
    pip_cache = os.environ.get("PIP_CACHE_DIR") or platformdirs.user_cache_dir("pip")
    cache = Path(tempfile_dir(tmp, "xdg-cache"))
    os.environ["XDG_CACHE_HOME"] = str(cache)
    if cold_pip:
        os.environ.pop("PIP_CACHE_DIR", None)
    else:
        os.environ["PIP_CACHE_DIR"] = pip_cache
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tempfile_dir(parent: Path, prefix: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f"{prefix}-", dir=parent)


def bring_up(
    n: int, mode: str, tmp: Path, cold_pip: bool, failures: list[dict[str, Any]], attempts: int = 1
) -> dict[str, Any] | None:
    """One cluster of n nodes: up, connect, down; the timings, or None if no attempt
    succeeded.

    Every failure met is printed and appended to `failures` (``mode``, ``nodes``,
    ``attempt``, ``step``: up or down, ``error``), the attempts that succeeded later
    included: a flaky step shows in the results, never only its retry's success.
    """
    for attempt in range(1, attempts + 1):
        try:
            run = _bring_up_once(n, mode, tmp, cold_pip, failures, attempt)
        except Exception as err:  # noqa: BLE001 - recorded and printed, then the next attempt
            _failed(failures, mode, n, attempt, "up", err)
            continue
        run["attempt"] = attempt
        return run
    return None


def _failed(
    failures: list[dict[str, Any]], mode: str, n: int, attempt: int, step: str, err: BaseException
) -> None:
    failure = {"mode": mode, "nodes": n, "attempt": attempt, "step": step,
               "error": f"{type(err).__name__}: {err}"}
    failures.append(failure)
    print(f"  FAILED: {mode} N={n} attempt {attempt}, {step}: {failure['error'][:300]}",
          flush=True)


def _bring_up_once(
    n: int, mode: str, tmp: Path, cold_pip: bool, failures: list[dict[str, Any]], attempt: int
) -> dict[str, Any]:
    config = sim_config(unique_name(f"boot{mode[0]}{n}"), n, tmp)
    with cache_env(mode, tmp, cold_pip):
        return timed_up(config, lambda err: _failed(failures, mode, n, attempt, "down", err))


def timed_up(
    config: Any, on_down_error: Callable[[BaseException], None],
    before_down: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Bring up `config`'s cluster, connect a Client to all its engines, take it down:
    the timings. `before_down(name)` runs on the cluster while it is still up (not
    timed here); a failed `down` goes to `on_down_error`, never hiding the run's own."""
    from provision import lifecycle

    n, name = config.cluster_size, config.name
    reporter = TimingReporter()
    with WheelhouseTimer() as wheel:
        try:
            cpu0 = psutil.cpu_times()
            link0 = laptop_link_bytes()
            t0 = time.monotonic()
            result = lifecycle.up(config, reporter)
            t_up = time.monotonic()
            rc = lifecycle.connect(name, n_engines=n, timeout=300)
            connect_s = time.monotonic() - t_up
            link = laptop_link_bytes() - link0
            engines = len(rc.ids)
            rc.close()
            busy = _busy(cpu0, psutil.cpu_times())
            if before_down is not None:
                before_down(name)
        finally:
            try:
                lifecycle.down(name)
            except Exception as err:  # noqa: BLE001 - recorded; never hides the run's own error
                on_down_error(err)
    if result.failed or engines != n:
        raise RuntimeError(f"N={n}: {engines} engines, failed nodes {result.failed}")
    return {
        "nodes": n,
        "total_s": (t_up - t0) + connect_s,
        "up_s": t_up - t0,
        "connect_s": connect_s,
        "wheelhouse_s": wheel.seconds[0] if wheel.seconds else None,
        "phases_s": phases(reporter, t0, t_up, connect_s),
        "engines": engines,
        "machine_cpu_busy": busy,
        "link_bytes": link,
        "notes": reporter.notes,
        # Nodes whose install stage was skipped (a baked image of the client's environment).
        "installs_skipped": len({node for _, node, _, text in reporter.events
                                 if text.startswith("install skipped")}),
    }


def _busy(before: Any, after: Any) -> float:
    """Share of the machine's CPU time (all cores, every process) not idle in between."""
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0


def warm_wheelhouse() -> float:
    """Build (or find) the wheelhouse the clusters will use, outside any timing."""
    from provision.nodes import setup, wheelhouse

    start = time.monotonic()
    wheelhouse.build_wheelhouse(setup.client_env_spec())
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=None, help="N values (default 1 2 4 8; --quick 1 2)"
    )
    parser.add_argument("--modes", nargs="+", choices=["warm", "cold"], default=["warm", "cold"])
    parser.add_argument("--cold-nodes", type=int, nargs="+", default=None,
                        help="N values for cold runs (default: as --nodes; --quick 1)")
    parser.add_argument(
        "--cold-pip", action="store_true", help="cold runs also empty pip's HTTP cache"
    )
    parser.add_argument("--uplink", default="off",
                        help="shape the laptop's uplink for the run, e.g. 20mbit (default off)")
    parser.add_argument("--rtt", default=None,
                        help="round trip added to the laptop link (needs the kernel's netem)")
    parser.add_argument("--attempts", type=int, default=1,
                        help="tries per point; every failed try is reported (default 1)")
    args = parser.parse_args(argv)
    nodes = args.nodes or ([1, 2] if args.quick else [1, 2, 4, 8])
    cold_nodes = args.cold_nodes or ([1] if args.quick and not args.nodes else nodes)

    machine = machine_info()
    print(machine_line(machine), flush=True)
    failures: list[dict[str, Any]] = []
    results: dict[str, Any] = {"quick": args.quick, "modes": {}, "failures": failures,
                               "failed_points": [], "uplink": args.uplink, "rtt": args.rtt}
    with sim_session("bench-bootstrap") as (st, tmp), wan(args.uplink, args.rtt):
        results["sim_boot_delay_s"] = st.boot_delay
        if "warm" in args.modes:
            results["warm_wheelhouse_s"] = warm_wheelhouse()
        for mode in args.modes:
            runs = []
            for n in nodes if mode == "warm" else cold_nodes:
                print(f"{mode}: N={n} ...", flush=True)
                run = bring_up(n, mode, tmp, args.cold_pip, failures, args.attempts)
                if run is None:
                    results["failed_points"].append({"mode": mode, "nodes": n})
                else:
                    runs.append(run)
            base = next((r["total_s"] for r in runs if r["nodes"] == 1), None)
            for r in runs:
                r["ratio_to_1"] = None if base is None else r["total_s"] / base
                r["failed_attempts"] = sum(
                    f["mode"] == mode and f["nodes"] == r["nodes"] and f["step"] == "up"
                    for f in failures
                )
            results["modes"][mode] = runs
            print(render(mode, runs), flush=True)
    warm = {r["nodes"]: r for r in results["modes"].get("warm", [])}
    if 1 in warm and max(warm) > 1:
        results["ratio_max_to_1"] = {"n": max(warm), "warm": warm[max(warm)]["ratio_to_1"]}
    path = write_json("bootstrap", results, machine, args.json)
    print(f"\nwrote {path}")
    if failures:
        print(f"{len(failures)} failure(s) met (in the JSON's `failures`):")
        for f in failures:
            print(f"  {f['mode']} N={f['nodes']} attempt {f['attempt']}, {f['step']}: "
                  f"{f['error'][:300]}")
    for point in results["failed_points"]:
        print(f"no measurement: {point['mode']} N={point['nodes']} never came up")
    return results


def render(mode: str, runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        ph = r["phases_s"]
        rows.append(
            [
                r["nodes"],
                r["total_s"],
                r["ratio_to_1"],
                *(ph[p] for p in PHASES),
                r["wheelhouse_s"],
                ph["concurrency"],
                r["machine_cpu_busy"],
                mib(r["link_bytes"]),
                r["failed_attempts"],
            ]
        )
    header = [
        "N",
        "T(N) s",
        "T(N)/T(1)",
        *(f"{p} s" for p in PHASES),
        "wheelhouse s",
        "concurrency",
        "CPU busy",
        "link MiB",
        "failed tries",
    ]
    title = (
        f"\n{mode} wheelhouse cache: up + connect on N fresh simulated nodes, one engine each "
        "(longest node per phase)"
    )
    return table(rows, header, title)


if __name__ == "__main__":
    sys.exit(1 if main()["failed_points"] else 0)  # a point that never came up fails the run
