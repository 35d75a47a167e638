"""What every benchmark shares: machine facts, PSS of process trees, tables, JSON.

Memory is PSS (proportional set size, ``psutil.Process.memory_full_info().pss``):
a page shared by k processes counts 1/k in each, so the PSS of a process tree
summed counts every page once, whether it is private, shared between engines
through a memory map, or a shared library. RSS summed would count a memory-mapped
split once per engine, which is exactly the effect to measure.

Peak memory is sampled by a background thread (``PeakPSS``) every ``interval``
seconds: a peak shorter than that can be missed, so the figures are a lower
bound on the true peak, taken the same way for every method compared.

Results go to ``bench/results/<name>.json`` (git-ignored) with ``machine_info()``,
including the load average before and after: on a busy machine timings are
noisy and the JSON says so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent  # the checkout: children import `bench` from here
PACKAGES = (
    "numpy",
    "scipy",
    "scikit-learn",
    "joblib",
    "ipyparallel",
    "pyzmq",
    "psutil",
    "paramiko",
)
# Read by BLAS at load time; recorded because they change what a numpy benchmark measures.
BLAS_ENV = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
MiB = 1 << 20


# -- machine -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def blas_info() -> list[dict[str, Any]]:
    """The BLAS/OpenMP libraries numpy and scikit-learn loaded (threadpoolctl)."""
    try:
        import numpy  # noqa: F401 - load BLAS so threadpoolctl sees it
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: lib.get(k) for k in keep if lib.get(k) is not None} for lib in threadpool_info()]


def machine_info() -> dict[str, Any]:
    """Facts that make a figure comparable: CPU, cores, memory, versions, date, load."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "blas": blas_info(),
        "blas_env": {k: os.environ[k] for k in BLAS_ENV if k in os.environ},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def down_quietly(name: str, region: Any = None) -> None:
    """Take a benchmark's cluster down in a `finally`: a failure there is printed, not
    raised, so it never hides the error that ended the run."""
    from provision import lifecycle

    try:
        lifecycle.down(name, region=region)
    except Exception as err:  # noqa: BLE001 - printed; the run's own error matters more
        print(f"warning: could not take {name} down: {err}", file=sys.stderr)


# -- memory --------------------------------------------------------------------


def tree(roots: Iterable[int | psutil.Process]) -> list[psutil.Process]:
    """The root processes and all their descendants, each once."""
    seen: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            proc = root if isinstance(root, psutil.Process) else psutil.Process(root)
            for p in [proc, *proc.children(recursive=True)]:
                seen.setdefault(p.pid, p)
        except psutil.Error:
            continue
    return list(seen.values())


def pss_of(procs: Iterable[psutil.Process]) -> dict[int, int]:
    """PSS in bytes per pid; processes that exited meanwhile are left out."""
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out[p.pid] = p.memory_full_info().pss
    return out


def role_of(proc: psutil.Process, root_pids: Sequence[int] = ()) -> str:
    """'engine', 'controller', 'worker' (loky), 'client' (a root) or 'other', by command line."""
    if proc.pid in root_pids:
        return "client"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    if "ipyparallel.engine" in cmd or "ipengine" in cmd:
        return "engine"
    if "ipyparallel.controller" in cmd or "ipcontroller" in cmd:
        return "controller"
    if "loky" in cmd or "joblib" in cmd:
        return "worker"
    return "other"


class PeakPSS:
    """Sample the PSS of a process tree in a thread; keep the peak and its breakdown.

    ``roots`` are pids whose whole tree is summed (children found anew at every
    sample, so engines or loky workers started later are included). Use as a
    context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self, roots: Sequence[int] | Callable[[], Sequence[int]], interval: float = 0.2
    ) -> None:
        self._roots = roots
        self.interval = interval
        self.peak = 0
        self.peak_roles: dict[str, int] = {}
        self.role_peaks: dict[str, int] = {}
        self.samples = 0
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def roots(self) -> list[int]:
        return list(self._roots() if callable(self._roots) else self._roots)

    def sample(self) -> int:
        roots = self.roots()
        procs = tree(roots)
        values = pss_of(procs)
        roles: dict[str, int] = {}
        for p in procs:
            if p.pid not in values:
                continue
            if p.pid not in self._roles:
                self._roles[p.pid] = role_of(p, roots)
            role = self._roles[p.pid]
            roles[role] = roles.get(role, 0) + values[p.pid]
        total = sum(values.values())
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_roles = total, roles
        for role, value in roles.items():
            self.role_peaks[role] = max(self.role_peaks.get(role, 0), value)
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            # A process (or the pid file naming it) that went away mid-sample: the next
            # sample looks again.
            with contextlib.suppress(psutil.Error, OSError, ValueError):
                self.sample()
            self._stop.wait(self.interval)

    def start(self) -> PeakPSS:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pss-sampler")
        self._thread.start()
        return self

    def stop(self) -> PeakPSS:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self

    def __enter__(self) -> PeakPSS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_pss_bytes": self.peak,
            "peak_breakdown_bytes": dict(sorted(self.peak_roles.items())),
            "peak_per_role_bytes": dict(sorted(self.role_peaks.items())),
            "samples": self.samples,
            "interval_s": self.interval,
        }


def _with_defaults(defaults: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``defaults`` but those ``extra`` sets again (by flag name), then ``extra``."""
    names = {arg.split("=", 1)[0] for arg in extra}
    return [f for f in defaults if f.split("=", 1)[0] not in names] + list(extra)


def controller_flags(extra: Sequence[str] = ()) -> list[str]:
    """provision's controller scheduler flag (``TaskScheduler.hwm``) unless ``extra`` sets
    it, then ``extra``. Imports provision (fabric, paramiko...): call it where memory
    is not being measured."""
    from provision.nodes.engines import TASK_HWM

    return _with_defaults([f"--TaskScheduler.hwm={TASK_HWM}"], extra)


def engine_flags(extra: Sequence[str] = ()) -> list[str]:
    """provision's ipengine flags (``engines.ENGINE_FLAGS``) but those ``extra`` sets
    again, then ``extra``."""
    from provision.nodes.engines import ENGINE_FLAGS

    return _with_defaults(ENGINE_FLAGS.split(), extra)


def local_cluster(
    engines: int, controller_args: Sequence[str] = (), engine_args: Sequence[str] | None = None
) -> Any:
    """An ``ipyparallel.Cluster`` on this host, set up as provision sets up a node when
    given ``controller_flags()``: engines with provision's flags (``engine_flags()``
    unless ``engine_args`` is given) and BLAS/OpenMP pinned to one thread in their
    environment."""
    import logging

    import ipyparallel as ipp
    from traitlets.config import Config

    config = Config()
    config.LocalEngineSetLauncher.environment = {
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }
    config.LocalEngineSetLauncher.engine_args = list(
        engine_flags() if engine_args is None else engine_args
    )
    return ipp.Cluster(
        n=engines, log_level=logging.ERROR, controller_args=list(controller_args), config=config
    )


# -- simulated region ------------------------------------------------------------


@contextlib.contextmanager
def sim_session(prefix: str) -> Any:
    """The simulated region (started, or reused if running) and a private state dir.

    Yields ``(region state, temp dir)``; ``PROVISION_STATE_DIR`` points into the temp
    dir meanwhile. A region this started is stopped at the end (a daemon left
    behind would keep polling, and later runs would reuse it with this boot
    delay); a region that was already running is left to its owner.
    """
    import shutil
    import tempfile

    from provision import sim

    st = sim.up()
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    old = os.environ.get("PROVISION_STATE_DIR")
    os.environ["PROVISION_STATE_DIR"] = str(tmp / "state")
    try:
        yield st, tmp
    finally:
        if old is None:
            os.environ.pop("PROVISION_STATE_DIR", None)
        else:
            os.environ["PROVISION_STATE_DIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)
        if not st.reused:
            sim.down()


def laptop_link_bytes() -> int:
    """What this machine has sent into the simulated region so far: the tx bytes of the
    public plane's bridge (`ip -s link`), which every frame from here to a host crosses
    and the uplink's tbf shapes; host-to-host frames never pass it. The kernel's count,
    not provision's own tally."""
    from provision.sim import hosts

    return int(Path(f"/sys/class/net/{hosts.PUBLIC_BRIDGE}/statistics/tx_bytes").read_text())


@contextlib.contextmanager
def wan(uplink: str, rtt: str | None = None) -> Iterator[None]:
    """The region's laptop link shaped to `uplink` ("off": not shaped) meanwhile, then
    unshaped. `rtt` needs the kernel's netem: refused (SystemExit 2) where there is none."""
    from provision import sim
    from provision.sim.hosts import SimError

    try:
        sim.up(uplink=uplink, rtt=rtt)
    except SimError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        yield
    finally:
        sim.up(uplink="off", rtt="off" if rtt else None)


def sim_config(name: str, nodes: int, key_dir: Path, **extra: Any) -> Any:
    """A cluster of `nodes` nodes (master included), one engine each, on the simulated region."""
    from provision.config import ClusterConfig

    return ClusterConfig(
        name=name, region="sim", key_path=key_dir / "id_ed25519", cluster_size=nodes,
        spot_bid=0.10, engines_per_node=1, ssh_timeout=300, **extra,
    )


def unique_name(kind: str) -> str:
    """A cluster name no other run uses: bench-<kind>-<pid>-<time>."""
    return f"bench-{kind}-{os.getpid() % 100000}-{int(time.time()) % 100000}"


# -- output --------------------------------------------------------------------


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:.1f}"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], title: str | None = None) -> str:
    """A plain fixed-width table: first column left-aligned, the others right."""
    cells = [[str(h) for h in header]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def write_json(
    name: str, data: dict[str, Any], machine: dict[str, Any], path: str | Path | None = None
) -> Path:
    """Write ``{"benchmark", "machine", "command", **data}`` to bench/results/<name>.json."""
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine, "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    doc = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]]),
        "machine": machine,
        **data,
    }
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    os.replace(tmp, target)
    return target


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def base_parser(description: str | None) -> argparse.ArgumentParser:
    """Flags every benchmark takes: --quick and --json."""
    parser = argparse.ArgumentParser(
        description=(description or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke-sized run (CI): figures, not timings"
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the results (default bench/results/NAME.json)",
    )
    return parser


def machine_line(machine: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in machine["load_average"])
    return (
        f"{machine['cpu']}, {machine['logical_cores']} cores, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, {machine['date']}, load {load}"
    )


class Stopwatch:
    """``with Stopwatch() as t: ...; t.seconds``."""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
