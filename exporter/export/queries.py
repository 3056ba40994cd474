"""Request parameters → a validated SELECT: columns, col__op filters, order, limit and keyset `after`."""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Select, cast, column, select, table, text, type_coerce, types
from sqlalchemy.sql.elements import ColumnElement

from exporter.access.grants import NO_RESTRICTION, Restriction
from exporter.errors import (
    AfterRequiresKeyOrder,
    ColumnNotFilterable,
    Forbidden,
    InvalidParameter,
    InvalidValue,
    UnknownColumn,
    UnknownOperator,
)
from exporter.formats.csv import CSV_PARAMETERS
from exporter.sources.datasets import Column, Dataset

QUERY_PARAMETERS = frozenset({"columns", "order", "limit", "after"})

_INT64 = (-(2**63), 2**63 - 1)


def _parse_int(raw: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", raw):
        raise ValueError("not an optionally signed run of digits")
    value = int(raw)
    if not _INT64[0] <= value <= _INT64[1]:
        raise ValueError("out of the 64-bit integer range")
    return value


def _parse_decimal(raw: str) -> Decimal:
    value = Decimal(raw)
    if not value.is_finite():
        raise ValueError("not a finite number")
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise ValueError("expected true or false")
    return lowered == "true"


def _parse_timestamptz(raw: str) -> datetime:
    value = datetime.fromisoformat(raw)
    # A timestamp without an offset is taken as UTC, the zone every timestamptz is rendered in.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _parse_text(raw: str) -> str:
    if "\x00" in raw:
        raise ValueError("NUL characters are not allowed")
    return raw


# kind → (parse the query-string text, SQLAlchemy type to bind it as)
_VALUE_TYPES: dict[str, tuple[Callable[[str], Any], types.TypeEngine[Any]]] = {
    "integer": (_parse_int, types.BigInteger()),
    "decimal": (_parse_decimal, types.Numeric()),
    "float": (float, types.Float()),
    "boolean": (_parse_bool, types.Boolean()),
    "text": (_parse_text, types.Text()),
    "date": (date.fromisoformat, types.Date()),
    "time": (time.fromisoformat, types.Time()),
    "timestamp": (datetime.fromisoformat, types.DateTime()),
    "timestamptz": (_parse_timestamptz, types.DateTime(timezone=True)),
    "uuid": (uuid.UUID, types.Uuid()),
}

Comparison = Callable[[ColumnElement[Any], Any], ColumnElement[bool]]

# operator → (comparison, how its value is parsed: "one" by the column's type, "list" of them, or "bool")
OPERATORS: dict[str, tuple[Comparison, str]] = {
    "eq": (operator.eq, "one"),
    "ne": (lambda c, v: c.is_distinct_from(v), "one"),
    "gt": (operator.gt, "one"),
    "gte": (operator.ge, "one"),
    "lt": (operator.lt, "one"),
    "lte": (operator.le, "one"),
    "in": (lambda c, v: c.in_(v), "list"),
    "isnull": (lambda c, v: c.is_(None) if v else c.is_not(None), "bool"),
}


@dataclass(frozen=True)
class ExportQuery:
    """The validated SELECT (columns as the generic path reads them) and what each column is."""

    statement: Select[Any]
    columns: list[Column]
    source: Any
    order: tuple[tuple[str, bool], ...] = ()  # (column, descending), the key last unless named before
    limit: int | None = None  # the most rows the statement returns (its LIMIT), None for all

    def raw(self, name: str) -> ColumnElement[Any]:
        """The source column itself, for expressions over it (the COPY path's renderings)."""
        return self.source.c[name]  # type: ignore[no-any-return]


def build_query(dataset: Dataset, params: Sequence[tuple[str, str]], dialect: str,
                restriction: Restriction = NO_RESTRICTION) -> ExportQuery:
    """Validate every parameter against the dataset; errors name the offending parameter.

    A key's `restriction` hides every column it does not list (naming one in `columns`, a filter or `order` is
    Forbidden), makes its columns the default set, ANDs its filters in whatever the parameters say, and asks for
    at most max_rows + 1 rows (the pipeline aborts an export that gets that far).
    """
    single = _single_values(params)
    names = list(dataset.columns)
    source = _source(dataset, names)
    visible = restriction.columns
    for name, raw in params:
        if visible is not None:
            _check_visible(dataset, visible, name, raw)
    default = ",".join(visible) if visible is not None else None
    selected = _columns(dataset, single["columns"] if "columns" in single else default)
    stmt = select(*(_selected(source, c, dialect) for c in selected)).select_from(source)

    for name, raw in params:
        if name in QUERY_PARAMETERS or name in CSV_PARAMETERS:
            continue
        stmt = stmt.where(_filter(dataset, source, name, raw, dialect))
    for name, raw in restriction.filters:
        stmt = stmt.where(_filter(dataset, source, name, raw, dialect, operator_set=True))

    order = _order(dataset, single.get("order"))
    if "after" in single:
        key = dataset.key.name
        if [name for name, _ in order] != [key]:
            raise AfterRequiresKeyOrder(
                f"after continues by the key {key!r}: use it with order={key} or order=-{key} (or no order)",
                parameter="after",
            )
        value = _value(dataset.key, single["after"], "after", dialect)
        keyed = _bindable(source.c[key], dataset.key, dialect)
        stmt = stmt.where(keyed < value if order[0][1] else keyed > value)
    stmt = stmt.order_by(*(source.c[name].desc() if desc else source.c[name] for name, desc in order))

    limit: int | None = None
    if "limit" in single:
        # At most 19 digits: int() refuses more than 4,300 with a ValueError, which would be a 500.
        if not re.fullmatch(r"[0-9]{1,19}", single["limit"]) or int(single["limit"]) > _INT64[1]:
            raise InvalidParameter("limit must be a whole number, 0 or more", parameter="limit")
        limit = int(single["limit"])
    if restriction.max_rows is not None and (limit is None or limit > restriction.max_rows):
        limit = restriction.max_rows + 1
    if limit is not None:
        stmt = stmt.limit(limit)
    return ExportQuery(stmt, selected, source, tuple(order), limit)


def _check_visible(dataset: Dataset, visible: tuple[str, ...], name: str, raw: str) -> None:
    """Forbidden for a parameter that names a column the key may not see."""
    if name == "columns":
        named = raw.split(",")
    elif name == "order":
        named = [item.removeprefix("-") for item in raw.split(",")]
    elif name in QUERY_PARAMETERS or name in CSV_PARAMETERS:
        return
    else:
        named = [name.partition("__")[0]]
    for column_name in named:
        if column_name in dataset.columns and column_name not in visible:
            raise Forbidden(f"{name}: this key may not read column {column_name!r}", parameter=name)


def _selected(source: Any, col: Column, dialect: str) -> ColumnElement[Any]:
    """The column as the generic path reads it: PostgreSQL's text where the driver's value would not map
    back to that text one to one (Column.as_text), and JSON as its text, not decoded and encoded again."""
    target: ColumnElement[Any] = source.c[col.name]
    if col.as_text or (col.kind == "json" and dialect == "postgresql"):
        return cast(target, types.Text).label(col.name)
    return target


def _single_values(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    single: dict[str, str] = {}
    for name, raw in params:
        if name in QUERY_PARAMETERS or name in CSV_PARAMETERS:
            if name in single:
                raise InvalidParameter(f"{name} is given more than once", parameter=name)
            single[name] = raw
    return single


def _source(dataset: Dataset, names: list[str]) -> Any:
    config = dataset.config
    if config.table is not None:
        schema, _, name = config.table.rpartition(".")
        return table(name, *(column(n) for n in names), schema=schema or None)
    assert config.sql is not None
    return text(config.sql).columns(*(column(n) for n in names)).subquery("src")


def _columns(dataset: Dataset, raw: str | None) -> list[Column]:
    if raw is None:
        return list(dataset.columns.values())
    names = raw.split(",")
    for name in names:
        if name not in dataset.columns:
            raise UnknownColumn(f"columns: no column {name!r} in dataset {dataset.name!r}", parameter="columns")
    if len(set(names)) != len(names):
        raise InvalidParameter("columns: a column is named more than once", parameter="columns")
    return [dataset.columns[n] for n in names]


def _filter(dataset: Dataset, source: Any, name: str, raw: str, dialect: str, operator_set: bool = False
            ) -> ColumnElement[bool]:
    """The comparison `name=raw` asks for; `operator_set` for a key's row filter, which may use any column."""
    column_name, _, op = name.partition("__")
    op = op or "eq"
    if column_name not in dataset.columns:
        raise UnknownColumn(
            f"{name}: no column {column_name!r} in dataset {dataset.name!r} (nor a known parameter)",
            parameter=name,
        )
    if column_name not in dataset.config.filterable and not operator_set:
        raise ColumnNotFilterable(f"{name}: column {column_name!r} cannot be filtered", parameter=name)
    if op not in OPERATORS:
        raise UnknownOperator(
            f"{name}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}", parameter=name
        )
    compare, arity = OPERATORS[op]
    col = dataset.columns[column_name]
    target = _bindable(source.c[column_name], col, dialect)
    value: Any
    if arity == "bool":
        try:
            value = _parse_bool(raw)
        except ValueError:
            raise InvalidValue(f"{name}: expected true or false, got {raw!r}", parameter=name) from None
    elif arity == "list":
        value = [_value(col, item, name, dialect) for item in raw.split(",")]
    else:
        value = _value(col, raw, name, dialect)
    return compare(target, value)


def _bindable(target: Any, col: Column, dialect: str) -> Any:
    """The column typed for binding its parameters, so values are sent as the database stores them."""
    if col.kind not in _VALUE_TYPES:
        return target
    bind_type = _VALUE_TYPES[col.kind][1]
    if dialect == "sqlite" and col.kind == "decimal":
        bind_type = types.Float()  # SQLite keeps NUMERIC(p, s) values as REAL
    return type_coerce(target, bind_type)


def _value(col: Column, raw: str, parameter: str, dialect: str) -> Any:
    if col.kind not in _VALUE_TYPES:
        raise ColumnNotFilterable(f"{parameter}: values of type {col.type} cannot be compared", parameter=parameter)
    parse = _VALUE_TYPES[col.kind][0]
    try:
        value = parse(raw)
    except (ValueError, InvalidOperation):
        raise InvalidValue(f"{parameter}: {raw!r} is not a valid {col.type} value", parameter=parameter) from None
    if dialect == "sqlite" and col.kind == "decimal":
        return float(value)
    return value


def _order(dataset: Dataset, raw: str | None) -> list[tuple[str, bool]]:
    """(column, descending) pairs; the key is appended as a tiebreaker so the order is total and repeatable."""
    if raw is None:
        return [(dataset.key.name, False)]
    order: list[tuple[str, bool]] = []
    for item in raw.split(","):
        desc = item.startswith("-")
        name = item.removeprefix("-")
        if name not in dataset.columns:
            raise UnknownColumn(f"order: no column {name!r} in dataset {dataset.name!r}", parameter="order")
        if any(name == seen for seen, _ in order):
            raise InvalidParameter(f"order: column {name!r} is named more than once", parameter="order")
        order.append((name, desc))
    if all(name != dataset.key.name for name, _ in order):
        order.append((dataset.key.name, False))
    return order
