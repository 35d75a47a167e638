"""The drop-in search on the simulated region: real hosts, each with its own
disk, engines in provision's node venv, the client from ``provision.connect()``
with its default serializer.

What only separate hosts can show: the splits reach every host once, through
the broadcast view, into the nodes' default data directory; the fits spread
over the hosts; a second fit finds the data in place and sends nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import sim_cluster_env
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC

from payload import ClusterGridSearchCV, host_memory
from provision import lifecycle
from provision.config import load_config

pytestmark = pytest.mark.e2e
NAME = "payloade2e"
GRID = {"C": [1.0, 10.0], "gamma": [1e-3, 1e-4]}


@pytest.fixture(scope="module")
def client(sim_region, tmp_path_factory):
    with sim_cluster_env(tmp_path_factory.mktemp("payload-e2e"), NAME, 2) as env:
        lifecycle.up(load_config(env["config"]))
        rc = lifecycle.connect(NAME, n_engines=2, timeout=120)
        try:
            yield rc
        finally:
            rc.close()


def test_splits_reach_each_host_once_and_the_search_equals_sklearn(client):
    X, y = load_digits(return_X_y=True)
    cv = StratifiedKFold(3)
    search = ClusterGridSearchCV(SVC(), GRID, client=client, cv=cv).fit(X, y)
    shipment = search.shipment_
    assert len(shipment.hosts) == 2, shipment.hosts  # one engine on each of two hosts
    assert shipment.directory.startswith("/srv/provision/data/")
    assert set(shipment.bytes_per_host.values()) == {shipment.bytes_sent} != {0}
    assert len({host for host, _ in search.search_.engines}) == 2  # fits ran on both
    expected = GridSearchCV(SVC(), GRID, cv=cv).fit(X, y)
    keys = [k for k in expected.cv_results_ if not k.endswith("_time")]
    np.testing.assert_equal(
        {k: search.cv_results_[k] for k in keys}, {k: expected.cv_results_[k] for k in keys}
    )
    again = clone(search).fit(X, y).shipment_
    assert again.directory == shipment.directory and again.bytes_sent == 0


def test_host_memory_lists_both_hosts(client):
    hosts = host_memory(client)
    assert len(hosts) == 2
    assert all(h.available > 0 and len(h.engines) == 1 for h in hosts.values())
