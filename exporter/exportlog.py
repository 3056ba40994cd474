"""The export log: one row per download (an export, a file, a relay, a job's result) and per job run, written
however it ends, and counted in the metrics at the same moment."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter import logs, metrics
from exporter.errors import Busy
from exporter.models import ExportLogEntry
from exporter.redaction import redact_parameters, redact_tokens, redacted

log = logging.getLogger(__name__)


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


def iter_recorded(chunks: AsyncIterator[bytes], record: ExportRecord, log_engine: AsyncEngine | None
                  ) -> AsyncIterator[bytes]:
    """`chunks`, counted. However it ends (completed, closed because the client left, or failed), `chunks` is
    closed and one export log row is written (and the download counted in the metrics) when this closes, even
    if it was never started: a class, since aclose() on an async generator that never started skips its
    `finally`, and a relay's upstream connection is open from the start.

    With no `log_engine`, `chunks` is only counted: the caller writes the row when the download really ends (see
    recording)."""
    return _Recorded(chunks, record, log_engine)


@asynccontextmanager
async def recording(record: ExportRecord, log_engine: AsyncEngine) -> AsyncIterator[None]:
    """Write `record`'s row when the block ends: `completed` when it returns, `failed` with the error when it
    raises, `aborted` when it is cancelled. For a job's run, which ends when its result file is in place, not
    when its last chunk is made: a full disk after the last chunk fails the run."""
    try:
        yield
    except Exception as error:
        with anyio.CancelScope(shield=True):
            await write_log(log_engine, record, "failed", f"{type(error).__name__}: {error}")
        raise
    except BaseException:
        with anyio.CancelScope(shield=True):
            await write_log(log_engine, record, "aborted", None)
        raise
    await write_log(log_engine, record, "completed", None)


class _Recorded:
    def __init__(self, chunks: AsyncIterator[bytes], record: ExportRecord, log_engine: AsyncEngine | None
                 ) -> None:
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
                if self._log_engine is not None:
                    await write_log(self._log_engine, self._record, self._outcome, self._error)


def grouped(params: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Query parameters as the export log keeps them: each name with its values."""
    found: dict[str, list[str]] = {}
    for name, value in params:
        found.setdefault(name, []).append(value)
    return found


async def write_log(engine: AsyncEngine, record: ExportRecord, outcome: str, error: str | None) -> None:
    """Count the download in the metrics and insert its log row, its parameters, resource and error redacted (see
    redaction: a token never reaches the export or audit log); a failure here is logged, never raised into the
    response."""
    duration = time.monotonic() - record.started
    metrics.count_download(record.kind, record.dataset, record.format, outcome, record.bytes, record.rows, duration)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(ExportLogEntry).values(
                    started_at=record.started_at,
                    dataset=record.dataset,
                    format=record.format,
                    parameters=redact_parameters(record.parameters),
                    outcome=outcome,
                    path=record.path,
                    rows=record.rows,
                    bytes=record.bytes,
                    duration_seconds=duration,
                    client_address=record.client_address,
                    error=None if error is None else redact_tokens(error),
                    kind=record.kind,
                    key_name=record.key_name,
                    resource=None if record.resource is None else redacted(record.resource),
                    request_id=record.request_id,
                )
            )
    except Exception:
        log.exception("could not write the export log for %s", record.dataset)
