"""``up -n N`` on a baked image vs on the stock image, side by side in one run.

The first stock ``up`` is baked (``provision.imaging.create``, from a worker) while
it is still up; then ``up`` on that image, named in the cluster file by its name
(``image: NAME``), alternates with ``up`` on the stock image, ``--repeat`` times each.
Every ``up`` is a fresh cluster: up + connect (a Client with all N engines, one per
node) is timed as ``bench.bootstrap`` times it, by phase (longest node per phase),
then the cluster is taken down. At the end the image is deleted.

The stock runs use a warm wheelhouse (built before any timing, as
``bench.bootstrap --modes warm``): the comparison is install vs no install, not
a wheel download vs nothing. ``bake s`` is ``image create`` itself (the stash of
the cluster's secrets, CreateImage, waiting for "available"); it is paid once per
image, not per ``up``. Target (issue 16): baked <= 0.3x the stock wall time.

Every failure met is printed and recorded in the JSON's ``failures``: a failed
``up``, ``down``, bake or image delete; no attempt is retried. A run with no
stock or no baked figure exits 1.

Needs root (network namespaces); the region is started if not running (and
stopped again if this started it). Serialize with other users of the cores, e.g.
``flock /tmp/provision-e2e.lock python -m bench.baked``.

Commands::

    python -m bench.baked                  # N = 3, two ups of each, interleaved
    python -m bench.baked --nodes 2 --repeat 3
    python -m bench.baked --quick          # N = 1, one up of each (CI smoke test)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.bootstrap import PHASES, timed_up, warm_wheelhouse

IMAGES = ("stock", "baked")


def _failed(failures: list[dict[str, Any]], image: str, round_: int, step: str,
            err: BaseException) -> None:
    failure = {"image": image, "round": round_, "step": step,
               "error": f"{type(err).__name__}: {err}"}
    failures.append(failure)
    print(f"  FAILED: {image} round {round_}, {step}: {failure['error'][:300]}", flush=True)


class Bench:
    """One run: the image name, the runs so far and every failure met."""

    def __init__(self, nodes: int, tmp: Path) -> None:
        self.nodes, self.tmp = nodes, tmp
        self.image_name = common.unique_name("image")
        self.image_id: str | None = None
        self.bake_s: float | None = None
        self.runs: dict[str, list[dict[str, Any]]] = {k: [] for k in IMAGES}
        self.failures: list[dict[str, Any]] = []

    def up(self, image: str, round_: int) -> None:
        """One fresh cluster on `image` (the stock one bakes the image if none yet)."""
        extra = {"image": self.image_name} if image == "baked" else {}
        name = common.unique_name(f"{image}{self.nodes}")
        config = common.sim_config(name, self.nodes, self.tmp, **extra)
        bake = self._bake if image == "stock" and self.image_id is None else None
        print(f"{image}: up -n {self.nodes} (round {round_}) ...", flush=True)
        try:
            run = timed_up(config, lambda e: _failed(self.failures, image, round_, "down", e),
                           before_down=bake)
        except Exception as err:  # noqa: BLE001 - recorded and printed, never retried
            _failed(self.failures, image, round_, "up", err)
            return
        run["round"] = round_
        self.runs[image].append(run)

    def _bake(self, cluster: str) -> None:
        from provision import imaging

        start = time.monotonic()
        try:
            baked = imaging.create(cluster, self.image_name)
        except Exception as err:  # noqa: BLE001 - recorded; the stock run still counts
            _failed(self.failures, "stock", 1, "bake", err)
            return
        self.bake_s, self.image_id = time.monotonic() - start, baked.image_id
        print(f"  baked {baked.image_id} ({self.image_name}) in {self.bake_s:.1f} s", flush=True)

    def delete_image(self) -> None:
        from provision import imaging

        if self.image_id is None:
            return
        try:
            imaging.delete(common.sim_config("bench", 1, self.tmp), self.image_id)
        except Exception as err:  # noqa: BLE001 - recorded: an image left behind
            _failed(self.failures, "baked", 0, "image delete", err)


def summary(bench: Bench) -> dict[str, Any]:
    """Per image: the median and best total; the ratio of the medians, baked / stock."""
    out: dict[str, Any] = {}
    for image, runs in bench.runs.items():
        totals = [r["total_s"] for r in runs]
        out[image] = {"median_s": statistics.median(totals) if totals else None,
                      "best_s": min(totals, default=None), "runs": len(totals)}
    stock, baked = out["stock"]["median_s"], out["baked"]["median_s"]
    out["ratio"] = baked / stock if stock and baked else None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=None, help="N (default 3; --quick 1)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="ups per image, interleaved (default 2; --quick 1)")
    parser.add_argument("--uplink", default="off",
                        help="shape the laptop's uplink for the run, e.g. 20mbit (default off)")
    args = parser.parse_args(argv)
    nodes = args.nodes or (1 if args.quick else 3)
    repeat = args.repeat or (1 if args.quick else 2)

    machine = common.machine_info()
    print(common.machine_line(machine), flush=True)
    with common.sim_session("bench-baked") as (st, tmp), common.wan(args.uplink):
        bench = Bench(nodes, tmp)
        warm_s = warm_wheelhouse()
        try:
            for round_ in range(1, repeat + 1):
                for image in IMAGES:
                    if image == "stock" or bench.image_id is not None:
                        bench.up(image, round_)
        finally:
            bench.delete_image()
    results = {"quick": args.quick, "nodes": nodes, "repeat": repeat, "uplink": args.uplink,
               "sim_boot_delay_s": st.boot_delay, "warm_wheelhouse_s": warm_s,
               "image": bench.image_name, "bake_s": bench.bake_s, "runs": bench.runs,
               "summary": summary(bench), "failures": bench.failures}
    print(render(bench, results["summary"], args.uplink), flush=True)
    path = common.write_json("baked", results, machine, args.json)
    print(f"\nwrote {path}")
    if bench.failures:
        print(f"{len(bench.failures)} failure(s) met (in the JSON's `failures`):")
        for f in bench.failures:
            print(f"  {f['image']} round {f['round']}, {f['step']}: {f['error'][:300]}")
    return results


def render(bench: Bench, summ: dict[str, Any], uplink: str = "off") -> str:
    stock = summ["stock"]["median_s"]
    rows = []
    for image in IMAGES:
        for r in bench.runs[image]:
            ph = r["phases_s"]
            rows.append([image, r["round"], r["total_s"],
                         None if stock is None else r["total_s"] / stock,
                         *(ph[p] for p in PHASES), r["installs_skipped"],
                         r["machine_cpu_busy"], common.mib(r["link_bytes"])])
    header = ["image", "round", "T s", "T/stock median", *(f"{p} s" for p in PHASES),
              "installs skipped", "CPU busy", "link MiB"]
    title = (f"\nup -n {bench.nodes} + connect, fresh simulated nodes, one engine each, warm "
             f"wheelhouse, uplink {uplink} (longest node per phase)")
    medians = f"median T: stock {_s(summ['stock']['median_s'])}, "
    return (f"{common.table(rows, header, title)}\n{medians}"
            f"baked {_s(summ['baked']['median_s'])}; baked/stock = {common.fmt(summ['ratio'], 2)} "
            f"(target <= 0.3); image create {_s(bench.bake_s)}")


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


if __name__ == "__main__":
    done = main()["summary"]
    sys.exit(0 if done["stock"]["runs"] and done["baked"]["runs"] else 1)
