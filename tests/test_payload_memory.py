"""The client's memory over thousands of tasks, one pair per task.

ipyparallel frees its per-message caches (results, metadata, futures) when both
a task's reply and its iopub "idle" status have arrived. iopub is a PUB/SUB
socket, which drops messages under load: on a real cluster most idles of a
long search are lost, and each task then leaves about 30 KB behind
(`payload._remote.forget` exists for that). Locally nothing is dropped, so the
test loses every idle itself (the worst case): the client's lookup of a task's
output future misses, as it does when the idle never comes.

Memory is measured as the Python heap (tracemalloc), which the caches live in;
the process RSS moves by tens of MB with allocator arenas either way and could
hide the leak. A control run with the cleanup disabled shows the bound breaks.
"""

from __future__ import annotations

import gc
import tracemalloc

import ipyparallel as ipp
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import ShuffleSplit

import payload.search
from payload import DistributedSearch, persist_cv_splits

pytest_plugins = ["payload_fixtures"]  # client_json: the node-venv engines

N_CANDIDATES = 1000  # x 2 splits: 2,000 fits
BOUND_MIB = 8.0  # 4 KB a task; the leak is ~30 KB a task, ~60 MiB here


class IdleLost(dict):
    """``Client._output_futures`` when every iopub idle status is lost: the idle
    handler's lookup misses, so ipyparallel never frees the task's caches."""

    def get(self, key, default=None):
        return None


@pytest.fixture
def lossy_client(client_json):
    client = ipp.Client(str(client_json))
    client.wait_for_engines(2, timeout=60)
    client._output_futures = IdleLost()
    yield client
    client.close()


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return persist_cv_splits(
        X, y, ShuffleSplit(2, random_state=0), tmp_path_factory.mktemp("iris"), name="iris"
    )


def heap_growth_mib(client, paths, batch_size) -> float:
    """Python heap left over by a 2,000-fit search (the search object itself freed)."""
    grid = {"random_state": list(range(N_CANDIDATES))}
    DistributedSearch(  # warm up: imports, the engines' caches, the first batches
        client, DummyClassifier(), {"random_state": [0, 1]}, paths, batch_size=1
    ).run(timeout=120)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        search = DistributedSearch(
            client, DummyClassifier(), grid, paths, batch_size=batch_size,
            return_train_score=False,
        ).run(timeout=600)
        assert search.progress == (2 * N_CANDIDATES, 2 * N_CANDIDATES)
        del search
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("batch_size", [1, "auto"])
def test_client_heap_stays_bounded_over_two_thousand_tasks(lossy_client, tiny_splits, batch_size):
    grown = heap_growth_mib(lossy_client, tiny_splits, batch_size)
    assert grown < BOUND_MIB, f"client heap grew {grown:.1f} MiB over {2 * N_CANDIDATES} fits"
    assert not lossy_client.results and not lossy_client._futures


def test_without_the_cleanup_the_same_search_breaks_the_bound(
    lossy_client, tiny_splits, monkeypatch
):
    monkeypatch.setattr(payload.search, "forget", lambda ar: None)
    grown = heap_growth_mib(lossy_client, tiny_splits, batch_size=1)
    assert grown > 3 * BOUND_MIB, f"only {grown:.1f} MiB: the test would not see the leak"
    assert len(lossy_client.metadata) >= 2 * N_CANDIDATES
