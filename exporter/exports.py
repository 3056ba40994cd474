"""The export pipeline: rows → serializer → optional gzip, and its entry in the export log."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.capacity import iter_limited
from exporter.compression import iter_gzip
from exporter.config import Settings
from exporter.datasets import Catalog, Dataset
from exporter.errors import Busy, RowLimitExceeded
from exporter.keys import NO_RESTRICTION, Restriction
from exporter.models import ExportLogEntry
from exporter.pgcopy import copy_applies, copy_options, copy_statement, iter_copy
from exporter.queries import ExportQuery, build_query
from exporter.rows import iter_rows
from exporter.serializers import (
    BOM,
    CsvOptions,
    Serializer,
    create_serializer,
    format_options,
    media_type,
    split_filename,
)

log = logging.getLogger(__name__)


EXPORT_FORMATS = ("csv", "ndjson", "csv.gz", "ndjson.gz")
# An export's transaction waits for its client at most the send timeout between two statements; PostgreSQL ends
# one idle this much longer (idle_in_transaction_session_timeout), a backstop should the service itself stall.
IDLE_MARGIN_SECONDS = 30.0


def export_media_type(fmt: str) -> str:
    """The Content-Type of an export file in format `fmt` (`csv.gz` is a gzip file, not gzip-encoded CSV)."""
    if fmt.endswith(".gz"):
        return "application/gzip"
    return media_type(None if fmt == "ndjson" else CsvOptions())


@dataclass(frozen=True)
class Export:
    """A validated export request: what `GET /exports/{filename}?{params}` and a job both produce."""

    dataset: Dataset
    query: ExportQuery
    options: CsvOptions | None  # None for NDJSON
    format: str  # csv | ndjson | csv.gz | ndjson.gz
    gzip_file: bool
    max_rows: int | None = None  # the key's limit: an export that passes it is aborted

    @property
    def filename(self) -> str:
        return f"{self.dataset.name}.{self.format}"


async def prepare_export(catalog: Catalog, filename: str, params: list[tuple[str, str]],
                         restriction: Restriction = NO_RESTRICTION) -> Export:
    """Validate the name and every parameter, within a key's restriction on the dataset; raises the ExportError
    that names what is wrong."""
    name, fmt, gzip_file = split_filename(filename)
    dataset = await catalog.get(name)
    query = build_query(dataset, params, dataset.engine.dialect.name, restriction)
    options = format_options(fmt, dict(params))
    return Export(dataset, query, options, fmt + (".gz" if gzip_file else ""), gzip_file, restriction.max_rows)


@dataclass
class ExportRecord:
    """What the export log keeps of one download (an export, a file, a relay, a job's result); counters grow
    while it streams. `dataset` holds the dataset's, file root's or upstream's name."""

    dataset: str
    format: str
    parameters: dict[str, list[str]]
    client_address: str | None
    kind: str = "export"
    key_name: str | None = None
    resource: str | None = None  # a file's or relayed path; a job's id
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    bytes: int = 0
    path: str | None = "generic"  # copy | generic, for exports

    def set_rows(self, rows: int) -> None:
        self.rows = rows


async def iter_encoded(batches: AsyncIterator[Sequence[Any]], serializer: Serializer, record: ExportRecord
                       ) -> AsyncIterator[bytes]:
    """One chunk per batch; the header travels with the first batch, so the first chunk proves the query runs."""
    pending = serializer.header()
    try:
        async for batch in batches:
            record.rows += len(batch)
            yield pending + serializer.encode(batch)
            pending = b""
        yield pending + serializer.footer()
    finally:
        await batches.aclose()  # type: ignore[attr-defined]


def open_chunks(dataset: Dataset, query: ExportQuery, options: CsvOptions | None, settings: Settings,
                record: ExportRecord, *, wait_for_slot: bool = False) -> AsyncIterator[bytes]:
    """The export's bytes: from COPY where it applies (PostgreSQL, fast path on), else cursor + serializer.
    They start once one of the database's export slots is held: without `wait_for_slot` (a request) the first
    chunk raises Busy when none is free; a job waits for one. See iter_limited for the statement timeout."""
    dialect = dataset.engine.dialect.name
    fmt = "ndjson" if options is None else "csv"
    idle_seconds = settings.send_timeout_seconds + IDLE_MARGIN_SECONDS
    if settings.copy_fast_path and dialect == "postgresql" and copy_applies(query, fmt, options):
        record.path = "copy"
        chunks = iter_copy(dataset.engine, copy_statement(query, fmt), copy_options(fmt, options), record.set_rows,
                           idle_seconds)
        if options is not None and options.bom:
            chunks = _iter_prefixed(BOM, chunks)
    else:
        record.path = "generic"
        batches = iter_rows(dataset.engine, query.statement, settings.batch_rows, idle_seconds)
        chunks = iter_encoded(batches, create_serializer(query.columns, dialect, options), record)
    return iter_limited(chunks, dataset.slots, wait_for_slot=wait_for_slot,
                        first_chunk_seconds=settings.statement_timeout_seconds)


async def _iter_prefixed(prefix: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield prefix + chunk
            prefix = b""
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def iter_export(chunks: AsyncIterator[bytes], *, gzip: bool, record: ExportRecord, log_engine: AsyncEngine,
                max_rows: int | None = None) -> AsyncIterator[bytes]:
    """The export's body: optionally gzipped, aborted with RowLimitExceeded once it passes `max_rows`, and
    recorded (see iter_recorded)."""
    if max_rows is not None:
        chunks = _iter_row_limited(chunks, record, max_rows)
    if gzip:
        chunks = iter_gzip(chunks)
    return iter_recorded(chunks, record, log_engine)


async def _iter_row_limited(chunks: AsyncIterator[bytes], record: ExportRecord, max_rows: int
                            ) -> AsyncIterator[bytes]:
    """Raise RowLimitExceeded instead of a chunk that takes the export past `max_rows` (the query asks for one row
    more, so the database stops there too). COPY counts line ends until it ends, and a value may hold line
    breaks, so there only its final count decides."""
    def passed() -> bool:
        return record.rows > max_rows

    try:
        async for chunk in chunks:
            if record.path == "generic" and passed():
                break
            yield chunk
        if passed():
            log.warning("export of %s stopped: the key %s may read at most %d rows", record.dataset,
                        record.key_name, max_rows)
            raise RowLimitExceeded(f"this export has more than {max_rows} rows, the most this key may read; "
                                   "narrow it with filters or limit=")
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def iter_recorded(chunks: AsyncIterator[bytes], record: ExportRecord, log_engine: AsyncEngine
                        ) -> AsyncIterator[bytes]:
    """`chunks`, counted. However it ends (completed, closed because the client left, or failed), `chunks` is
    closed and one export log row is written before this iterator finishes closing."""
    outcome, error = "failed", None
    try:
        async for chunk in chunks:
            record.bytes += len(chunk)
            yield chunk
        outcome = "completed"
    except (GeneratorExit, anyio.get_cancelled_exc_class()):
        outcome = "aborted"
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, Busy):
            outcome = "limited"  # refused for capacity before any byte, as a 429 is
        if record.bytes:
            log.error("%s of %s aborted after %d bytes: %s", record.kind, record.dataset, record.bytes, error)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()  # type: ignore[attr-defined]
            await write_log(log_engine, record, outcome, error)


def grouped(params: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Query parameters as the export log keeps them: each name with its values."""
    found: dict[str, list[str]] = {}
    for name, value in params:
        found.setdefault(name, []).append(value)
    return found


async def write_log(engine: AsyncEngine, record: ExportRecord, outcome: str, error: str | None) -> None:
    """Insert the export's log row; a failure here is logged, never raised into the response."""
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(ExportLogEntry).values(
                    started_at=record.started_at,
                    dataset=record.dataset,
                    format=record.format,
                    parameters=record.parameters,
                    outcome=outcome,
                    path=record.path,
                    rows=record.rows,
                    bytes=record.bytes,
                    duration_seconds=time.monotonic() - record.started,
                    client_address=record.client_address,
                    error=error,
                    kind=record.kind,
                    key_name=record.key_name,
                    resource=record.resource,
                )
            )
    except Exception:
        log.exception("could not write the export log for %s", record.dataset)
