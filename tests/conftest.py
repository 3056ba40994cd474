"""Databases and servers for the suite.

PostgreSQL comes from EXPORTER_TEST_DATABASE_URL, else from testcontainers where a Docker engine answers,
else from the server on 127.0.0.1:5432 (user postgres). The run creates a scratch database there and
applies the migrations. If PostgreSQL cannot be reached the suite fails; it never skips.

Under pytest-xdist each worker is its own process with its own session: its own scratch database (named after
the worker), SQLite file and tmp_path. Tests that look at server-wide views such as pg_stat_activity filter by
`datname = current_database()`, so they see only their worker's sessions.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Row, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.app import create_app
from exporter.cli.demo import seed_demo
from exporter.cli.main import migrate
from exporter.config import Settings
from exporter.sources.engines import create_db_engine
from tests.servers import ServerThread

LOCAL_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")  # gw0, gw1, ... under pytest-xdist


@dataclass(frozen=True)
class Database:
    """A migrated database the test may fill; helpers run synchronously on a short-lived engine."""

    dialect: str
    url: str

    def run(self, work: Callable[[AsyncEngine], Coroutine[Any, Any, Any]]) -> Any:
        async def go() -> Any:
            engine = create_db_engine(self.url)
            try:
                return await work(engine)
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def execute(self, *statements: str, **params: Any) -> list[Row[Any]]:
        """Run statements in one transaction; the rows of the last one."""

        async def work(engine: AsyncEngine) -> list[Row[Any]]:
            async with engine.begin() as conn:
                rows: list[Row[Any]] = []
                for statement in statements:
                    result = await conn.execute(text(statement), params)
                    rows = list(result.fetchall()) if result.returns_rows else []
                return rows

        rows: list[Row[Any]] = self.run(work)
        return rows

    def seed_demo(self, rows: int) -> None:
        self.run(lambda engine: seed_demo(engine, rows))

    def settings(self, **overrides: Any) -> Settings:
        """Settings on this database: the packaged datasets plus `datasets`, `sources`, `batch_rows` given."""
        default = Settings.from_environ({})
        data: dict[str, Any] = {
            "database_url": self.url,
            "auth": "off",  # the export, file and proxy tests are about those; tests/access/test_auth.py turns it on
            "datasets": {
                name: {k: v for k, v in vars(config).items() if k != "name" and v is not None}
                for name, config in default.datasets.items()
            },
        }
        data["datasets"].update(overrides.pop("datasets", {}))
        data.update(overrides)
        return Settings.from_dict(data)


def _postgres_server_url() -> Iterator[str]:
    url = os.environ.get("EXPORTER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
            yield container.get_connection_url()
        return
    yield LOCAL_POSTGRES


def _docker_available() -> bool:
    """Whether a Docker engine answers on DOCKER_HOST or the default socket (a client alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: let testcontainers try it and fail loudly if it does not answer
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(3)
        try:
            probe.connect(host.removeprefix("unix://"))
            probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return probe.recv(16).startswith(b"HTTP/1.")
        except OSError:
            return False


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    server = make_url(url).set(drivername="postgresql")
    conn = await asyncpg.connect(server.render_as_string(hide_password=False), timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    for server_url in _postgres_server_url():
        name = f"exporter_test_{WORKER}_{uuid.uuid4().hex[:12]}"
        try:
            asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            pytest.fail(f"PostgreSQL is required and was not reachable at {server_url}: {exc}", pytrace=False)
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        try:
            migrate(url)
            yield url
        finally:
            asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'exporter.db'}"
    migrate(url)
    return url


@pytest.fixture
def pg(postgres_url: str) -> Database:
    return Database("postgresql", postgres_url)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest) -> Database:
    """Every export test runs on both databases."""
    if request.param == "postgresql":
        return Database("postgresql", request.getfixturevalue("postgres_url"))
    return Database("sqlite", request.getfixturevalue("sqlite_url"))


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], ServerThread]]:
    """Start the app with the given settings under uvicorn on 127.0.0.1; stopped after the test."""
    started: list[ServerThread] = []

    def start(settings: Settings) -> ServerThread:
        server = ServerThread(create_app(settings)).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)
