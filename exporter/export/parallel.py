"""COPY's output as the export's body: one COPY per part of the export (see pgparts), each on its own
connection, all in one snapshot, their output sent in the parts' order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from exporter import metrics
from exporter.access.admission import ExportSlots
from exporter.errors import RowLimitExceeded
from exporter.export.copy import copy_statement
from exporter.export.parts import split_query
from exporter.export.queries import ExportQuery
from exporter.sources.datasets import Dataset
from exporter.sources.engines import database_errors, driver_connection, open_snapshot, positional_sql

CHUNK_BYTES = 256 * 1024  # what one chunk of the body gathers (COPY hands over pieces of 8 KiB to ~300 KB)
MEMORY_BYTES = 4 * 1024 * 1024  # the part being sent buffers this much; then its backend waits on the socket
FLUSH_SECONDS = 0.05  # a chunk waits at most this long to fill up, so a slowly producing query still streams


class _Output:
    """One part's COPY output until it is sent. The first part's is held in memory, and its COPY waits while
    MEMORY_BYTES are unsent: a slow client holds its backend back. A later part is ahead of what is being sent,
    so its output goes to an unnamed temporary file (gone when closed, or when the process ends) and its backend
    runs at full speed, then ends and frees its connection."""

    def __init__(self, changed: asyncio.Event, spooled: bool) -> None:
        self._changed = changed
        self._pieces: deque[bytes] = deque()
        self._drained = asyncio.Event()
        self._file = tempfile.TemporaryFile(buffering=0) if spooled else None
        self._written = 0
        self._read = 0
        self.rows: int | None = None  # COPY's own count, once it has ended

    @property
    def unsent(self) -> int:
        return self._written - self._read

    async def write(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
        else:
            self._pieces.append(data)
        self._written += len(data)
        self._changed.set()
        while self._file is None and self.unsent > MEMORY_BYTES:
            self._drained.clear()
            await self._drained.wait()

    def finish(self, rows: int) -> None:
        self.rows = rows
        self._changed.set()

    def take(self, most: int) -> bytes:
        """Up to `most` unsent bytes (at least one piece from memory, whatever its size)."""
        if self._file is not None:
            data = os.pread(self._file.fileno(), min(most, self.unsent), self._read)
        else:
            pieces = [self._pieces.popleft()]
            size = len(pieces[0])
            while self._pieces and size + len(self._pieces[0]) <= most:
                pieces.append(self._pieces.popleft())
                size += len(pieces[-1])
            data = b"".join(pieces)
            self._drained.set()
        self._read += len(data)
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def iter_copy(dataset: Dataset, query: ExportQuery, fmt: str, options: dict[str, Any], *,
                    formula_guard: bool, parts: int, min_rows: int, on_rows: Callable[[int], None],
                    idle_seconds: float | None = None) -> AsyncIterator[bytes]:
    """Yield the export's COPY output (`fmt`, `formula_guard` and `options` as for copy_statement and
    copy_options) in chunks of up to CHUNK_BYTES. With `parts` > 1 the export may be split (see split_query for
    `min_rows`):
    each part beyond the first needs one of the database's spare export slots (see ExportSlots.take_spare).

    The first part runs on the connection that exports its snapshot (REPEATABLE READ, READ ONLY), which the others
    import, so every part reads the tables as of one moment. Closing this iterator
    cancels every COPY on the server, returns the connections and slots, and removes the temporary files; a
    failure of any part is raised here, and ends the others the same way. `on_rows` gets the number of lines
    sent so far, then the COPYs' own row count when all have ended. See open_snapshot for `idle_seconds`.

    With the key's row cap (query.row_cap), COPY reads at most that many rows, since a CSV row's line breaks
    keep its output from being cut at a row; when it reads them all, a query in the same snapshot asks whether
    one more exists, and if so RowLimitExceeded is raised instead of the last chunk, which is held back until
    then (so an export whose every chunk is held is refused before its first byte).
    """
    with database_errors("export"):
        async for chunk in _iter_copy(dataset, query, fmt, options, formula_guard, parts, min_rows, on_rows,
                                      idle_seconds):
            yield chunk


async def _iter_copy(dataset: Dataset, query: ExportQuery, fmt: str, options: dict[str, Any], formula_guard: bool,
                     parts: int, min_rows: int, on_rows: Callable[[int], None], idle_seconds: float | None
                     ) -> AsyncIterator[bytes]:
    engine, slots = dataset.engine, dataset.slots
    cap = query.row_cap
    capped = query
    if cap is not None:
        capped = replace(query, statement=query.statement.limit(cap), limit=cap, row_cap=None)
    changed = asyncio.Event()
    failures: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []
    async with AsyncExitStack() as stack, open_snapshot(engine, idle_seconds) as leader:
        # SQLAlchemy's asyncpg adapter sends BEGIN with the first statement, and COPY goes to the driver
        # directly: one statement first puts COPY inside the export's read-only snapshot.
        await leader.exec_driver_sql("SELECT 1")
        spare = parts - 1 if slots is None else await slots.take_spare(parts - 1)
        try:
            queries = await split_query(leader, dataset, capped, spare + 1, min_rows) if spare else [capped]
        except BaseException:
            _give_back(slots, spare)
            raise
        _give_back(slots, spare + 1 - len(queries))
        stack.callback(_give_back, slots, len(queries) - 1)  # when every part's connection is back
        metrics.COPY_PARTS.observe(len(queries))
        outputs = [_Output(changed, spooled=index > 0) for index in range(len(queries))]
        for output in outputs:
            stack.callback(output.close)
        snapshot = None
        if len(queries) > 1:
            snapshot = (await leader.exec_driver_sql("SELECT pg_export_snapshot()")).scalar()

        async def run(index: int) -> None:
            try:
                if index == 0:
                    await _copy(leader, queries[0], fmt, options, formula_guard, outputs[0], header=True)
                    return
                async with open_snapshot(engine, idle_seconds) as conn:
                    await conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    await _copy(conn, queries[index], fmt, options, formula_guard, outputs[index], header=False)
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                failures.append(error)
                changed.set()

        try:
            tasks.append(asyncio.create_task(run(0)))
            # The others start once the first part has rows to send (or FLUSH_SECONDS passed), so that they do not
            # compete for the cores with its first rows; they import the snapshot then, its transaction staying
            # open until the last part has been sent.
            if len(queries) > 1:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_SECONDS):
                        while not (outputs[0].unsent or outputs[0].rows is not None or failures):
                            changed.clear()
                            await changed.wait()
                tasks += [asyncio.create_task(run(index)) for index in range(1, len(queries))]
            lines = -1 if options.get("header") else 0
            send_now = True  # the first chunk goes at once, as does one that waited FLUSH_SECONDS
            held: bytes | None = None  # with a row cap, the last chunk taken, sent once another one is
            for output in outputs:
                while True:
                    if failures:
                        raise failures[0]
                    if output.unsent and (send_now or output.unsent >= CHUNK_BYTES or output.rows is not None):
                        chunk = output.take(CHUNK_BYTES)
                        send_now = False
                        lines += chunk.count(b"\n")
                        on_rows(max(lines, 0))  # until COPY reports its count; CSV values may hold line breaks
                        if cap is None:
                            yield chunk
                            continue
                        if held is not None:
                            yield held
                        held = chunk
                    elif output.rows is not None:
                        break
                    else:
                        changed.clear()
                        try:
                            async with asyncio.timeout(FLUSH_SECONDS if output.unsent else None):
                                await changed.wait()
                        except TimeoutError:
                            send_now = True
            rows = sum(output.rows or 0 for output in outputs)
            on_rows(rows)
            if cap is not None and rows >= cap and await _has_more(leader, query, cap):
                raise RowLimitExceeded(f"this export has more than {cap} rows, the most this key may read; "
                                       "narrow it with filters or limit=")
            if held is not None:
                yield held
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _has_more(conn: AsyncConnection, query: ExportQuery, cap: int) -> bool:
    """Whether the export has a row after its first `cap`, read in `conn`'s snapshot (the COPYs' own)."""
    return (await conn.execute(query.statement.offset(cap).limit(1))).first() is not None


def _give_back(slots: ExportSlots | None, count: int) -> None:
    if slots is not None:
        slots.give_back(count)


async def _copy(conn: AsyncConnection, part: ExportQuery, fmt: str, options: dict[str, Any], formula_guard: bool,
                output: _Output, *, header: bool) -> None:
    sql, args = positional_sql(copy_statement(part, fmt, formula_guard=formula_guard), conn.dialect)
    if "header" in options:
        options = {**options, "header": options["header"] and header}
    driver = await driver_connection(conn)
    status = await driver.copy_from_query(sql, *args, output=output.write, **options)
    output.finish(int(status.split()[-1]))  # "COPY 1000000"
