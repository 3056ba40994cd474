"""Row serializers: header / encode(batch) / footer → bytes, and how each kind of value is written.

Pure: no I/O. Values render the same whatever the database: NULL is an empty CSV field (or the `null=`
text) and JSON null; numerics keep every digit and never pass through float; timestamps with time zone
are ISO 8601 in UTC with `+00:00`; booleans are `true` / `false`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from typing import Any, Protocol

import orjson

from exporter.datasets import Column
from exporter.errors import InvalidParameter, UnknownFormat
from exporter.queries import CSV_PARAMETERS

Convert = Callable[[Any], Any]
_NEVER = object()  # equal to no value
INFINITY = float("inf")
BOM = "\ufeff".encode()


def _decimal_text(value: Decimal) -> str:
    return format(value, "f") if value.is_finite() else "NaN" if value.is_nan() else _infinity(value)


def _float_text(value: float) -> str:
    """PostgreSQL's float8 output (shortest round-trip digits; exponent form below 1e-4 and from 1e15)."""
    if value != value:
        return "NaN"
    if value in (INFINITY, -INFINITY):
        return _infinity(value)
    number = Decimal(repr(value))
    if not number:
        return "-0" if str(number).startswith("-") else "0"
    sign, digits, exponent = number.normalize().as_tuple()
    assert isinstance(exponent, int)
    power = exponent + len(digits) - 1
    if -4 <= power < 15:
        return format(number.normalize(), "f")
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"


def _infinity(value: Decimal | float) -> str:
    return "Infinity" if value > 0 else "-Infinity"


def _timestamp_text(value: datetime) -> str:
    if value.tzinfo is None:
        if value in (datetime.max, datetime.min):
            return "infinity" if value == datetime.max else "-infinity"  # how asyncpg hands back ±infinity
        text = value.isoformat()
        return text if not value.microsecond else text.rstrip("0")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if not value.microsecond:
        return value.isoformat()  # ends in +00:00
    return value.replace(tzinfo=None).isoformat().rstrip("0") + "+00:00"


def _time_text(value: time) -> str:
    text = value.isoformat()
    return text.rstrip("0") if value.microsecond else text


def _date_text(value: date) -> str:
    return value.isoformat()


def _bytes_text(value: bytes) -> str:
    return "\\x" + value.hex()  # PostgreSQL's hex format for bytea


def _interval_text(value: timedelta) -> str:
    return str(value)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _bool_text(value: Any) -> str:
    return "true" if value else "false"


def _any_text(value: Any) -> str:
    if isinstance(value, bool):
        return _bool_text(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, bytes):
        return _bytes_text(value)
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, datetime):
        return _timestamp_text(value)
    if isinstance(value, date):
        return _date_text(value)
    if isinstance(value, time):
        return _time_text(value)
    return str(value)


# kind → its canonical value as text; None where str() of the database's value is already right.
_TEXT: dict[str, Convert | None] = {
    "integer": None,
    "text": None,
    "decimal": _decimal_text,
    "float": _float_text,
    "boolean": _bool_text,
    "date": _date_text,
    "time": _time_text,
    "timestamp": _timestamp_text,
    "timestamptz": _timestamp_text,
    "interval": _interval_text,
    "uuid": str,
    "json": _json_text,
    "bytes": _bytes_text,
    "other": _any_text,
}


def _decimal_json(value: Decimal) -> Any:
    return orjson.Fragment(format(value, "f")) if value.is_finite() else None


def _float_json(value: float) -> Any:
    return orjson.Fragment(_float_text(value)) if math.isfinite(value) else None


def _json_fragment(value: Any) -> Any:
    """The database's JSON text, embedded as it is. Line breaks in JSON text can only be insignificant
    whitespace (strings escape them), so they become spaces to keep one row per line."""
    if not isinstance(value, str):
        return value
    if "\n" in value or "\r" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    return orjson.Fragment(value)


def _any_json(value: Any) -> Any:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _float_json(value)
    if isinstance(value, Decimal):
        return _decimal_json(value)
    return _any_text(value)


# kind → a value orjson writes as wanted; None where the database's value already is one.
_JSON: dict[str, Convert | None] = {
    "integer": None,
    "text": None,
    "float": _float_json,  # NaN and ±Infinity are not JSON: null
    "boolean": bool,
    "decimal": _decimal_json,
    "json": _json_fragment,
    "other": _any_json,
}


def _sqlite_decimal(scale: int | None) -> Convert:
    """SQLite hands back NUMERIC(p, s) as float or int; repr() is exact up to 15 digits, then the scale is set."""
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None
    wide = Context(prec=1000)  # quantize must not overflow the default 28 digits

    def convert(value: Any) -> Decimal:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if quantum is None or not number.is_finite():
            return number
        return number.quantize(quantum, context=wide)

    return convert


def _sqlite_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def _sqlite_date(value: Any) -> Any:
    return date.fromisoformat(value[:10]) if isinstance(value, str) else value


def _sqlite_decimal_text(scale: int | None) -> Convert:
    """NUMERIC(p, s) from SQLite's float straight to text: a double holding at most 15 significant digits
    formats back to exactly those digits; anything larger goes through Decimal."""
    exact = _compose(_sqlite_decimal(scale), _decimal_text)
    assert exact is not None
    if scale is None:
        return exact

    def convert(value: Any) -> str:
        if isinstance(value, int | float) and -1e15 < value < 1e15:
            return f"{value:.{scale}f}"
        return str(exact(value))

    return convert


def _sqlite_timestamp_text(value: Any) -> str:
    """SQLAlchemy's SQLite DATETIME text (`2024-01-01 10:00:00.500000`, UTC) straight to the ISO form."""
    if isinstance(value, str) and len(value) == 26 and value[10] == " " and value[19] == ".":
        fraction = value[19:].rstrip("0")
        return f"{value[:10]}T{value[11:19]}{fraction if len(fraction) > 1 else ''}+00:00"
    return _timestamp_text(_sqlite_timestamp(value))


def _sqlite_decimals_text(scale: int | None) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A NOT NULL column of SQLite NUMERIC(p, s) floats formatted by one %-operation; see _sqlite_decimal_text."""
    one = _sqlite_decimal_text(scale)

    def convert(values: Sequence[Any]) -> Sequence[Any]:
        if scale is None or not values or None in values or not -1e15 < min(values) <= max(values) < 1e15:
            return [None if v is None else one(v) for v in values]
        return (f"%.{scale}f\x00" * len(values) % tuple(values))[:-1].split("\x00")

    return convert


ColumnConvert = Callable[[Sequence[Any]], Sequence[Any]]
_BOOL_TEXT = {True: "true", False: "false"}  # also SQLite's 1 and 0, which equal True and False
_BOOL_JSON = {True: True, False: False}


def _timestamps_text(values: Sequence[Any]) -> list[Any]:
    """A column of timestamps as text: orjson writes a UTC datetime as we do (`…T10:00:00+00:00`) in C, except
    that it keeps six fraction digits; those values, other offsets and ±infinity go through _timestamp_text."""
    texts = orjson.loads(orjson.dumps(values))
    return [
        text if text is None or (text[19] == "+" and text.endswith("+00:00")) else _timestamp_text(value)
        for text, value in zip(texts, values, strict=True)
    ]


def _timestamp_json(value: datetime) -> Any:
    """orjson writes a UTC datetime without fraction as we would; the rest as our text."""
    return value if value.tzinfo is UTC and not value.microsecond else _timestamp_text(value)


def _each(convert: Convert | None, col: Column) -> ColumnConvert | None:
    """`convert` applied to each of a column's values: map() where no NULL can occur, else NULLs kept."""
    if convert is None:
        return None
    if not col.nullable:
        return lambda values: list(map(convert, values))
    return lambda values: [None if v is None else convert(v) for v in values]


def _lookup(table: Mapping[Any, Any]) -> ColumnConvert:
    return lambda values: list(map(table.get, values))


def _text_column(col: Column, dialect: str) -> ColumnConvert | None:
    """How a column's values become CSV text; None where csv.writer's str() is already right."""
    kind = _kind(col)
    if kind == "boolean":
        return _lookup(_BOOL_TEXT)
    if dialect == "sqlite" and kind == "decimal":
        return _sqlite_decimals_text(col.scale)
    if dialect == "sqlite" and kind == "timestamptz":
        return _each(_sqlite_timestamp_text, col)
    if kind == "timestamptz":
        return _timestamps_text
    return _each(_compose(_normalizer(col, dialect), _TEXT[kind]), col)


def _json_column(col: Column, dialect: str) -> ColumnConvert | None:
    """How a column's values become what orjson writes as wanted; None where they already are."""
    kind = _kind(col)
    if kind == "boolean":
        return _lookup(_BOOL_JSON) if dialect == "sqlite" else None
    if dialect == "sqlite" and kind == "decimal":
        text = _sqlite_decimal_text(col.scale)
        return _each(lambda value: orjson.Fragment(text(value)) if math.isfinite(value) else None, col)
    if dialect == "sqlite" and kind == "timestamptz":
        return _each(_sqlite_timestamp_text, col)
    if kind == "timestamptz":
        return _each(_timestamp_json, col)
    return _each(_compose(_normalizer(col, dialect), _JSON.get(kind, _TEXT[kind])), col)


def _normalizer(col: Column, dialect: str) -> Convert | None:
    """The database's value → the canonical Python value, where the driver does not hand that back."""
    if dialect != "sqlite":
        return None
    if col.kind == "decimal":
        return _sqlite_decimal(col.scale)
    if col.kind in ("timestamp", "timestamptz"):
        return _sqlite_timestamp
    if col.kind == "date":
        return _sqlite_date
    if col.kind == "boolean":
        return bool
    return None


def _kind(col: Column) -> str:
    return "text" if col.as_text else col.kind


def _compose(first: Convert | None, second: Convert | None) -> Convert | None:
    if first is None or second is None:
        return first or second
    return lambda value: second(first(value))


def _converted(batch: Sequence[Sequence[Any]], converters: list[tuple[int, ColumnConvert]]
               ) -> list[Sequence[Any]]:
    """The batch as columns, each converted column replaced by its converted values."""
    columns: list[Sequence[Any]] = list(zip(*batch, strict=True))
    for i, convert in converters:
        columns[i] = convert(columns[i])
    return columns


class Serializer(Protocol):
    media_type: str

    def header(self) -> bytes: ...
    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes: ...
    def footer(self) -> bytes: ...


@dataclass(frozen=True)
class CsvOptions:
    header: bool = True
    delimiter: str = ","
    null: str = ""
    bom: bool = False


def csv_options(params: Mapping[str, str]) -> CsvOptions:
    """The CSV-only query parameters; errors name the parameter."""
    header = _flag(params, "header", default=True)
    bom = _flag(params, "bom", default=False)
    delimiter = params.get("delimiter", ",")
    if len(delimiter) != 1 or delimiter in "\"\r\n\x00":
        raise InvalidParameter(
            "delimiter must be one character other than a double quote or a line break (tab is %09)",
            parameter="delimiter",
        )
    null = params.get("null", "")
    if any(c in null for c in (delimiter, '"', "\r", "\n")):
        raise InvalidParameter("null text may not contain the delimiter, quotes or line breaks", parameter="null")
    return CsvOptions(header=header, delimiter=delimiter, null=null, bom=bom)


def reject_csv_options(params: Mapping[str, str]) -> None:
    for name in CSV_PARAMETERS & params.keys():
        raise InvalidParameter(f"{name} applies only to CSV exports", parameter=name)


def _flag(params: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise InvalidParameter(f"{name} must be true or false, got {raw!r}", parameter=name)
    return raw == "true"


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
        self._texts = [i for i, c in enumerate(columns) if _kind(c) in ("text", "json", "other") or options.null]
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, delimiter=options.delimiter, lineterminator="\n")
        # Values csv.writer would not quote but must be: the NULL text, and `\.` alone on a line (COPY's
        # end-of-data marker), which only a one-column row can produce.
        self._special = (options.null, "\\." if len(columns) == 1 else _NEVER)
        # A NULL text other than "" must also be found among integers, so then every value becomes text.
        self._converters = [
            (i, convert)
            for i, col in enumerate(columns)
            if (convert := _text_column(col, dialect) or (_each(str, col) if options.null else None))
        ]

    def header(self) -> bytes:
        head = BOM if self._options.bom else b""
        if not self._options.header:
            return head
        return head + self._encode_columns([[name] for name in self._columns])

    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes:
        if not batch:
            return b""
        return self._encode_columns(_converted(batch, self._converters))

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


class NdjsonSerializer:
    """One JSON object per line, keys in column order; numerics are JSON numbers with every digit."""

    media_type = "application/x-ndjson"

    def __init__(self, columns: Sequence[Column], dialect: str) -> None:
        self._names = [c.name for c in columns]
        self._converters = [
            (i, convert)
            for i, col in enumerate(columns)
            if (convert := _json_column(col, dialect))
        ]

    def header(self) -> bytes:
        return b""

    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes:
        if not batch:
            return b""
        names, dumps, option = self._names, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        rows = zip(*_converted(batch, self._converters), strict=True) if self._converters else batch
        return b"".join([dumps(dict(zip(names, row, strict=True)), option=option) for row in rows])

    def footer(self) -> bytes:
        return b""


FORMATS = ("csv", "ndjson")


def split_filename(filename: str) -> tuple[str, str, bool]:
    """`orders.csv.gz` → ("orders", "csv", True): dataset name, format, and whether it is a gzip file."""
    stem, gzipped = (filename.removesuffix(".gz"), True) if filename.endswith(".gz") else (filename, False)
    name, dot, fmt = stem.rpartition(".")
    if not dot or fmt not in FORMATS:
        raise UnknownFormat(
            f"{filename!r}: the name must end in .csv, .ndjson, .csv.gz or .ndjson.gz", parameter="format"
        )
    return name, fmt, gzipped


def format_options(fmt: str, params: Mapping[str, str]) -> CsvOptions | None:
    """The CSV options of a CSV export; None for NDJSON, which takes none."""
    if fmt == "csv":
        return csv_options(params)
    reject_csv_options(params)
    return None


def media_type(options: CsvOptions | None) -> str:
    return NdjsonSerializer.media_type if options is None else CsvSerializer.media_type


def create_serializer(columns: Sequence[Column], dialect: str, options: CsvOptions | None) -> Serializer:
    return NdjsonSerializer(columns, dialect) if options is None else CsvSerializer(columns, dialect, options)
