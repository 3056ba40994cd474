"""The PostgreSQL fast path: the export's SELECT run inside COPY, so PostgreSQL formats the rows.

Each column is rendered in SQL exactly as the generic path's serializers write it (see formats/),
so the two paths give the same bytes; the tests compare them type by type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, Text, case, cast, func, literal_column, not_, select
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.sql.elements import ColumnElement

from exporter.config import Settings
from exporter.datasets import Catalog, Column
from exporter.db import create_db_engine
from exporter.formats import CsvOptions
from exporter.formats.csv import FORMULA_STARTS, guarded_columns
from exporter.queries import ExportQuery, build_query

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


async def copy_query_text(settings: Settings, dataset: str, fmt: str) -> str:
    """The SELECT the fast path runs inside COPY for an unfiltered export of `dataset` (for benchmarks)."""
    engine = create_db_engine(settings.database_url)
    try:
        found = await Catalog(settings.datasets, {None: engine}).get(dataset)
        query = build_query(found, [], engine.dialect.name)
        return str(copy_statement(query, fmt).compile(dialect=engine.dialect))
    finally:
        await engine.dispose()
