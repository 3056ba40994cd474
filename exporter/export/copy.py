"""The PostgreSQL fast path: the export's SELECT run inside COPY, so PostgreSQL formats the rows.

Each column is rendered in SQL exactly as the generic path's serializers write it (see formats/),
so the two paths give the same bytes; the tests compare them type by type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Select, Text, case, cast, func, literal_column, not_
from sqlalchemy.sql.elements import ColumnElement

from exporter.config import Settings
from exporter.export.queries import ExportQuery, build_query
from exporter.formats import CsvOptions
from exporter.formats.csv import FORMULA_STARTS, guarded_columns
from exporter.sources.datasets import Catalog, Column
from exporter.sources.engines import create_db_engine

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


async def copy_query_text(settings: Settings, dataset: str, fmt: str) -> str:
    """The SELECT the fast path runs inside COPY for an unfiltered export of `dataset` (for benchmarks)."""
    engine = create_db_engine(settings.database_url)
    try:
        found = await Catalog(settings.datasets, {None: engine}).get(dataset)
        query = build_query(found, [], engine.dialect.name)
        return str(copy_statement(query, fmt).compile(dialect=engine.dialect))
    finally:
        await engine.dispose()
