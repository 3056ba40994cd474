"""Engines for PostgreSQL and SQLite, and the read-only snapshot transaction an export reads in."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from sqlalchemy import Select, event, exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from exporter import metrics
from exporter.errors import DatabaseUnavailable, DatasetUnavailable
from exporter.outages import is_outage

APPLICATION_NAME = "exporter"
POOL_SIZE = 10
POOL_CONNECTIONS = 30


def create_db_engine(url: str, application_name: str = APPLICATION_NAME,
                     pool_connections: int = POOL_CONNECTIONS) -> AsyncEngine:
    """An async engine; the caller disposes it. SQLite files get their folder, WAL and a busy timeout.
    `application_name` names its PostgreSQL sessions in pg_stat_activity. Its pool opens at most
    `pool_connections` connections (and keeps up to 10 of them open when idle)."""
    parsed = make_url(url)
    pool_size = min(POOL_SIZE, pool_connections)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_connections - pool_size)
        else:
            engine = create_async_engine(url)  # one connection is the whole database
        # WAL lets exports read while the export log is written; readers never block the writer.
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_connections - pool_size,
        pool_pre_ping=True,
        connect_args={
            "server_settings": {
                "application_name": application_name,
                # Fixed output formats, so PostgreSQL's own text (COPY, ::text, row_to_json) is predictable.
                "TimeZone": "UTC",
                "DateStyle": "ISO, YMD",
                "IntervalStyle": "iso_8601",
                "extra_float_digits": "1",
                "bytea_output": "hex",
                # A query whose client connection was dropped (the export was cancelled mid-statement and
                # its connection discarded) stops within a second instead of running on (PostgreSQL 14+).
                "client_connection_check_interval": "1000",
            }
        },
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


@contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Turn database failures into ExportErrors: 503 database_unavailable when it cannot be reached,
    503 dataset_unavailable when a statement fails. After the first byte they abort the response all the same."""
    try:
        yield
    except (OSError, exc.InterfaceError, exc.OperationalError, asyncpg.InterfaceError,
            asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError) as error:
        raise DatabaseUnavailable(f"{what}: the database is unreachable ({_reason(error)})") from error
    except (exc.DBAPIError, asyncpg.PostgresError) as error:
        if is_outage(error):  # the server ended the session: shutting down, or the backend was terminated
            raise DatabaseUnavailable(f"{what}: the database went away ({_reason(error)})") from error
        raise DatasetUnavailable(f"{what}: the query failed ({_reason(error)})") from error


def _reason(error: BaseException) -> str:
    return str(getattr(error, "orig", None) or error).splitlines()[0]


def positional_sql(statement: Select[Any], dialect: Dialect) -> tuple[str, list[Any]]:
    """`statement` as SQL text with $1, $2, ... and its arguments in order: for what SQLAlchemy does not run
    itself (COPY, EXPLAIN, ADBC)."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    return compiled.string, [compiled.params[name] for name in compiled.positiontup or ()]


async def driver_connection(conn: AsyncConnection) -> Any:
    """asyncpg's own connection under `conn`."""
    return (await conn.get_raw_connection()).driver_connection


@asynccontextmanager
async def open_snapshot(engine: AsyncEngine, idle_seconds: float | None = None) -> AsyncIterator[AsyncConnection]:
    """A connection in a read-only transaction; on PostgreSQL REPEATABLE READ, so one export sees one snapshot.
    With `idle_seconds`, PostgreSQL ends the session when the transaction sits idle that long between two
    statements (idle_in_transaction_session_timeout): a backstop that frees the connection, its snapshot and the
    rows vacuum must keep for it, should the service stop reading without closing it.

    The connection goes back to the pool on exit, even when the caller is being cancelled.
    """
    started = time.monotonic()
    conn = await engine.connect()
    metrics.POOL_WAIT.observe(time.monotonic() - started)
    try:
        if engine.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        await conn.begin()
        if idle_seconds is not None and engine.dialect.name == "postgresql":
            milliseconds = max(1, round(idle_seconds * 1000))
            await conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {milliseconds}")
        yield conn
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await conn.close()
            except (exc.DBAPIError, asyncpg.InterfaceError, asyncpg.InternalClientError):
                # The connection died under the export (e.g. its backend was terminated), so the rollback
                # cannot run: SQLAlchemy discards it, or the pool's pre-ping will. asyncpg may still be reading
                # the backend's last error ("cannot switch to state 12; another operation (2) is in progress",
                # seen when a parallel export's backends were all terminated). The export's own error, not this
                # one, is what the caller must see.
                pass
