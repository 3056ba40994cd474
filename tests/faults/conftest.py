"""The fault suite's PostgreSQL: one scratch cluster per pytest worker (tests stop and crash it), and a fresh,
migrated database on it for each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from exporter.cli.main import migrate
from tests.conftest import Database, _admin
from tests.faults.cluster import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def faulty(cluster: Cluster) -> Iterator[Database]:
    """A migrated database on the suite's own cluster, which the test may stop and restart (it is running again
    when the test begins)."""
    cluster.start_if_stopped()
    name = f"faults_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(cluster.url(), f'CREATE DATABASE "{name}"'))
    migrate(cluster.url(name))
    yield Database("postgresql", cluster.url(name))
    cluster.start_if_stopped()
    asyncio.run(_admin(cluster.url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
