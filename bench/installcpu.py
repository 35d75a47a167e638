"""CPU each node spends being set up: workers copying the master's environment vs
installing their own, side by side in one run on the simulated region.

For each N and round, two fresh clusters of N nodes (one engine each) come up with
``provision.lifecycle.up`` and are taken down, in alternating order:

- ``copy``: provision's way: the master installs its venv from the wheelhouse,
  each worker receives the master's installed environment as one uncompressed
  tar over the cluster network (`provision.nodes.envcopy`);
- ``install``: the peer, as before: the master forwards the wheelhouse and every
  worker runs ``uv venv`` + ``uv pip install`` itself (``envcopy.copy_env``
  answers "the master has none", the path every worker falls back to).

``node CPU s`` is the kernel's count, not provision's: the user + system CPU time
of each host's sshd and of everything it ran and reaped (``/proc/PID/stat``
utime, stime, cutime, cstime of the host's sshd, read once ``up`` has returned),
i.e. what the node spent on every SSH session of the bootstrap: receiving,
unpacking, installing, starting engines (the engines themselves are daemons
outside it). The simulated hosts share this machine's cores, so every CPU second
a worker spends is one the others wait for: ``T(N) s`` (up + connect) and
``packages s`` (the longest node's packages phase) show what that costs in time.

Needs root (network namespaces); the region is started if not running. If others
share it, serialize with them: ``flock /tmp/provision-e2e.lock python -m bench.installcpu``.

Commands::

    python -m bench.installcpu                   # N = 4, two rounds
    python -m bench.installcpu --nodes 2 4 --rounds 1
    python -m bench.installcpu --quick           # N = 2, one round
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.bootstrap import timed_up, warm_wheelhouse
from bench.common import (
    base_parser,
    machine_info,
    machine_line,
    sim_config,
    sim_session,
    table,
    unique_name,
    write_json,
)

MODES = ("copy", "install")
TICKS = os.sysconf("SC_CLK_TCK")


def sshd_cpu_s(pid: int) -> float:
    """CPU seconds of process `pid` and of the children it has reaped (utime, stime,
    cutime, cstime of ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def node_cpu(cluster: Any) -> dict[str, float]:
    """Node label -> CPU seconds its host's sshd and its sessions used so far."""
    from provision.sim import hosts

    by_ip = {h.ip: h for h in hosts.list_hosts()}
    cpu = {}
    for node in cluster.nodes:
        host = by_ip.get(node.private_ip or "")
        if host is not None and host.sshd_pid:
            cpu[node.label] = sshd_cpu_s(host.sshd_pid)
    return cpu


def bring_up(n: int, mode: str, tmp: Path, on_down_error: Any) -> dict[str, Any]:
    """One cluster of `n` nodes in `mode`, timed by `bench.bootstrap.timed_up`, with
    each node's CPU read before it goes down."""
    from provision import cloud
    from provision.context import context_for
    from provision.nodes import envcopy

    per_node: dict[str, float] = {}

    def read_cpu(name: str) -> None:
        ctx = context_for(name, need_key=False)
        per_node.update(node_cpu(cloud.describe_cluster(ctx.region, name)))

    original = envcopy.copy_env
    if mode == "install":
        envcopy.copy_env = lambda *args, **kwargs: False  # the master "has none": install
    try:
        run = timed_up(sim_config(unique_name(f"icpu{mode[0]}{n}"), n, tmp), on_down_error,
                       before_down=read_cpu)
    finally:
        envcopy.copy_env = original
    workers = [s for label, s in per_node.items() if label != "master"]
    return {
        "mode": mode, "nodes": n, "total_s": run["total_s"],
        "packages_s": run["phases_s"]["packages"],
        "node_cpu_s": per_node, "master_cpu_s": per_node.get("master"),
        "worker_cpu_s": statistics.mean(workers) if workers else None,
        "machine_cpu_busy": run["machine_cpu_busy"],
        "warnings": [w for w in run["notes"] if "warning" in w],
    }


def _failed(failures: list[dict[str, Any]], point: dict[str, Any], step: str,
            err: BaseException) -> None:
    failures.append({**point, "step": step, "error": f"{type(err).__name__}: {err}"})
    print(f"  FAILED ({step}): {failures[-1]['error'][:300]}", flush=True)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (N, mode): medians over rounds."""
    rows = []
    for n in sorted({r["nodes"] for r in runs}):
        for mode in MODES:
            mine = [r for r in runs if r["nodes"] == n and r["mode"] == mode]
            if not mine:
                continue
            med = {k: statistics.median(r[k] for r in mine if r[k] is not None)
                   if any(r[k] is not None for r in mine) else None
                   for k in ("total_s", "packages_s", "master_cpu_s", "worker_cpu_s",
                             "machine_cpu_busy")}
            rows.append({"nodes": n, "mode": mode, "rounds": len(mine), **med})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    body = [[r["nodes"], r["mode"], r["rounds"], r["worker_cpu_s"], r["master_cpu_s"],
             r["packages_s"], r["total_s"], r["machine_cpu_busy"]] for r in rows]
    header = ["N", "workers get", "rounds", "worker CPU s", "master CPU s", "packages s",
              "T(N) s", "CPU busy"]
    return table(body, header, "\nCPU per node during up (sshd and its sessions, median "
                 "over rounds): copy of the master's environment vs own install")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=None,
                        help="N values (default 4; --quick 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="clusters per N and mode, alternating (default 2; --quick 1)")
    args = parser.parse_args(argv)
    nodes = args.nodes or ([2] if args.quick else [4])
    rounds = args.rounds or (1 if args.quick else 2)
    machine = machine_info()
    print(machine_line(machine), flush=True)
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []  # every failed up is reported, never only skipped
    with sim_session("bench-installcpu") as (_, tmp):
        warm_wheelhouse()
        for n in nodes:
            for k in range(rounds):
                for mode in MODES if k % 2 == 0 else MODES[::-1]:
                    print(f"{mode}: N={n} round {k + 1} ...", flush=True)
                    point = {"mode": mode, "nodes": n, "round": k + 1}
                    try:
                        run = bring_up(n, mode, tmp,
                                       lambda err, p=point: _failed(failures, p, "down", err))
                    except Exception as err:  # noqa: BLE001 - recorded, printed, next run
                        _failed(failures, point, "up", err)
                        continue
                    runs.append(run)
                    print(f"  worker CPU {run['worker_cpu_s']:.2f} s, master "
                          f"{run['master_cpu_s']:.2f} s, T(N) {run['total_s']:.1f} s", flush=True)
    rows = summarise(runs)
    print(render(rows), flush=True)
    results = {"runs": runs, "summary": rows, "failures": failures}
    copy = {r["nodes"]: r for r in rows if r["mode"] == "copy"}
    install = {r["nodes"]: r for r in rows if r["mode"] == "install"}
    results["worker_cpu_ratio"] = {
        n: copy[n]["worker_cpu_s"] / install[n]["worker_cpu_s"]
        for n in copy if n in install and copy[n]["worker_cpu_s"] and install[n]["worker_cpu_s"]
    }
    for n, ratio in results["worker_cpu_ratio"].items():
        print(f"N={n}: a worker's CPU, copy / install = {ratio:.2f}")
    path = write_json("installcpu", results, machine, args.json)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
