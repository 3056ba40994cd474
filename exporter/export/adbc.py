"""The PostgreSQL fast path for Parquet and Arrow: the export's SELECT read by adbc-driver-postgresql, whose
binary COPY into Arrow runs in C, in a worker thread of its own; batches come out in the types of formats/arrow.py.

Each column is rendered in the SELECT so that what ADBC hands back converts to the generic path's values
exactly: text types, JSON and PostgreSQL's text of other types as text, ±infinity timestamps as NULL. The tests
compare the two paths' files value by value.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import anyio
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Select, Text, case, cast, func
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from exporter.errors import DatabaseUnavailable, DatasetUnavailable
from exporter.export.queries import ExportQuery
from exporter.formats.arrow import arrow_column
from exporter.outages import is_outage, outage_reason
from exporter.sources.datasets import Column
from exporter.sources.engines import APPLICATION_NAME, positional_sql

# ADBC fills a record batch up to about this many bytes of PostgreSQL data before handing it over (its default is
# 16 MB): small enough that rows stream out as the query produces them, big enough that per-batch work is noise.
BATCH_BYTES = 1 << 20
CANCEL_REPEAT_SECONDS = 0.5
# The output settings of the service's own connections (see db.py), for PostgreSQL's text of values.
SESSION = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'iso_8601'",
           "SET extra_float_digits = 1", "SET bytea_output = 'hex'")


def arrow_statement(query: ExportQuery) -> Select[Any]:
    """The export's SELECT, each column rendered for ADBC (see the module docstring)."""
    return query.statement.with_only_columns(*(_rendered(query, col) for col in query.columns),
                                             maintain_column_froms=True)


def _rendered(query: ExportQuery, col: Column) -> ColumnElement[Any]:
    raw = query.raw(col.name)
    arrow_type = arrow_column(col, "postgresql")[0]
    # Text types as they are: a cast would drop char(n)'s padding, which the driver's value keeps.
    if col.as_text or (pa.types.is_string(arrow_type) and col.kind != "text"):
        return cast(raw, Text).label(col.name)
    if col.kind in ("timestamp", "timestamptz"):
        return case((func.isfinite(raw), raw)).label(col.name)  # else NULL, as the generic path writes
    return raw.label(col.name)


def _converted(array: pa.Array, target: pa.DataType) -> pa.Array:
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage  # numeric arrives as an opaque extension type over its text
    if array.type == target:
        return array
    if pa.types.is_decimal(target):
        array = pc.if_else(pc.match_substring(array, "n", ignore_case=True), pa.scalar(None, array.type), array)
    elif pa.types.is_date(target):  # PostgreSQL's text of a date, `infinity` included
        array = pc.if_else(pc.ends_with(array, "infinity"), pa.scalar(None, array.type), array)
    return pc.cast(array, target)


def _url(engine: AsyncEngine) -> str:
    url = make_url(engine.url).set(drivername="postgresql").update_query_dict({"application_name": APPLICATION_NAME})
    return url.render_as_string(hide_password=False)


@contextmanager
def _adbc_errors() -> Iterator[None]:
    try:
        yield
    except (adbc_driver_manager.Error, OSError) as error:
        # A lost connection comes out of the Arrow stream as a bare OSError ("[libpq] ... server closed the
        # connection unexpectedly"), which was a job's internal_error.
        if is_outage(error):
            raise DatabaseUnavailable(f"export: the database is unreachable ({outage_reason(error)})") from error
        if isinstance(error, adbc_driver_manager.Error):
            raise DatasetUnavailable(f"export: the query failed ({str(error).splitlines()[0]})") from error
        raise


class _Reader:
    """One ADBC connection in a read-only REPEATABLE READ transaction, reading one query's record batches.
    Every method but cancel() runs in the export's own worker thread."""

    def __init__(self, url: str) -> None:
        self._conn = adbc.connect(url, autocommit=True)
        try:
            self._cursor = self._conn.cursor()
        except BaseException:
            self._conn.close()
            raise
        self._lock = threading.Lock()
        self._running = self._cancelled = False
        self._batches: pa.RecordBatchReader | None = None

    def start(self, sql: str, args: list[Any]) -> None:
        """Run the query: returns once PostgreSQL sends its first rows, which may take long; cancel() stops it."""
        with self._lock:
            if self._cancelled:
                raise asyncio.CancelledError
            self._running = True
        for statement in ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", *SESSION):
            self._cursor.execute(statement)
            if self._cancelled:  # a cancel that arrived during a SET ended only that statement
                raise asyncio.CancelledError
        self._cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
        self._cursor.execute(sql, args or None)
        self._batches = self._cursor.fetch_record_batch()

    def next_batch(self, schema: pa.Schema) -> pa.RecordBatch | None:
        """The next record batch, converted to `schema`; None after the last."""
        assert self._batches is not None
        try:
            batch = self._batches.read_next_batch()
        except StopIteration:
            with self._lock:
                self._running = False
            return None
        arrays = [_converted(array, field.type) for array, field in zip(batch.columns, schema, strict=True)]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def cancel(self) -> None:
        """Stop the query, running or about to run; safe from any thread."""
        with self._lock:
            self._cancelled = True
            if self._running:
                self._cursor.adbc_cancel()

    def close(self) -> None:
        with self._lock:
            self._running = False  # cancel() must not touch a closing cursor
        try:
            self._cursor.close()
        finally:
            self._conn.close()


async def iter_arrow(engine: AsyncEngine, query: ExportQuery, schema: pa.Schema) -> AsyncIterator[pa.RecordBatch]:
    """Yield the export's rows as record batches of `schema`, in ADBC's batches of about BATCH_BYTES.

    ADBC is synchronous: it runs in a worker thread of this export's own, one call at a time and one batch
    ahead, so a slow client holds the next read back. Closing this iterator, even while connecting or waiting
    for the first rows, cancels the query on the server, waits for the thread and closes the connection.
    Errors are ExportErrors (a 503 before the first byte)."""
    sql, args = positional_sql(arrow_statement(query), engine.dialect)
    # ADBC binds through Arrow arrays, which hold no decimal of more than 76 digits (1e-400) and no UUID; as text
    # they reach the same `$n::NUMERIC` and `$n::UUID` casts the statement has.
    args = [str(arg) if isinstance(arg, Decimal | uuid.UUID) else arg for arg in args]
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adbc")
    connecting = executor.submit(_Reader, _url(engine))
    try:
        with _adbc_errors():
            reader = await asyncio.wrap_future(connecting)
            await asyncio.wrap_future(executor.submit(reader.start, sql, args))
            # Read one batch ahead: ADBC (in its thread, without the GIL) fetches the next batch while this one
            # is converted, encoded and sent, so the two use both cores instead of taking turns.
            # The batch is converted to `schema` there too: casting a batch of text to decimals takes tens of
            # milliseconds, which on the event loop's thread would hold up every other request (issue 19).
            reading = executor.submit(reader.next_batch, schema)
            while (batch := await asyncio.wrap_future(reading)) is not None:
                reading = executor.submit(reader.next_batch, schema)
                yield batch
    finally:
        with anyio.CancelScope(shield=True):
            await _close(executor, connecting)


async def _close(executor: ThreadPoolExecutor, connecting: Future[_Reader]) -> None:
    """Cancel and close the reader, once the thread has created it (or failed to), then end the thread."""
    try:
        reader = await asyncio.wrap_future(connecting)
    except BaseException:
        reader = None  # the connection failed: nothing to close
    if reader is not None:
        closing = asyncio.wrap_future(executor.submit(reader.close))  # after the call in progress: one worker
        # A query still running in the thread (the client left) ends now. PostgreSQL drops a cancel request that
        # arrives between two statements (before the query is sent), so it is repeated until that call returns:
        # once, a lost cancel left a 40 s query holding its locks.
        while not closing.done():
            reader.cancel()
            await asyncio.wait({closing}, timeout=CANCEL_REPEAT_SECONDS)
        await closing
    executor.shutdown(wait=False)
