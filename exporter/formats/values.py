"""Value kinds: how each kind of database value becomes text (CSV), a JSON value (NDJSON), or a canonical Python
value (the typed formats), column by column; the one place that knows what PostgreSQL and SQLite hand back.

Pure: no I/O. Values render the same whatever the database: NULL is an empty CSV field (or the `null=`
text) and JSON null; numerics keep every digit and never pass through float; timestamps with time zone
are ISO 8601 in UTC with `+00:00`; booleans are `true` / `false`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from typing import Any

import orjson

from exporter.sources.datasets import Column

Convert = Callable[[Any], Any]
INFINITY = float("inf")


def decimal_text(value: Decimal) -> str:
    return format(value, "f") if value.is_finite() else "NaN" if value.is_nan() else _infinity(value)


def float_text(value: float) -> str:
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


def timestamp_text(value: datetime) -> str:
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


def any_text(value: Any) -> str:
    if isinstance(value, bool):
        return _bool_text(value)
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, bytes):
        return _bytes_text(value)
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return timestamp_text(value)
    if isinstance(value, date):
        return _date_text(value)
    if isinstance(value, time):
        return _time_text(value)
    return str(value)


# kind → its canonical value as text; None where str() of the database's value is already right.
_TEXT: dict[str, Convert | None] = {
    "integer": None,
    "text": None,
    "decimal": decimal_text,
    "float": float_text,
    "boolean": _bool_text,
    "date": _date_text,
    "time": _time_text,
    "timestamp": timestamp_text,
    "timestamptz": timestamp_text,
    "interval": _interval_text,
    "uuid": str,
    "json": _json_text,
    "bytes": _bytes_text,
    "other": any_text,
}


def _decimal_json(value: Decimal) -> Any:
    return orjson.Fragment(format(value, "f")) if value.is_finite() else None


def _float_json(value: float) -> Any:
    return orjson.Fragment(float_text(value)) if math.isfinite(value) else None


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
    return any_text(value)


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


def sqlite_decimal(scale: int | None) -> Convert:
    """SQLite hands back NUMERIC(p, s) as float or int; repr() is exact up to 15 digits, then the scale is set."""
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None
    wide = Context(prec=1000)  # quantize must not overflow the default 28 digits

    def convert(value: Any) -> Decimal:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if quantum is None or not number.is_finite():
            return number
        return number.quantize(quantum, context=wide)

    return convert


def sqlite_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def sqlite_date(value: Any) -> Any:
    return date.fromisoformat(value[:10]) if isinstance(value, str) else value


def _sqlite_decimal_text(scale: int | None) -> Convert:
    """NUMERIC(p, s) from SQLite's float straight to text: a double holding at most 15 significant digits
    formats back to exactly those digits; anything larger goes through Decimal."""
    exact = compose(sqlite_decimal(scale), decimal_text)
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
    return timestamp_text(sqlite_timestamp(value))


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
    that it keeps six fraction digits; those values, other offsets and ±infinity go through timestamp_text."""
    texts = orjson.loads(orjson.dumps(values))
    return [
        # -infinity comes as naive datetime.min, whose text ends after the seconds: text[19] would not exist.
        text if text is None or (text[19:20] == "+" and text.endswith("+00:00")) else timestamp_text(value)
        for text, value in zip(texts, values, strict=True)
    ]


def _timestamp_json(value: datetime) -> Any:
    """orjson writes a UTC datetime without fraction as we would; the rest as our text."""
    return value if value.tzinfo is UTC and not value.microsecond else timestamp_text(value)


def each(convert: Convert | None, col: Column) -> ColumnConvert | None:
    """`convert` applied to each of a column's values: map() where no NULL can occur, else NULLs kept."""
    if convert is None:
        return None
    if not col.nullable:
        return lambda values: list(map(convert, values))
    return lambda values: [None if v is None else convert(v) for v in values]


def _lookup(table: Mapping[Any, Any]) -> ColumnConvert:
    return lambda values: list(map(table.get, values))


def text_column(col: Column, dialect: str) -> ColumnConvert | None:
    """How a column's values become CSV text; None where csv.writer's str() is already right."""
    kind = kind_of(col)
    if kind == "boolean":
        return _lookup(_BOOL_TEXT)
    if dialect == "sqlite" and kind == "decimal":
        return _sqlite_decimals_text(col.scale)
    if dialect == "sqlite" and kind == "timestamptz":
        return each(_sqlite_timestamp_text, col)
    if kind == "timestamptz":
        return _timestamps_text
    return each(compose(normalizer(col, dialect), _TEXT[kind]), col)


def json_column(col: Column, dialect: str) -> ColumnConvert | None:
    """How a column's values become what orjson writes as wanted; None where they already are."""
    kind = kind_of(col)
    if kind == "boolean":
        return _lookup(_BOOL_JSON) if dialect == "sqlite" else None
    if dialect == "sqlite" and kind == "decimal":
        text = _sqlite_decimal_text(col.scale)
        return each(lambda value: orjson.Fragment(text(value)) if math.isfinite(value) else None, col)
    if dialect == "sqlite" and kind == "timestamptz":
        return each(_sqlite_timestamp_text, col)
    if kind == "timestamptz":
        return each(_timestamp_json, col)
    return each(compose(normalizer(col, dialect), _JSON.get(kind, _TEXT[kind])), col)


def normalizer(col: Column, dialect: str) -> Convert | None:
    """The database's value → the canonical Python value, where the driver does not hand that back."""
    if dialect != "sqlite":
        return None
    if col.kind == "decimal":
        return sqlite_decimal(col.scale)
    if col.kind in ("timestamp", "timestamptz"):
        return sqlite_timestamp
    if col.kind == "date":
        return sqlite_date
    if col.kind == "boolean":
        return bool
    return None


def kind_of(col: Column) -> str:
    return "text" if col.as_text else col.kind


def compose(first: Convert | None, second: Convert | None) -> Convert | None:
    if first is None or second is None:
        return first or second
    return lambda value: second(first(value))


def converted(batch: Sequence[Sequence[Any]], converters: list[tuple[int, ColumnConvert]]
              ) -> list[Sequence[Any]]:
    """The batch as columns, each converted column replaced by its converted values."""
    columns: list[Sequence[Any]] = list(zip(*batch, strict=True))
    for i, convert in converters:
        columns[i] = convert(columns[i])
    return columns

