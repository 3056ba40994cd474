"""The export's bytes: the read path chosen once per export (PostgreSQL COPY, possibly in parallel parts; ADBC for
Parquet and Arrow; else the cursor and a serializer), started once an export slot is held, then the key's row
limit and the file's compression."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import nullcontext
from typing import Any

import anyio
import pyarrow as pa

from exporter.access.admission import ExportSlots
from exporter.config import Settings
from exporter.errors import RowLimitExceeded, StatementTimeout, TooManyRowsForXlsx
from exporter.eventloop import off_loop
from exporter.export.adbc import iter_arrow
from exporter.export.compression import COMPRESSORS
from exporter.export.copy import copy_applies, copy_options
from exporter.export.cursor import count_rows, iter_rows
from exporter.export.parallel import iter_copy
from exporter.export.queries import ExportQuery
from exporter.exportlog import ExportRecord
from exporter.formats import BOM, MAX_ROWS, CsvOptions, Options, Serializer, create_serializer
from exporter.formats.arrow import ArrowStreamSerializer
from exporter.formats.parquet import ParquetSerializer
from exporter.sources.datasets import Dataset

# An export's transaction waits for its client at most the send timeout between two statements; PostgreSQL ends
# one idle this much longer (idle_in_transaction_session_timeout), a backstop should the service itself stall.
IDLE_MARGIN_SECONDS = 30.0


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
            yield pending + await off_loop(serializer.encode_arrow, batch)
            pending = b""
        yield pending + await off_loop(serializer.footer)
    finally:
        await batches.aclose()  # type: ignore[attr-defined]


async def _iter_prefixed(prefix: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield prefix + chunk
            prefix = b""
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def iter_encoded(batches: AsyncIterator[Sequence[Any]], serializer: Serializer, record: ExportRecord
                       ) -> AsyncIterator[bytes]:
    """One chunk per batch; the header travels with the first batch, so the first chunk proves the query runs.
    Batches are encoded in a worker thread (off_loop), so a Parquet row group or an XLSX batch never holds up
    the event loop."""
    pending = serializer.header()
    try:
        async for batch in batches:
            record.rows += len(batch)
            yield pending + await off_loop(serializer.encode, batch)
            pending = b""
        yield pending + await off_loop(serializer.footer)
    finally:
        try:
            await batches.aclose()  # type: ignore[attr-defined]
        finally:
            close = getattr(serializer, "close", None)  # a serializer that holds open state (XLSX's zip)
            if close is not None:
                close()


def iter_export(chunks: AsyncIterator[bytes], *, compression: str | None, record: ExportRecord,
                max_rows: int | None = None) -> AsyncIterator[bytes]:
    """The export's body: compressed with `compression` ("gzip", "zstd" or None), and aborted with
    RowLimitExceeded once it passes `max_rows` (counted in `record`)."""
    if max_rows is not None:
        chunks = _iter_row_limited(chunks, record, max_rows)
    if compression is not None:
        chunks = COMPRESSORS[compression](chunks)
    return chunks


async def _iter_row_limited(chunks: AsyncIterator[bytes], record: ExportRecord, max_rows: int
                            ) -> AsyncIterator[bytes]:
    """Raise RowLimitExceeded instead of a chunk that takes the export past `max_rows` (the query asks for one row
    more, so the database stops there too). COPY reads at most `max_rows` rows and raises RowLimitExceeded itself
    (see iter_copy), since its line ends are not rows (a value may hold line breaks); its final count is checked
    here once more."""
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


async def iter_limited(chunks: AsyncIterator[bytes], slots: ExportSlots | None, *, wait_for_slot: bool,
                       first_chunk_seconds: float | None) -> AsyncIterator[bytes]:
    """`chunks`, started only once an export slot is held; the slot is kept until this iterator ends or is closed.

    Raises Busy when no slot is free and `wait_for_slot` is false; `chunks` has not started then, so it holds
    nothing. Raises StatementTimeout when the first chunk takes longer than `first_chunk_seconds` (the wait for
    the slot not counted): `chunks` is cancelled, which cancels its query. Only the first chunk is timed, because a
    COPY export is one statement however long it streams. Once started, `chunks` is closed however this ends,
    before the slot is given back.
    """
    async with slots.hold(wait_for_slot) if slots is not None else nullcontext():
        try:
            with anyio.move_on_after(first_chunk_seconds) as timer:
                first = await anext(chunks, None)
            if timer.cancelled_caught:
                raise StatementTimeout(f"the query sent no row within {first_chunk_seconds:g} s and was cancelled")
            if first is None:
                return
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]
