"""CSV: RFC 4180 with LF line ends, its query parameters, and the formula guard."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from exporter.errors import InvalidParameter
from exporter.formats.values import ColumnConvert, converted, each, kind_of, text_column
from exporter.sources.datasets import Column

_NEVER = object()  # equal to no value
BOM = "\ufeff".encode()
# A cell starting with one of these is a formula to spreadsheet programs (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

CSV_PARAMETERS = frozenset({"header", "delimiter", "null", "bom", "formula_guard"})  # the CSV options


@dataclass(frozen=True)
class CsvOptions:
    serialization: ClassVar[str] = "csv"
    header: bool = True
    delimiter: str = ","
    null: str = ""
    bom: bool = False
    formula_guard: bool = False


def csv_options(params: Mapping[str, str], *, formula_guard: bool = False) -> CsvOptions:
    """The CSV-only query parameters; errors name the parameter. `formula_guard` is the dataset's default."""
    header = flag(params, "header", default=True)
    bom = flag(params, "bom", default=False)
    guard = flag(params, "formula_guard", default=formula_guard)
    delimiter = params.get("delimiter", ",")
    if len(delimiter) != 1 or delimiter in "\"\r\n\x00":
        raise InvalidParameter(
            "delimiter must be one character other than a double quote or a line break (tab is %09)",
            parameter="delimiter",
        )
    null = params.get("null", "")
    if any(c in null for c in (delimiter, '"', "\r", "\n")):
        raise InvalidParameter("null text may not contain the delimiter, quotes or line breaks", parameter="null")
    return CsvOptions(header=header, delimiter=delimiter, null=null, bom=bom, formula_guard=guard)


def reject_csv_options(params: Mapping[str, str]) -> None:
    for name in CSV_PARAMETERS & params.keys():
        raise InvalidParameter(f"{name} applies only to CSV exports", parameter=name)


def flag(params: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise InvalidParameter(f"{name} must be true or false, got {raw!r}", parameter=name)
    return raw == "true"


def guarded_columns(columns: Sequence[Column], dialect: str) -> list[int]:
    """The columns the formula guard applies to: text, and on SQLite untyped (query) columns, whose text values
    it guards. Numbers, dates, JSON, and PostgreSQL's text of other types (`-1 mons`) are never changed."""
    return [i for i, c in enumerate(columns) if c.kind == "text" or (dialect == "sqlite" and c.kind == "other")]


def _guard(values: Sequence[Any]) -> list[Any]:
    return [f"'{v}" if v.__class__ is str and v.startswith(FORMULA_STARTS) else v for v in values]


def _guard_first(convert: ColumnConvert | None) -> ColumnConvert:
    """The guard on the database's values, before they become text: an integer -5 in an untyped column stays -5."""
    if convert is None:
        return _guard
    return lambda values: convert(_guard(values))


def _find(values: Sequence[Any], *targets: object) -> list[tuple[int, Any]]:
    """(index, value) of the values equal to a target; cheap when none is, the usual case."""
    if not any(target in values for target in targets):
        return []
    return [(j, value) for j, value in enumerate(values) if value in targets]


class CsvSerializer:
    """RFC 4180 quoting with LF line ends; a value equal to the NULL text (by default "") is quoted,
    so an empty string ("") and NULL (nothing) stay apart, as in PostgreSQL's COPY."""

    media_type = "text/csv; charset=utf-8"

    def __init__(self, columns: Sequence[Column], dialect: str, options: CsvOptions) -> None:
        self._columns = [c.name for c in columns]
        self._options = options
        # Columns whose values are text once converted: only they can equal the NULL text or hold a CR.
        self._texts = [i for i, c in enumerate(columns) if kind_of(c) in ("text", "json", "other") or options.null]
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, delimiter=options.delimiter, lineterminator="\n")
        # Values csv.writer would not quote but must be: the NULL text, and `\.` alone on a line (COPY's
        # end-of-data marker), which only a one-column row can produce.
        self._special = (options.null, "\\." if len(columns) == 1 else _NEVER)
        # A NULL text other than "" must also be found among integers, so then every value becomes text.
        converters = {
            i: convert
            for i, col in enumerate(columns)
            if (convert := text_column(col, dialect) or (each(str, col) if options.null else None))
        }
        if options.formula_guard:
            converters.update({i: _guard_first(converters.get(i)) for i in guarded_columns(columns, dialect)})
        self._converters = sorted(converters.items())

    def header(self) -> bytes:
        head = BOM if self._options.bom else b""
        if not self._options.header:
            return head
        return head + self._encode_columns([[name] for name in self._columns])

    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes:
        if not batch:
            return b""
        return self._encode_columns(converted(batch, self._converters))

    def footer(self) -> bytes:
        return b""

    def _encode_columns(self, columns: list[Sequence[Any]]) -> bytes:
        null, end_marker = self._special
        special = sorted({j for i in self._texts for j, value in _find(columns[i], null, end_marker)})
        rows = list(zip(*columns, strict=True))
        text = self._write(rows, special)
        if "\r" in text:
            # Python 3.11's csv quotes only the line terminator's characters (LF), not a lone CR.
            with_cr = (j for i in self._texts for j, value in enumerate(columns[i]) if value and "\r" in value)
            special = sorted({*special, *with_cr})
            text = self._write(rows, special)
        return text.encode()

    def _write(self, rows: Sequence[Sequence[Any]], special: list[int]) -> str:
        null = self._options.null
        plain = [[null if v is None else v for v in row] for row in rows] if null else rows
        start = 0
        for i in special:
            self._writer.writerows(plain[start:i])
            self._buffer.write(self._encode_by_hand(rows[i]))
            start = i + 1
        self._writer.writerows(plain[start:])
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text

    def _encode_by_hand(self, row: Sequence[Any]) -> str:
        """One row, quoting exactly as csv.writer does, plus the values csv.writer cannot be told to quote."""
        delimiter = self._options.delimiter
        fields = []
        for value in row:
            if value is None:
                fields.append(self._options.null)
                continue
            text = str(value)
            if text in self._special or any(c in text for c in (delimiter, '"', "\r", "\n")):
                text = '"' + text.replace('"', '""') + '"'
            fields.append(text)
        if len(fields) == 1 and fields[0] == "":
            fields[0] = '""'  # as csv.writer: a lone empty field would read as a blank line
        return delimiter.join(fields) + "\n"
