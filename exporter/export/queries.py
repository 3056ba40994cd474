"""Request parameters → a validated SELECT: columns, col__op filters, order, limit and keyset `after`."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from exporter.export.parameters import INT64, VALUE_TYPES, check_parameters, parse_bool, parse_value
from exporter.formats.csv import CSV_PARAMETERS
from exporter.sources.datasets import Column, Dataset

QUERY_PARAMETERS = frozenset({"columns", "order", "limit", "after"})

ORDERING = frozenset({"gt", "gte", "lt", "lte"})  # SQLAlchemy compares booleans only for (in)equality
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
    # The key's max_rows where it set the LIMIT (to max_rows + 1, so that passing it shows): a path that must not
    # send row max_rows + 1 (COPY) reads row_cap rows and then checks whether one more exists.
    row_cap: int | None = None

    def raw(self, name: str) -> ColumnElement[Any]:
        """The source column itself, for expressions over it (the COPY path's renderings)."""
        return self.source.c[name]  # type: ignore[no-any-return]


def build_query(dataset: Dataset, params: Sequence[tuple[str, str]], dialect: str,
                restriction: Restriction = NO_RESTRICTION) -> ExportQuery:
    """Validate every parameter against the dataset; errors name the offending parameter.

    A key's `restriction` hides every column it does not list: naming one in `columns`, a filter or `order`, or
    any name that is no column (so hidden names cannot be told from absent ones), and `after` when the key is
    hidden, is Forbidden before anything else is looked at. Its columns are the default set, its filters are ANDed
    in whatever the parameters say, and it asks for at most max_rows + 1 rows (the pipeline aborts an export that
    gets that far). The grammar's limits (check_parameters) come first of all.
    """
    check_parameters(params)
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
        value = parse_value(dataset.key, single["after"], "after", dialect)
        keyed = _bindable(source.c[key], dataset.key, dialect)
        stmt = stmt.where(keyed < value if order[0][1] else keyed > value)
    stmt = stmt.order_by(*(source.c[name].desc() if desc else source.c[name] for name, desc in order))

    limit: int | None = None
    if "limit" in single:
        # At most 19 digits: int() refuses more than 4,300 with a ValueError, which would be a 500.
        if not re.fullmatch(r"[0-9]{1,19}", single["limit"]) or int(single["limit"]) > INT64[1]:
            raise InvalidParameter("limit must be a whole number, 0 or more", parameter="limit")
        limit = int(single["limit"])
    row_cap = None
    if restriction.max_rows is not None and (limit is None or limit > restriction.max_rows):
        limit, row_cap = restriction.max_rows + 1, restriction.max_rows
    if limit is not None:
        stmt = stmt.limit(limit)
    return ExportQuery(stmt, selected, source, tuple(order), limit, row_cap)


def _check_visible(dataset: Dataset, visible: tuple[str, ...], name: str, raw: str) -> None:
    """Forbidden for a parameter that names a column the key may not see, or no column at all: the same answer
    whether it exists or not. `after` continues by the key, so a hidden key makes it Forbidden whatever its value
    (a binary search over after=N&limit=1 would read the key's values)."""
    if name == "columns":
        named = raw.split(",")
    elif name == "order":
        named = [item.removeprefix("-") for item in raw.split(",")]
    elif name == "after":
        if dataset.key.name not in visible:
            raise Forbidden("after: this key may not read the column it continues by", parameter=name)
        return
    elif name in QUERY_PARAMETERS or name in CSV_PARAMETERS:
        return
    else:
        named = [name.partition("__")[0]]
    for column_name in named:
        if column_name not in visible:
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
    if col.kind == "boolean" and op in ORDERING:
        raise UnknownOperator(f"{name}: true and false are not ordered; use eq, ne, in or isnull", parameter=name)
    target = _bindable(source.c[column_name], col, dialect)
    value: Any
    if arity == "bool":
        try:
            value = parse_bool(raw)
        except ValueError:
            raise InvalidValue(f"{name}: expected true or false, got {raw!r}", parameter=name) from None
    elif arity == "list":
        value = [parse_value(col, item, name, dialect) for item in raw.split(",")]
    else:
        value = parse_value(col, raw, name, dialect)
    return compare(target, value)


def _bindable(target: Any, col: Column, dialect: str) -> Any:
    """The column typed for binding its parameters, so values are sent as the database stores them."""
    if col.kind not in VALUE_TYPES:
        return target
    bind_type = VALUE_TYPES[col.kind][1]
    if dialect == "sqlite" and col.kind == "decimal":
        bind_type = types.Float()  # SQLite keeps NUMERIC(p, s) values as REAL
    return type_coerce(target, bind_type)


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
