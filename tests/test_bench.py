"""Smoke tests of the benchmarks: each ``--quick`` mode runs and produces its figures.

Only that figures exist and that scores agree across methods is asserted, never a
timing: this machine is shared and small. Results go to tmp_path, not bench/results.
"""

from __future__ import annotations

import json
import math

import pytest
from oracle import ec2_client

from bench import baked, bootstrap, memory, overhead, putdata, search
from bench.common import PeakPSS, machine_info, table


def _positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def test_machine_info_and_table():
    info = machine_info()
    assert info["logical_cores"] >= 1 and info["packages"]["numpy"]
    text = table([["a", 1.23456, None]], ["name", "value", "other"], "title")
    assert "1.235" in text and "-" in text.splitlines()[-1]


def test_peak_pss_sees_this_process():
    import os

    with PeakPSS([os.getpid()], interval=0.05) as sampler:
        block = bytearray(32 << 20)  # touched: counts in PSS
        block[:: 4096] = b"x" * len(block[:: 4096])
        sampler.sample()
    assert sampler.peak > 32 << 20
    breakdown = sampler.as_dict()["peak_breakdown_bytes"]
    # The session may have children (the simulated region's daemon): they are other roles.
    assert sum(breakdown.values()) == sampler.peak and breakdown["client"] > 32 << 20


def test_search_quick_scores_agree(tmp_path):
    out = tmp_path / "search.json"
    data = search.main(["--quick", "--workloads", "digits", "--json", str(out)])
    assert data["scores_agree"]
    (workload,) = data["workloads"]
    assert set(workload["methods"]) == {"serial", "loky", "ours"}
    for method, m in workload["methods"].items():
        assert _positive(m["wall_s"]) and _positive(m["peak_pss_bytes"]), method
        if method != "serial":
            assert _positive(m["efficiency"]) and _positive(m["startup_s"]), method
    assert workload["methods"]["ours"]["peak_controller_pss_bytes"] > 0
    assert json.loads(out.read_text())["machine"]["cpu"]


def test_memory_quick(tmp_path):
    data = memory.main(["--quick", "--json", str(tmp_path / "memory.json")])
    assert _positive(data["one_copy_bytes"])
    for key in ("mmap", "push"):
        assert _positive(data[key]["added_bytes"]) and _positive(data[key]["x_one_copy"]), key
    assert all(n > 0.9 * data["one_copy_bytes"] for n in data["mmap"]["per_engine_bytes_read"])
    # Issue 6: engines on one host share one copy of the memmapped splits; pushing
    # arrays costs one copy per engine. (Memory, not time: stable under load.)
    assert data["mmap"]["x_one_copy"] < 1.3
    assert data["push"]["x_one_copy"] > 1.6


def test_overhead_quick(tmp_path):
    data = overhead.main(["--quick", "--json", str(tmp_path / "overhead.json")])
    assert data["n_tasks"] == 100
    assert all(_positive(v) for v in data["ms_per_task"].values())
    assert math.isfinite(data["overhead_ms_per_task"])


@pytest.mark.e2e
def test_putdata_quick(sim_region, tmp_path):
    data = putdata.main(["--quick", "--json", str(tmp_path / "putdata.json")])
    assert [(r["uplink"], r["nodes"]) for r in data["runs"]] == [
        ("off", 1), ("off", 2), ("20mbit", 1), ("20mbit", 2)]
    for r in data["runs"]:
        assert r["bytes_moved"] == r["nodes"] * data["bytes_per_host"]
        assert r["second_bytes_moved"] == 0
        # The kernel's count on the laptop link: one copy, whatever N (the master relays).
        assert 1.0 <= r["link_copies"] < 1.3, r
    assert _positive(data["ratio_max_to_1"]["ratio"])


@pytest.mark.e2e
def test_bootstrap_quick(sim_region, tmp_path):
    data = bootstrap.main(
        ["--quick", "--modes", "warm", "--json", str(tmp_path / "bootstrap.json")]
    )
    warm = data["modes"]["warm"]  # cold runs only add a wheelhouse build, which test_nodes covers
    assert [r["nodes"] for r in warm] == [1, 2] and "cold" not in data["modes"]
    for r in warm:
        assert r["engines"] == r["nodes"] and _positive(r["total_s"])
        assert all(_positive(r["phases_s"][p]) for p in ("launch", "ssh", "packages", "engines"))
    # The wheelhouse crosses the laptop's link once (the kernel's count): the master
    # forwards it to the second node.
    assert warm[1]["link_bytes"] < 1.3 * warm[0]["link_bytes"], warm
    assert _positive(data["ratio_max_to_1"]["warm"])
    assert data["failures"] == [] and data["failed_points"] == []


@pytest.mark.e2e
def test_baked_quick_brings_up_the_stock_then_the_baked_image(sim_region, tmp_path):
    data = baked.main(["--quick", "--json", str(tmp_path / "baked.json")])
    assert data["failures"] == [], data["failures"]
    (stock,), (on_image,) = data["runs"]["stock"], data["runs"]["baked"]
    # The stock node installs; every node of the baked image skips it (the image was
    # named in the cluster file by its name).
    assert (stock["installs_skipped"], on_image["installs_skipped"]) == (0, 1)
    assert stock["engines"] == on_image["engines"] == 1
    assert _positive(data["bake_s"]) and _positive(data["summary"]["ratio"])
    assert json.loads((tmp_path / "baked.json").read_text())["image"] == data["image"]
    left = ec2_client(sim_region).describe_images(
        Owners=["self"], Filters=[{"Name": "name", "Values": [data["image"]]}])["Images"]
    assert left == [], "the benchmark left its image behind"


def test_bootstrap_reports_every_failed_attempt_not_only_the_success(monkeypatch, tmp_path):
    def once(n, mode, tmp, cold_pip, failures, attempt):
        if attempt == 1:
            raise RuntimeError("ssh refused")
        return {"nodes": n}

    monkeypatch.setattr(bootstrap, "_bring_up_once", once)
    failures: list = []
    assert bootstrap.bring_up(2, "warm", tmp_path, False, failures, attempts=2) == {
        "nodes": 2, "attempt": 2}
    assert failures == [{"mode": "warm", "nodes": 2, "attempt": 1, "step": "up",
                         "error": "RuntimeError: ssh refused"}]
    assert bootstrap.bring_up(4, "cold", tmp_path, False, failures) is None  # one try: no point
    assert [f["nodes"] for f in failures] == [2, 4]
