"""put-data to 1, 2, 4, 8 simulated hosts: time, bytes over the laptop's link, a re-run
moving nothing; with the laptop's uplink unshaped and shaped (``--uplinks off 20mbit``).

One cluster of max(N) hosts is launched on the simulated region and waited for
until every host answers SSH (no packages or engines: put-data needs only SSH).
The dataset's splits are persisted once on the client (``provision.data.persist_local``,
timed apart); then for each N, with the hosts' data directories emptied first, the
splits are shipped (``provision.data.ship``) to N hosts: time and bytes moved. The
same ship is then run again on those N hosts: it must move 0 bytes.
T(N)/T(1) near 1 means the hosts are served in parallel. The bytes that crossed the
laptop's link are the kernel's count on the region's public bridge
(`bench.common.laptop_link_bytes`), not provision's tally: with the master
relaying to the workers it is one copy whatever N ("link copies" ~1.0).

``--rtt`` needs the kernel's netem qdisc; where there is none (this project's
machines) the region refuses it and the run stops with that one line.

The dataset is ``digits`` (as in ``provision put-data digits``) or, with
``--samples``/``--features``, a ``make_classification`` set of that size
(20000 x 200 float64 is 32 MB per split file, 160 MB per host).

Needs root (network namespaces); the region is started if not running (and left
running). If others share it, serialize with them, e.g. ``flock
/tmp/provision-e2e.lock python -m bench.putdata``.

Commands::

    python -m bench.putdata                                  # digits, N = 1 2 4 8
    python -m bench.putdata --samples 20000 --features 200   # 160 MB per host
    python -m bench.putdata --quick                          # digits, N = 1 2
    python -m bench.putdata --uplinks 20mbit --nodes 1 2 4   # shaped only
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    base_parser,
    down_quietly,
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


def hosts_up(config: Any) -> tuple[Any, list[Any]]:
    """Launch the cluster's instances and wait for SSH on each; (context, nodes)."""
    from provision import cloud, context, lifecycle
    from provision.nodes import fanout, relay, remote

    ctx = context.prepare(config)
    info = lifecycle.ensure_instances(ctx)
    cloud.wait_running(
        ctx.region, [i.instance_id for i in info.nodes], timeout=config.launch_timeout
    )
    nodes = cloud.describe_cluster(ctx.region, ctx.name).nodes
    # remote_root as `up`'s setup leaves it: made with the image user's sudo (/srv is
    # root's), owned by that user.
    root = config.remote_root
    own = f'sudo -n install -d -o "$(id -u)" -g "$(id -g)" {root}'

    def ready(ep: Any) -> None:
        remote.wait_for_ssh(ep, timeout=config.ssh_timeout)
        remote.run(ep, own)

    group = fanout.on_hosts(ready, [ctx.endpoint(n) for n in nodes])
    group.raise_for_failures()
    # The cluster key, as `up` leaves it: made on the master, authorised on the workers.
    master_ep = ctx.endpoint(nodes[0])
    key = relay.ensure_key(master_ep, root)
    fanout.fan_out(
        lambda w: relay.authorize(ctx.endpoint(w), master_ep, w.private_ip, key, root),
        nodes[1:], key=lambda w: w.label,
    ).raise_for_failures()
    return ctx, nodes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=None, help="N values (default 1 2 4 8; --quick 1 2)"
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="make_classification rows instead of digits"
    )
    parser.add_argument(
        "--features", type=int, default=200, help="make_classification columns (with --samples)"
    )
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--uplinks", nargs="+", default=["off", "20mbit"],
                        help="laptop uplink rates to run at, off = unshaped (default off 20mbit)")
    parser.add_argument("--modes", nargs="+", default=None, choices=["relay", "direct"],
                        help="relay: laptop -> master -> workers (provision's way); direct: "
                        "laptop -> every host, the peer (default both; --quick relay)")
    parser.add_argument("--rtt", default=None,
                        help="round trip added to the laptop link (needs the kernel's netem)")
    args = parser.parse_args(argv)
    nodes_wanted = sorted(args.nodes or ([1, 2] if args.quick else [1, 2, 4, 8]))
    modes = args.modes or (["relay"] if args.quick else ["relay", "direct"])

    from provision import data
    from provision.nodes import fanout, remote

    machine = machine_info()
    print(machine_line(machine), flush=True)
    if args.samples:
        from sklearn.datasets import make_classification

        X, y = make_classification(n_samples=args.samples, n_features=args.features,
                                   n_informative=args.features // 2, random_state=0)
        label = f"synthetic {args.samples}x{args.features}"
    else:
        digits = data.load_dataset("digits")
        X, y, label = digits.X, digits.y, digits.label
    results: dict[str, Any] = {"dataset": label, "shape": list(X.shape), "splits": args.splits,
                               "quick": args.quick, "runs": []}
    with sim_session("bench-putdata") as (st, tmp):
        results["sim_boot_delay_s"] = st.boot_delay
        if args.rtt:
            with wan("off", args.rtt):  # refused at once where the kernel has no netem
                pass
        start = time.perf_counter()
        local_dir, digest = data.persist_local(X, y, data.make_cv("shuffle", args.splits, 0.25, 42))
        results["persist_s"] = time.perf_counter() - start
        per_host = sum(p.stat().st_size for p in local_dir.iterdir())
        results["bytes_per_host"] = per_host
        name = unique_name("putdata")
        config = sim_config(name, max(nodes_wanted), tmp)
        try:
            print(f"launching {config.cluster_size} hosts ...", flush=True)
            start = time.perf_counter()
            ctx, nodes = hosts_up(config)
            results["hosts_up_s"] = time.perf_counter() - start
            clean = f"rm -rf {config.remote_root}/data"
            for uplink, mode in [(u, m) for u in args.uplinks for m in modes]:
                with wan(uplink, args.rtt):
                    for n in nodes_wanted:
                        group = fanout.on_hosts(
                            lambda ep: remote.run(ep, clean), [ctx.endpoint(i) for i in nodes]
                        )
                        group.raise_for_failures()
                        run = _ship_twice(ctx, nodes[:n], local_dir, digest, per_host,
                                          direct=mode == "direct")
                        results["runs"].append({"uplink": uplink, "mode": mode, **run})
                        print(f"uplink {uplink}, {mode}, N={n}: {run['seconds']:.2f} s, "
                              f"{run['link_bytes']} bytes over the laptop link; again "
                              f"{run['second_seconds']:.2f} s, {run['second_bytes_moved']} bytes",
                              flush=True)
        finally:
            down_quietly(name, region=ctx.region if "ctx" in locals() else None)
    def series(uplink: str, mode: str) -> list[dict[str, Any]]:
        return [r for r in results["runs"] if r["uplink"] == uplink and r["mode"] == mode]

    for uplink, mode in [(u, m) for u in args.uplinks for m in modes]:
        runs = series(uplink, mode)
        for r in runs:
            r["ratio_to_first"] = r["seconds"] / runs[0]["seconds"]
    if nodes_wanted[0] == 1 and len(nodes_wanted) > 1:
        results["ratio_max_to_1"] = {
            "n": nodes_wanted[-1], "ratio": series(args.uplinks[0], modes[0])[-1]["ratio_to_first"],
            **{f"{m} {u}": series(u, m)[-1]["ratio_to_first"] for u in args.uplinks for m in modes},
        }
    results["second_run_bytes"] = sum(r["second_bytes_moved"] for r in results["runs"])
    rows = [[r["uplink"], r["mode"], r["nodes"], r["seconds"], r["ratio_to_first"],
             mib(r["link_bytes"]), r["link_copies"], mib(r["cluster_bytes"]), r["second_seconds"],
             r["second_bytes_moved"]] for r in results["runs"]]
    title = (f"\nput-data {label}, {args.splits} splits, {mib(per_host)} MiB per host "
             f"(persisted once in {results['persist_s']:.2f} s)")
    print(table(rows, ["uplink", "mode", "N", "T(N) s", f"T(N)/T({nodes_wanted[0]})",
                       "laptop link MiB", "link copies", "cluster MiB", "again s",
                       "again bytes"], title))
    path = write_json("putdata", results, machine, args.json)
    print(f"\nwrote {path}")
    return results


def _ship_twice(ctx: Any, nodes: list[Any], local_dir: Any, digest: str, per_host: int, *,
                direct: bool) -> dict[str, Any]:
    """Ship to `nodes` (their data emptied), then again: times, bytes, laptop-link bytes."""
    from provision import data

    before, start = laptop_link_bytes(), time.perf_counter()
    first = data.ship(ctx, nodes, local_dir, digest, direct=direct)
    first_s, link = time.perf_counter() - start, laptop_link_bytes() - before
    start = time.perf_counter()
    second = data.ship(ctx, nodes, local_dir, digest, direct=direct)
    return {"nodes": len(nodes), "seconds": first_s, "bytes_moved": first.bytes_moved,
            "link_bytes": link, "link_copies": link / per_host,
            "laptop_bytes": first.laptop_bytes, "cluster_bytes": first.cluster_bytes,
            "second_seconds": time.perf_counter() - start,
            "second_bytes_moved": second.bytes_moved, "mb_per_s": first.bytes_moved / first_s / 1e6}


if __name__ == "__main__":
    main()
