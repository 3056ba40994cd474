"""The export log: one row per download (an export, a file, a relay, a job's result) and per job run, written
however it ends, and counted in the metrics at the same moment."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import anyio
from sqlalchemy import and_, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter import logs, metrics
from exporter.errors import Busy
from exporter.models import ExportLogEntry
from exporter.outages import is_outage
from exporter.redaction import redact_parameters, redact_tokens, redacted

log = logging.getLogger(__name__)

BACKLOG_RETRY_SECONDS = 1.0  # how often a waiting backlog tries the database again
BACKLOG_BATCH_ROWS = 500  # rows written per transaction when the database is back
LAST_FLUSH_SECONDS = 5.0  # at shutdown, how long the backlog may take to write what still waits
# Identify a row again: a write whose connection broke after it was sent may have committed all the same.
IDENTITY = ("started_at", "kind", "dataset", "resource", "request_id", "outcome")


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


async def write_log(engine: AsyncEngine, record: ExportRecord, outcome: str, error: str | None,
                    queued: bool = False) -> None:
    """Count the download in the metrics and insert its log row, its parameters, resource and error redacted (see
    redaction: a token never reaches the export or audit log); a failure here is logged, never raised into the
    response. A row that cannot be written (the database is away) waits in `engine`'s backlog, if it has one
    (see kept_backlog); while rows wait there, new rows queue behind them, so rows reach the table in order.
    With `queued`, the row goes to the backlog at once and its flusher writes it moments later: for an answer
    that sheds load, which must not wait for a busy database."""
    duration = time.monotonic() - record.started
    metrics.count_download(record.kind, record.dataset, record.format, outcome, record.bytes, record.rows, duration)
    values = {
        "started_at": record.started_at,
        "dataset": record.dataset,
        "format": record.format,
        "parameters": redact_parameters(record.parameters),
        "outcome": outcome,
        "path": record.path,
        "rows": record.rows,
        "bytes": record.bytes,
        "duration_seconds": duration,
        "client_address": record.client_address,
        "error": None if error is None else redact_tokens(error),
        "kind": record.kind,
        "key_name": record.key_name,
        "resource": None if record.resource is None else redacted(record.resource),
        "request_id": record.request_id,
    }
    backlog = _BACKLOGS.get(engine)
    if backlog is not None and (queued or backlog.waiting()):
        backlog.add(values)
        return
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(ExportLogEntry).values(**values))
    except Exception as failure:
        if backlog is None:
            log.exception("could not write the export log for %s", record.dataset)
            return
        log.warning("could not write the export log for %s (%s); the row waits in the backlog", record.dataset,
                    str(failure).splitlines()[0] if str(failure) else type(failure).__name__)
        backlog.add(values)


class Backlog:
    """The export log rows that could not be written because the service's database was away, oldest first, at
    most `max_rows` of them: a row past that is dropped (counted in exporter_export_log_backlog_dropped_total)."""

    def __init__(self, engine: AsyncEngine, max_rows: int) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self._rows: deque[dict[str, Any]] = deque()
        self._added = asyncio.Event()
        self._dropping = False

    def waiting(self) -> int:
        return len(self._rows)

    def add(self, values: dict[str, Any]) -> None:
        if len(self._rows) >= self.max_rows:
            metrics.EXPORT_LOG_BACKLOG_DROPPED.inc()
            if not self._dropping:  # once per spell, not once per row
                self._dropping = True
                log.error("the export log backlog is full (%d rows): rows are dropped until the database is "
                          "back", self.max_rows)
            return
        self._rows.append(values)
        metrics.EXPORT_LOG_BACKLOG.inc()
        self._added.set()

    async def wait(self) -> None:
        """Until a row waits."""
        while not self._rows:
            self._added.clear()
            await self._added.wait()

    async def flush(self) -> None:
        """Write the waiting rows, oldest first, in batches; a batch leaves the backlog once committed. Each row
        is written once: a row already in the table (its first write committed though its connection broke) is
        not written again. A row the database refuses while it answers is dropped and logged. Raises while the
        database is away; what was not written keeps waiting."""
        size = BACKLOG_BATCH_ROWS
        while self._rows:
            batch = list(islice(self._rows, size))
            try:
                async with self.engine.begin() as conn:
                    for values in batch:
                        if (await conn.execute(select(_same_row(values)))).scalar_one() is None:
                            await conn.execute(insert(ExportLogEntry).values(**values))
            except Exception as error:
                if is_outage(error):
                    raise
                if size > 1:
                    size = 1  # find the row it refuses
                    continue
                log.exception("the database refused an export log row of the backlog; it is dropped")
                size = BACKLOG_BATCH_ROWS  # and the row goes below, as a written one would
            for _ in batch:
                self._rows.popleft()
            metrics.EXPORT_LOG_BACKLOG.dec(len(batch))
        self._dropping = False


def _same_row(values: dict[str, Any]) -> Any:
    """The id of a row already written with `values`' identity, or NULL."""
    same = and_(*(getattr(ExportLogEntry, name).is_not_distinct_from(values[name]) for name in IDENTITY))
    return select(ExportLogEntry.id).where(same).limit(1).scalar_subquery()


# Each service database's backlog (kept_backlog), found by write_log from the engine its callers already hold.
_BACKLOGS: dict[AsyncEngine, Backlog] = {}


async def flush_backlog(backlog: Backlog) -> None:
    """Run forever: once rows wait, write them; while the database is away, try again every
    BACKLOG_RETRY_SECONDS."""
    failing = False
    while True:
        await backlog.wait()
        try:
            await backlog.flush()
        except Exception as error:
            if not failing:
                failing = True
                log.warning("the export log backlog waits for the database (%d rows): %s", backlog.waiting(),
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
            await asyncio.sleep(BACKLOG_RETRY_SECONDS)
        else:
            if failing:
                failing = False
                log.info("the export log backlog is written")


@asynccontextmanager
async def kept_backlog(engine: AsyncEngine, max_rows: int) -> AsyncIterator[Backlog]:
    """`engine`'s backlog until the block ends; run flush_backlog(backlog) meanwhile (the app's supervisor does).
    At the end what still waits gets one last try of up to LAST_FLUSH_SECONDS, and is logged as lost if the
    database is still away."""
    backlog = _BACKLOGS[engine] = Backlog(engine, max_rows)
    try:
        yield backlog
    finally:
        del _BACKLOGS[engine]
        with anyio.CancelScope(shield=True), anyio.move_on_after(LAST_FLUSH_SECONDS), suppress(Exception):
            await backlog.flush()
        if lost := backlog.waiting():
            log.error("lost %d export log rows: the database was away as the service stopped", lost)
            metrics.EXPORT_LOG_BACKLOG.dec(lost)
