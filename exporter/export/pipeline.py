"""The export pipeline: rows → serializer → optional gzip, and its entry in the export log."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import pyarrow as pa
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter import logs, metrics
from exporter.access.capacity import iter_limited
from exporter.access.keys import NO_RESTRICTION, Restriction
from exporter.config import Settings
from exporter.errors import Busy, RowLimitExceeded, TooManyRowsForXlsx
from exporter.export.adbc import iter_arrow
from exporter.export.compression import COMPRESSORS
from exporter.export.copy import copy_applies, copy_options
from exporter.export.cursor import count_rows, iter_rows
from exporter.export.parallel import iter_copy
from exporter.export.queries import ExportQuery, build_query
from exporter.formats import (
    BOM,
    FORMATS,
    MAX_ROWS,
    CsvOptions,
    ExportFormat,
    FormatDefaults,
    Options,
    Serializer,
    create_serializer,
    format_options,
    split_filename,
)
from exporter.formats.arrow import ArrowStreamSerializer
from exporter.formats.parquet import ParquetSerializer
from exporter.models import ExportLogEntry
from exporter.sources.datasets import Catalog, Dataset

log = logging.getLogger(__name__)


EXPORT_FORMATS = tuple(FORMATS)  # what an export's name may end in, and a job's `format`
# An export's transaction waits for its client at most the send timeout between two statements; PostgreSQL ends
# one idle this much longer (idle_in_transaction_session_timeout), a backstop should the service itself stall.
IDLE_MARGIN_SECONDS = 30.0


def export_media_type(fmt: str) -> str:
    """The Content-Type of an export file in format `fmt` (`csv.gz` is a gzip file, not gzip-encoded CSV)."""
    return FORMATS[fmt].media_type


@dataclass(frozen=True)
class Export:
    """A validated export request: what `GET /exports/{filename}?{params}` and a job both produce."""

    dataset: Dataset
    query: ExportQuery
    options: Options
    export_format: ExportFormat
    max_rows: int | None = None  # the key's limit: an export that passes it is aborted

    @property
    def format(self) -> str:
        """The format's name: csv, ndjson, csv.gz, ..., parquet, arrow, xlsx (a key of FORMATS)."""
        return self.export_format.name

    @property
    def compression(self) -> str | None:
        """The whole file's compression (`.gz`, `.zst` names), not a negotiated Content-Encoding."""
        return self.export_format.compression

    @property
    def filename(self) -> str:
        return f"{self.dataset.name}.{self.format}"


async def prepare_export(catalog: Catalog, filename: str, params: list[tuple[str, str]],
                         restriction: Restriction = NO_RESTRICTION, settings: Settings | None = None) -> Export:
    """Validate the name and every parameter, within a key's restriction on the dataset; raises the ExportError
    that names what is wrong. `settings` give the format defaults (the Parquet row group size)."""
    name, fmt = split_filename(filename)
    dataset = await catalog.get(name)
    query = build_query(dataset, params, dataset.engine.dialect.name, restriction)
    options = format_options(fmt, dict(params), format_defaults(dataset, settings or Settings()))
    return Export(dataset, query, options, FORMATS[fmt], restriction.max_rows)


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
    request_id: str | None = field(default_factory=logs.request_id.get)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    bytes: int = 0
    path: str | None = "generic"  # copy | adbc | generic, for exports

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
        try:
            await batches.aclose()  # type: ignore[attr-defined]
        finally:
            close = getattr(serializer, "close", None)  # a serializer that holds open state (XLSX's zip)
            if close is not None:
                close()


def open_chunks(dataset: Dataset, query: ExportQuery, options: Options, settings: Settings,
                record: ExportRecord, *, wait_for_slot: bool = False) -> AsyncIterator[bytes]:
    """The export's bytes, uncompressed: from COPY where it applies (PostgreSQL, fast path on, CSV or NDJSON),
    from ADBC for Parquet and Arrow on PostgreSQL, else cursor + serializer. They start once one of the
    database's export slots is held: without `wait_for_slot` (a request) the first chunk raises Busy when none is
    free; a job waits for one. See iter_limited for the statement timeout."""
    return iter_limited(_open_chunks(dataset, query, options, settings, record), dataset.slots,
                        wait_for_slot=wait_for_slot, first_chunk_seconds=settings.statement_timeout_seconds)


def _open_chunks(dataset: Dataset, query: ExportQuery, options: Options, settings: Settings,
                 record: ExportRecord) -> AsyncIterator[bytes]:
    dialect = dataset.engine.dialect.name
    idle_seconds = settings.send_timeout_seconds + IDLE_MARGIN_SECONDS
    fmt = options.serialization
    csv = options if isinstance(options, CsvOptions) else None
    if (settings.copy_fast_path and dialect == "postgresql" and fmt in ("csv", "ndjson")
            and copy_applies(query, fmt, csv)):
        record.path = "copy"
        guard = csv is not None and csv.formula_guard
        chunks = iter_copy(dataset, query, fmt, copy_options(fmt, csv), formula_guard=guard,
                           parts=settings.copy_parallel, min_rows=settings.copy_parallel_min_rows,
                           on_rows=record.set_rows, idle_seconds=idle_seconds)
        return _iter_prefixed(BOM, chunks) if csv is not None and csv.bom else chunks
    serializer = create_serializer(query.columns, dialect, options)
    if settings.arrow_fast_path and dialect == "postgresql" and isinstance(
            serializer, ParquetSerializer | ArrowStreamSerializer):
        record.path = "adbc"
        return _iter_encoded_arrow(iter_arrow(dataset.engine, query, serializer.schema), serializer, record)
    record.path = "generic"
    batches = iter_rows(dataset.engine, query.statement, settings.batch_rows, idle_seconds)
    chunks = iter_encoded(batches, serializer, record)
    if fmt in MAX_ROWS:
        return _iter_within_row_limit(dataset, query, MAX_ROWS[fmt], chunks)
    return chunks


async def _iter_within_row_limit(dataset: Dataset, query: ExportQuery, max_rows: int, chunks: AsyncIterator[bytes]
                                 ) -> AsyncIterator[bytes]:
    """`chunks`, once a count with the export's filters shows at most `max_rows` rows; else TooManyRowsForXlsx
    before the first byte (the only format with a row limit), which the response turns into a 400."""
    try:
        rows = await count_rows(dataset.engine, query.statement)
        if rows > max_rows:
            raise TooManyRowsForXlsx(
                f"the export has {rows:,} rows and an Excel sheet holds {max_rows:,} below its header: "
                f"filter it (or use limit=) or export .csv, .parquet or .arrow instead", parameter="format")
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _iter_encoded_arrow(batches: AsyncIterator[pa.RecordBatch],
                              serializer: ParquetSerializer | ArrowStreamSerializer, record: ExportRecord
                              ) -> AsyncIterator[bytes]:
    """As iter_encoded, for record batches."""
    pending = serializer.header()
    try:
        async for batch in batches:
            record.rows += batch.num_rows
            yield pending + serializer.encode_arrow(batch)
            pending = b""
        yield pending + serializer.footer()
    finally:
        await batches.aclose()  # type: ignore[attr-defined]


async def _iter_prefixed(prefix: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield prefix + chunk
            prefix = b""
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def format_defaults(dataset: Dataset, settings: Settings) -> FormatDefaults:
    return FormatDefaults(formula_guard=dataset.config.formula_guard,
                          parquet_row_group_rows=settings.parquet_row_group_rows)


def iter_export(chunks: AsyncIterator[bytes], *, compression: str | None, record: ExportRecord,
                log_engine: AsyncEngine, max_rows: int | None = None) -> AsyncIterator[bytes]:
    """The export's body: compressed with `compression` ("gzip", "zstd" or None), aborted with RowLimitExceeded
    once it passes `max_rows`, and recorded (see iter_recorded)."""
    if max_rows is not None:
        chunks = _iter_row_limited(chunks, record, max_rows)
    if compression is not None:
        chunks = COMPRESSORS[compression](chunks)
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
            if record.path != "copy" and passed():
                break
            yield chunk
        if passed():
            raise RowLimitExceeded(f"this export has more than {max_rows} rows, the most this key may read; "
                                   "narrow it with filters or limit=")
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def iter_recorded(chunks: AsyncIterator[bytes], record: ExportRecord, log_engine: AsyncEngine
                  ) -> AsyncIterator[bytes]:
    """`chunks`, counted. However it ends (completed, closed because the client left, or failed), `chunks` is
    closed and one export log row is written (and the download counted in the metrics) when this closes, even
    if it was never started: a class, since aclose() on an async generator that never started skips its
    `finally`, and a relay's upstream connection is open from the start."""
    return _Recorded(chunks, record, log_engine)


class _Recorded:
    def __init__(self, chunks: AsyncIterator[bytes], record: ExportRecord, log_engine: AsyncEngine) -> None:
        self._chunks = chunks
        self._record = record
        self._log_engine = log_engine
        self._outcome = "aborted"  # closed before the end: the client left, or the server is stopping it
        self._error: str | None = None
        self._streaming = False
        self._closed = False

    def __aiter__(self) -> _Recorded:
        return self

    async def __anext__(self) -> bytes:
        record = self._record
        if not self._streaming:
            self._streaming = True
            metrics.ACTIVE_STREAMS.labels(record.kind).inc()
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._outcome = "completed"
            await self.aclose()  # the row is there before the response's last byte, as a client would expect
            raise
        except Exception as exc:
            # Refused for capacity before any byte is `limited`, as a 429 is.
            self._outcome = "limited" if isinstance(exc, Busy) else "failed"
            self._error = f"{type(exc).__name__}: {exc}"
            raise  # logged once by the server's request log (logs.RequestIds), or as the job's failure
        if not record.bytes and chunk:
            metrics.FIRST_BYTE.labels(record.kind).observe(time.monotonic() - record.started)
        record.bytes += len(chunk)
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            finally:
                if self._streaming:
                    metrics.ACTIVE_STREAMS.labels(self._record.kind).dec()
                await write_log(self._log_engine, self._record, self._outcome, self._error)


def grouped(params: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Query parameters as the export log keeps them: each name with its values."""
    found: dict[str, list[str]] = {}
    for name, value in params:
        found.setdefault(name, []).append(value)
    return found


async def write_log(engine: AsyncEngine, record: ExportRecord, outcome: str, error: str | None) -> None:
    """Count the download in the metrics and insert its log row; a failure here is logged, never raised into
    the response."""
    duration = time.monotonic() - record.started
    metrics.count_download(record.kind, record.dataset, record.format, outcome, record.bytes, record.rows, duration)
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
                    duration_seconds=duration,
                    client_address=record.client_address,
                    error=error,
                    kind=record.kind,
                    key_name=record.key_name,
                    resource=record.resource,
                    request_id=record.request_id,
                )
            )
    except Exception:
        log.exception("could not write the export log for %s", record.dataset)
