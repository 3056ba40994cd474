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

from exporter.compression import COMPRESSORS
from exporter.config import Settings
from exporter.datasets import Dataset
from exporter.errors import TooManyRowsForXlsx
from exporter.formats import BOM, MAX_ROWS, CsvOptions, FormatDefaults, Options, Serializer, create_serializer
from exporter.formats.arrow import ArrowStreamSerializer
from exporter.formats.parquet import ParquetSerializer
from exporter.models import ExportLogEntry
from exporter.pgarrow import iter_arrow
from exporter.pgcopy import copy_applies, copy_options, copy_statement, iter_copy
from exporter.queries import ExportQuery
from exporter.rows import count_rows, iter_rows

log = logging.getLogger(__name__)


@dataclass
class ExportRecord:
    """What the export log keeps of one export; counters grow while it streams."""

    dataset: str
    format: str
    parameters: dict[str, list[str]]
    client_address: str | None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    bytes: int = 0
    path: str = "generic"

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


def open_chunks(dataset: Dataset, query: ExportQuery, options: Options, settings: Settings,
                record: ExportRecord) -> AsyncIterator[bytes]:
    """The export's bytes, uncompressed: from COPY where it applies (PostgreSQL, fast path on, CSV or NDJSON),
    else cursor + serializer."""
    dialect = dataset.engine.dialect.name
    fmt = options.serialization
    csv = options if isinstance(options, CsvOptions) else None
    if (settings.copy_fast_path and dialect == "postgresql" and fmt in ("csv", "ndjson")
            and copy_applies(query, fmt, csv)):
        record.path = "copy"
        statement = copy_statement(query, fmt, formula_guard=csv is not None and csv.formula_guard)
        chunks = iter_copy(dataset.engine, statement, copy_options(fmt, csv), record.set_rows)
        return _iter_prefixed(BOM, chunks) if csv is not None and csv.bom else chunks
    serializer = create_serializer(query.columns, dialect, options)
    if settings.arrow_fast_path and dialect == "postgresql" and isinstance(
            serializer, ParquetSerializer | ArrowStreamSerializer):
        record.path = "adbc"
        return _iter_encoded_arrow(iter_arrow(dataset.engine, query, serializer.schema), serializer, record)
    record.path = "generic"
    batches = iter_rows(dataset.engine, query.statement, settings.batch_rows)
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


async def iter_export(chunks: AsyncIterator[bytes], *, compression: str | None, record: ExportRecord,
                      log_engine: AsyncEngine) -> AsyncIterator[bytes]:
    """The export's body, compressed with `compression` ("gzip", "zstd" or None). However it ends (completed,
    closed because the client left, or failed), the rows are released and one export log row is written before
    this iterator finishes closing."""
    if compression is not None:
        chunks = COMPRESSORS[compression](chunks)
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
        if record.bytes:
            log.error("export of %s aborted after %d bytes: %s", record.dataset, record.bytes, error)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()  # type: ignore[attr-defined]
            await write_log(log_engine, record, outcome, error)


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
                )
            )
    except Exception:
        log.exception("could not write the export log for %s", record.dataset)
