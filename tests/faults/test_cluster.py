"""The suite's own cluster: it stops, crashes and starts again, and a database on it is migrated."""

from __future__ import annotations

import pytest

from tests.conftest import Database
from tests.faults.cluster import Cluster


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_suites_cluster_restarts_and_keeps_its_databases(cluster: Cluster, faulty: Database, mode: str) -> None:
    faulty.execute("CREATE TABLE kept (n int)", "INSERT INTO kept VALUES (1)")
    cluster.restart(mode)
    assert [row.n for row in faulty.execute("SELECT n FROM kept")] == [1]
    with cluster.down(0.2):
        assert not cluster.running()
    assert cluster.running()
