"""The PostgreSQL fast path: the export's SELECT run inside COPY, so PostgreSQL formats the rows.

Each column is rendered in SQL exactly as the generic path's serializers write it (see formats/),
so the two paths give the same bytes; the tests compare them type by type.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from sqlalchemy import Select, Text, case, cast, func, literal_column, not_
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
    # Measured the cheapest (about 70 ns a value over the plain text); to_json(c) #>> '{}', to_jsonb,
    # to_char, overlay() and translate() all cost PostgreSQL more.
    iso = func.replace(cast(c, Text), _sql(" "), _sql("T")).op("||")(_sql(":00"))
    return case((func.isfinite(c), iso), else_=cast(c, Text))


def _csv_timestamp(c: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.replace(cast(c, Text), _sql(" "), _sql("T"))


def _csv_boolean(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # Constants, not allocated per row: measured a little cheaper than c::text, which also writes true/false.
    return case((c, _sql("true")), (not_(c), _sql("false")))


def _formula_guarded(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # As formats/csv.py's guard: a leading quote on text starting with = + - @ tab or CR.
    starts = func.left(c, 1).in_([_sql(s) for s in FORMULA_STARTS])
    return case((starts, _sql("'").op("||")(c)), else_=c)


# NDJSON: each column renders as its JSON text (never NULL), and the line is joined from these and the keys:
# that costs PostgreSQL about 10% less than row_to_json over a subquery, which forms each row only to take it
# apart again. to_json() writes a value as row_to_json would (timestamptz as ISO 8601 with T and +00:00,
# strings escaped); numbers and booleans skip it, their text already being their JSON.


def _json_number(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # Integers, finite numerics and floats (float8 writes `1e+15`, a JSON number too), true and false.
    return func.coalesce(cast(c, Text), _sql("null"))


def _json_finite(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # NaN and ±Infinity have no JSON form: null, as the generic path writes them.
    return _json_number(func.nullif(func.nullif(func.nullif(c, _sql("NaN")), _sql("Infinity")), _sql("-Infinity")))


def _json_one_line(c: ColumnElement[Any]) -> ColumnElement[Any]:
    # json keeps its input text; its line breaks are insignificant whitespace, and would split the line.
    text = func.replace(func.replace(cast(c, Text), _sql("\r"), _sql(" ")), _sql("\n"), _sql(" "))
    return func.coalesce(text, _sql("null"))


def _json_value(c: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(cast(func.to_json(c), Text), _sql("null"))


def _joined(texts: list[ColumnElement[Any]]) -> ColumnElement[Any]:
    """texts[0] || texts[1] || ..., nested as a balanced tree, so a wide table stays a shallow expression."""
    if len(texts) == 1:
        return texts[0]
    middle = len(texts) // 2
    return _joined(texts[:middle]).op("||")(_joined(texts[middle:]))


# kind → how COPY's SELECT renders it; in CSV, kinds not listed are selected as they are, in NDJSON through
# _json_value.
CSV_RENDER: dict[str, Render] = {
    "boolean": _csv_boolean,
    "timestamptz": _csv_timestamptz,
    "timestamp": _csv_timestamp,
}
JSON_RENDER: dict[str, Render] = {
    "integer": _json_number,
    "boolean": _json_number,
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
    if fmt == "csv":
        guarded = set(guarded_columns(query.columns, "postgresql")) if formula_guard else set()
        columns = [_csv_rendered(query, col, i in guarded).label(col.name) for i, col in enumerate(query.columns)]
    else:
        columns = [_json_object(query).label("json")]
    return query.statement.with_only_columns(*columns, maintain_column_froms=True)


def _csv_rendered(query: ExportQuery, col: Column, guard: bool) -> ColumnElement[Any]:
    if guard:
        return _formula_guarded(query.raw(col.name))
    if col.as_text:
        return cast(query.raw(col.name), Text)
    if col.kind in CSV_RENDER:
        return CSV_RENDER[col.kind](query.raw(col.name))
    return query.raw(col.name)


def _json_object(query: ExportQuery) -> ColumnElement[Any]:
    """The row as one JSON object's text; its keys are written by orjson, as the generic path writes them."""
    if not query.columns:
        return _sql("{}")
    texts = []
    for i, col in enumerate(query.columns):
        texts.append(_sql(("{" if i == 0 else ",") + orjson.dumps(col.name).decode() + ":"))
        texts.append(_json_rendered(query.raw(col.name), col))
    texts.append(_sql("}"))
    return _joined(texts)


def _json_rendered(c: ColumnElement[Any], col: Column) -> ColumnElement[Any]:
    if col.as_text:
        return _json_value(cast(c, Text))
    if col.kind == "decimal" and col.precision is not None:
        # numeric(p, s) holds NaN but never ±Infinity (PostgreSQL 14 refuses them there; older ones have none).
        return _json_number(func.nullif(c, _sql("NaN")))
    return JSON_RENDER.get(col.kind, _json_value)(c)


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
