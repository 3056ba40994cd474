"""The PostgreSQL fast path: the export's SELECT run inside COPY, so PostgreSQL formats the rows.

Each column is rendered in SQL exactly as the generic path's serializers write it (see formats/),
so the two paths give the same bytes; the tests compare them type by type.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import Select, Text, case, cast, func, literal_column, not_, select
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from exporter.config import Settings
from exporter.datasets import Catalog, Column
from exporter.db import create_db_engine, database_errors, open_snapshot
from exporter.formats import CsvOptions
from exporter.formats.csv import FORMULA_STARTS, guarded_columns
from exporter.queries import ExportQuery, build_query

CHUNK_BYTES = 64 * 1024  # COPY data arrives in pieces of 8 KiB to ~300 KB; small ones are gathered up to this
QUEUED_PIECES = 16  # bounded buffering between COPY and the client (up to ~5 MB): a slow client pauses COPY
FLUSH_SECONDS = 0.05  # a chunk waits at most this long to fill up, so a slowly producing query still streams

Render = Callable[[ColumnElement[Any]], ColumnElement[Any]]


def _sql(text: str) -> ColumnElement[Any]:
    """A constant written into the SQL, not bound: COPY's SELECT then needs no parameters of ours."""
    return literal_column("'" + text.replace("'", "''") + "'")


def _csv_timestamptz(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # With TimeZone=UTC the text is `2024-01-01 10:00:00.5+00`; the ISO 8601 form swaps in the T and ":00".
    iso = func.replace(cast(c, Text), _sql(" "), _sql("T")).op("||")(_sql(":00"))
    return case((func.isfinite(c), iso), else_=cast(c, Text))


def _csv_timestamp(c: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.replace(cast(c, Text), _sql(" "), _sql("T"))


def _csv_boolean(c: ColumnElement[Any]) -> ColumnElement[Any]:
    return case((c, _sql("true")), (not_(c), _sql("false")))


def _json_finite(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # NaN and ±Infinity have no JSON form: null, as the generic path writes them.
    return func.nullif(func.nullif(func.nullif(c, _sql("NaN")), _sql("Infinity")), _sql("-Infinity"))


def _formula_guarded(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # As formats/csv.py's guard: a leading quote on text starting with = + - @ tab or CR.
    starts = func.left(c, 1).in_([_sql(s) for s in FORMULA_STARTS])
    return case((starts, _sql("'").op("||")(c)), else_=c)


def _json_one_line(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # json keeps its input text; its line breaks are insignificant whitespace, and would split the line.
    text = func.replace(func.replace(cast(c, Text), _sql("\r"), _sql(" ")), _sql("\n"), _sql(" "))
    return cast(text, JSON)


# kind → how COPY's SELECT renders it; kinds not listed are selected as they are.
CSV_RENDER: dict[str, Render] = {
    "boolean": _csv_boolean,
    "timestamptz": _csv_timestamptz,
    "timestamp": _csv_timestamp,
}
JSON_RENDER: dict[str, Render] = {
    "decimal": _json_finite,
    "float": _json_finite,
    "json": _json_one_line,
}


def copy_applies(query: ExportQuery, fmt: str, options: CsvOptions | None) -> bool:
    """Whether COPY can produce this export byte for byte as the generic path does."""
    if fmt == "ndjson" or options is None:
        return True
    if len(options.delimiter.encode()) != 1:
        return False  # COPY takes only a single-byte delimiter
    # In a one-column export COPY writes an empty string (or a NULL) as a blank line, which CSV readers
    # skip; the generic path writes `""`.
    return len(query.columns) > 1


def copy_statement(query: ExportQuery, fmt: str, *, formula_guard: bool = False) -> Select[Any]:
    """The SELECT whose COPY output is the export: CSV rows, or one JSON object per row."""
    render = CSV_RENDER if fmt == "csv" else JSON_RENDER
    guarded = set(guarded_columns(query.columns, "postgresql")) if formula_guard else set()
    rendered = query.statement.with_only_columns(
        *(_rendered(query, col, render, i in guarded) for i, col in enumerate(query.columns)),
        maintain_column_froms=True,
    )
    if fmt == "csv":
        return rendered
    row = rendered.subquery("export_row")
    return select(cast(func.row_to_json(literal_column(row.name)), Text)).select_from(row)


def _rendered(query: ExportQuery, col: Column, render: dict[str, Render], guard: bool) -> ColumnElement[Any]:
    if guard:
        return _formula_guarded(query.raw(col.name)).label(col.name)
    if col.as_text:
        return cast(query.raw(col.name), Text).label(col.name)
    if col.kind in render:
        return render[col.kind](query.raw(col.name)).label(col.name)
    return query.raw(col.name).label(col.name)


def copy_options(fmt: str, options: CsvOptions | None) -> dict[str, Any]:
    if fmt == "csv" and options is not None:
        return {"format": "csv", "header": options.header, "delimiter": options.delimiter, "null": options.null}
    # One JSON text per row: CSV format with quote and delimiter characters that JSON text never holds
    # unescaped, so no value is quoted and backslashes pass through (text format would double them).
    return {"format": "csv", "quote": "\x01", "delimiter": "\x02"}


async def iter_copy(engine: AsyncEngine, statement: Select[Any], options: dict[str, Any],
                    on_rows: Callable[[int], None], idle_seconds: float | None = None) -> AsyncIterator[bytes]:
    """Yield COPY's output in chunks of about CHUNK_BYTES, inside the export's read-only snapshot.

    COPY runs in a task that feeds a bounded queue, so a slow client slows COPY down. Closing this
    iterator cancels COPY on the server and returns the connection. A failure mid-COPY is raised here.
    `on_rows` gets the number of lines sent so far, then COPY's own row count when it completes. See open_snapshot
    for `idle_seconds`.
    """
    compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    args = [compiled.params[name] for name in compiled.positiontup or ()]
    with database_errors("export"):
        async for chunk in _iter_copy(engine, compiled.string, args, options, on_rows, idle_seconds):
            yield chunk


async def _iter_copy(engine: AsyncEngine, sql: str, args: list[Any], options: dict[str, Any],
                     on_rows: Callable[[int], None], idle_seconds: float | None) -> AsyncIterator[bytes]:
    async with open_snapshot(engine, idle_seconds) as conn:
        # SQLAlchemy's asyncpg adapter sends BEGIN with the first statement, and COPY goes to the driver
        # directly: one statement first puts COPY inside the export's read-only snapshot.
        await conn.exec_driver_sql("SELECT 1")
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUED_PIECES)

        async def run() -> int:
            try:
                status = await driver.copy_from_query(sql, *args, output=queue.put, **options)
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                await queue.put(error)
                raise
            await queue.put(None)
            return int(status.split()[-1])  # "COPY 1000000"

        task = asyncio.create_task(run())
        try:
            lines, wait_seconds = (-1 if options.get("header") else 0), 0.0  # the first chunk goes at once
            while (pieces := await _next_chunk(queue, wait_seconds)) is not None:
                chunk, wait_seconds = b"".join(pieces), FLUSH_SECONDS
                lines += chunk.count(b"\n")
                on_rows(max(lines, 0))  # until COPY reports its count; CSV values may hold line breaks
                yield chunk
            on_rows(await task)
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _next_chunk(queue: asyncio.Queue[bytes | BaseException | None], wait_seconds: float
                      ) -> list[bytes] | None:
    """Pieces adding up to CHUNK_BYTES, or fewer when no more comes within `wait_seconds` or COPY ends;
    None once it has ended. A COPY error is raised."""
    pieces: list[bytes] = []
    size = 0
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while size < CHUNK_BYTES:
        try:
            if pieces and queue.empty():
                async with asyncio.timeout_at(deadline):
                    piece = await queue.get()
            else:
                piece = await queue.get()
        except TimeoutError:
            break
        if isinstance(piece, BaseException):
            raise piece
        if piece is None:
            queue.put_nowait(None)  # seen again by the next call, which then ends
            return pieces or None
        pieces.append(piece)
        size += len(piece)
    return pieces


async def copy_query_text(settings: Settings, dataset: str, fmt: str) -> str:
    """The SELECT the fast path runs inside COPY for an unfiltered export of `dataset` (for benchmarks)."""
    engine = create_db_engine(settings.database_url)
    try:
        found = await Catalog(settings.datasets, {None: engine}).get(dataset)
        query = build_query(found, [], engine.dialect.name)
        return str(copy_statement(query, fmt).compile(dialect=engine.dialect))
    finally:
        await engine.dispose()
