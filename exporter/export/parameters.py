"""The export's parameters as text, before any query: the query string decoded strictly, the grammar's size limits,
and each value parsed by its column's type into one the database accepts (else a 400 naming the parameter)."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_to_bytes

from sqlalchemy import types

from exporter.errors import (
    ColumnNotFilterable,
    InvalidParameter,
    InvalidValue,
    ParameterTooLong,
    TooManyParameters,
    TooManyValues,
)
from exporter.sources.datasets import Column

# Sizes the databases accept with room to spare: PostgreSQL binds at most 32,767 parameters per statement and
# SQLite 32,766; each filter binds one value and each `__in` value one more. Thousands of filters also cost the
# planner seconds of CPU (3,000 `id__ne` took 3.7 s), which 100 keeps to milliseconds.
MAX_PARAMETERS = 100  # query parameters (or POST /jobs params) of one request
MAX_NAME_CHARS = 256  # a parameter's name; PostgreSQL's column names have at most 63 bytes
MAX_VALUE_CHARS = 4096  # a value; in `columns=`, `order=` and `__in` lists each comma-separated item
MAX_IN_VALUES = 1000  # the values of every `__in` list of one request together
LISTS = ("columns", "order")  # parameters whose value is a comma-separated list


def query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    """The query string's (name, value) pairs, in order, percent-decoded as UTF-8 strictly: invalid UTF-8 (a lone
    surrogate's bytes %ED%A0%80 included) is a 400 naming the parameter, never replaced by U+FFFD."""
    pairs: list[tuple[str, str]] = []
    for piece in query_string.decode("latin-1").split("&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition("=")
        name = _decoded(raw_name, None)
        pairs.append((name, _decoded(raw_value, name)))
    return pairs


def _decoded(raw: str, name: str | None) -> str:
    try:
        return unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        if name is None:
            raise InvalidParameter("a parameter's name is not UTF-8 text") from None
        raise InvalidValue(f"{name}: the value is not UTF-8 text", parameter=name) from None


def check_parameters(params: Sequence[tuple[str, str]]) -> None:
    """The grammar's limits and plain text for every name and value: TooManyParameters, ParameterTooLong,
    TooManyValues; a NUL or a lone surrogate (JSON's "\\ud800") is InvalidParameter in a name and InvalidValue in a
    value. None of these can reach the database, whatever the parameter."""
    if len(params) > MAX_PARAMETERS:
        raise TooManyParameters(f"{len(params)} parameters: a request may have at most {MAX_PARAMETERS}")
    in_values = 0
    for name, raw in params:
        if len(name) > MAX_NAME_CHARS:
            raise ParameterTooLong(f"a parameter's name has {len(name)} characters, more than {MAX_NAME_CHARS}")
        if not _plain(name):
            raise InvalidParameter("a parameter's name holds a NUL or is not UTF-8 text")
        listed = name in LISTS or name.endswith("__in")
        items = raw.split(",") if listed else [raw]
        if name.endswith("__in"):
            in_values += len(items)
            if in_values > MAX_IN_VALUES:
                raise TooManyValues(f"{name}: a request may have at most {MAX_IN_VALUES} values in its __in lists",
                                    parameter=name)
        if any(len(item) > MAX_VALUE_CHARS for item in items):
            raise ParameterTooLong(f"{name}: a value may have at most {MAX_VALUE_CHARS} characters", parameter=name)
        if not _plain(raw):
            raise InvalidValue(f"{name}: the value holds a NUL or is not UTF-8 text", parameter=name)


def _plain(text: str) -> bool:
    """No NUL (PostgreSQL's text cannot hold one) and no lone surrogate (not encodable as UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


INT64 = (-(2**63), 2**63 - 1)  # integers are bound as bigint, whatever the column's own width
DECIMAL_DIGITS = 1000  # digits a decimal may have before or after its point (PostgreSQL's numeric holds more)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _parse_int(raw: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", raw):
        raise ValueError("not an optionally signed run of digits")
    return int(raw)


def _parse_decimal(raw: str) -> Decimal:
    if not _FLOAT.fullmatch(raw):
        raise ValueError("not a decimal number")
    return Decimal(raw)


def _parse_float(raw: str) -> float:
    if not _FLOAT.fullmatch(raw):  # no NaN, Infinity, underscores or spaces, which float() would take
        raise ValueError("not a decimal number")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("out of the range of a double")
    return value


def _parse_text(raw: str) -> str:
    if not _plain(raw):  # a key's row filter comes from the operator, not through check_parameters
        raise ValueError("NUL characters are not allowed")
    return raw


def parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise ValueError("expected true or false")
    return lowered == "true"


def _parse_timestamp(raw: str) -> datetime:
    value = datetime.fromisoformat(raw)
    if value.tzinfo is not None:
        raise ValueError("a timestamp without time zone takes no offset")
    return value


def _parse_timestamptz(raw: str) -> datetime:
    value = datetime.fromisoformat(raw)
    # A timestamp without an offset is taken as UTC, the zone every timestamptz is rendered in.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


# kind → (parse the query-string text, SQLAlchemy type to bind it as)
VALUE_TYPES: dict[str, tuple[Callable[[str], Any], types.TypeEngine[Any]]] = {
    "integer": (_parse_int, types.BigInteger()),
    "decimal": (_parse_decimal, types.Numeric()),
    "float": (_parse_float, types.Float()),
    "boolean": (parse_bool, types.Boolean()),
    "text": (_parse_text, types.Text()),
    "date": (date.fromisoformat, types.Date()),
    "time": (time.fromisoformat, types.Time()),
    "timestamp": (_parse_timestamp, types.DateTime()),
    "timestamptz": (_parse_timestamptz, types.DateTime(timezone=True)),
    "uuid": (uuid.UUID, types.Uuid()),
}


def parse_value(col: Column, raw: str, parameter: str, dialect: str) -> Any:
    """`raw` as a value of `col`'s type that its database accepts as a bound parameter: InvalidValue for text that
    is not one, or that lies outside the type's range (an integer beyond 64 bits, numeric(12, 2)'s 1e10,
    1e-999999, a timestamptz in year 0 or 10000 in UTC)."""
    if col.kind not in VALUE_TYPES:
        raise ColumnNotFilterable(f"{parameter}: values of type {col.type} cannot be compared", parameter=parameter)
    try:
        value = VALUE_TYPES[col.kind][0](raw)
        _check_range(col, value, dialect)
    except (ValueError, ArithmeticError):  # ArithmeticError: OverflowError, decimal's InvalidOperation
        raise InvalidValue(f"{parameter}: {raw!r} is not a valid {col.type} value", parameter=parameter) from None
    if dialect == "sqlite" and col.kind == "decimal":
        return float(value)
    return value


def _check_range(col: Column, value: Any, dialect: str) -> None:
    if col.kind == "integer":
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError("out of the column type's range")
    elif col.kind == "decimal":
        if not value.is_finite():
            raise ValueError("not a finite number")
        exponent = value.as_tuple().exponent
        digits_before = value.adjusted() + 1
        most_before = col.precision - (col.scale or 0) if col.precision is not None else DECIMAL_DIGITS
        if value and digits_before > most_before:
            raise ValueError("more digits before the point than the column's type holds")
        if isinstance(exponent, int) and -exponent > DECIMAL_DIGITS:
            raise ValueError("too many digits after the point")
        if dialect == "sqlite" and not math.isfinite(float(value)):
            raise ValueError("out of the range of a double")
