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

from exporter.compression import iter_gzip
from exporter.models import ExportLogEntry
from exporter.serializers import Serializer

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


async def iter_export(batches: AsyncIterator[Sequence[Any]], serializer: Serializer, *, gzip: bool,
                      record: ExportRecord, log_engine: AsyncEngine) -> AsyncIterator[bytes]:
    """The export's body. However it ends (completed, closed because the client left, or failed), the rows
    are released and one export log row is written before this iterator finishes closing."""
    chunks = iter_encoded(batches, serializer, record)
    if gzip:
        chunks = iter_gzip(chunks)
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
                    rows=record.rows,
                    bytes=record.bytes,
                    duration_seconds=time.monotonic() - record.started,
                    client_address=record.client_address,
                    error=error,
                )
            )
    except Exception:
        log.exception("could not write the export log for %s", record.dataset)
