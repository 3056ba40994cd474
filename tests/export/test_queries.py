"""build_query: request parameters → SELECT, compiled for PostgreSQL (asyncpg) and SQLite; values always bound."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.engine import Dialect

from exporter.config import DatasetConfig
from exporter.errors import (
    AfterRequiresKeyOrder,
    ColumnNotFilterable,
    ExportError,
    InvalidParameter,
    InvalidValue,
    UnknownColumn,
    UnknownOperator,
)
from exporter.export.queries import OPERATORS, build_query
from exporter.sources.datasets import Column, Dataset

DIALECTS: dict[str, Dialect] = {
    "postgresql": asyncpg.dialect(),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.dialect(),
}

COLUMNS = [
    Column("id", "bigint", "integer", nullable=False),
    Column("customer_id", "integer", "integer", nullable=False),
    Column("status", "text", "text", nullable=False),
    Column("amount", "numeric(12, 2)", "decimal", nullable=True, scale=2),
    Column("created_at", "timestamptz", "timestamptz", nullable=False),
    Column("shipped_on", "date", "date", nullable=True),
    Column("is_gift", "boolean", "boolean", nullable=False),
    Column("note", "text", "text", nullable=True),  # not filterable
    Column("extra", "jsonb", "json", nullable=True),  # filterable, but only by isnull
]
ALL_COLUMNS = ", ".join(f"orders.{c.name}" for c in COLUMNS)


def dataset(**config: Any) -> Dataset:
    declared = {"name": "orders", "key": "id", "table": "orders",
                "filterable": ("id", "customer_id", "status", "amount", "created_at", "shipped_on", "is_gift",
                               "extra")}
    return Dataset(
        config=DatasetConfig(**(declared | config)),
        columns={c.name: c for c in COLUMNS},
        engine=None,  # type: ignore[arg-type]  # build_query never touches the engine
    )


ORDERS = dataset()


def compiled(params: Sequence[tuple[str, str]], dialect: str = "postgresql",
             source: Dataset = ORDERS) -> tuple[str, list[Any]]:
    """The SQL on one line, and the bound values in order."""
    statement = build_query(source, params, dialect).statement.compile(dialect=DIALECTS[dialect])
    return " ".join(str(statement).split()), list(statement.params.values())


@pytest.mark.parametrize("dialect", DIALECTS)
def test_query_selects_every_column_ordered_by_the_key_by_default(dialect: str) -> None:
    # On PostgreSQL JSON is read as its text: the driver would decode it (and a JSON string come out bare).
    columns = ALL_COLUMNS.replace("orders.extra", "CAST(orders.extra AS TEXT) AS extra") if dialect == "postgresql" \
        else ALL_COLUMNS
    assert compiled([], dialect) == (f"SELECT {columns} FROM orders ORDER BY orders.id", [])


def test_columns_parameter_keeps_the_requested_order() -> None:
    query = build_query(ORDERS, [("columns", "status,amount,id")], "postgresql")
    assert [c.name for c in query.columns] == ["status", "amount", "id"]
    assert compiled([("columns", "status,amount,id")]) == (
        "SELECT orders.status, orders.amount, orders.id FROM orders ORDER BY orders.id", [])


@pytest.mark.parametrize(
    ("order", "order_by"),
    [
        ("status", "orders.status, orders.id"),
        ("status,-amount", "orders.status, orders.amount DESC, orders.id"),
        ("-id", "orders.id DESC"),
        ("-id,status", "orders.id DESC, orders.status"),
        ("created_at,id", "orders.created_at, orders.id"),
    ],
)
def test_order_appends_the_key_as_tiebreaker_unless_named(order: str, order_by: str) -> None:
    sql, _ = compiled([("columns", "id"), ("order", order)])
    assert sql == f"SELECT orders.id FROM orders ORDER BY {order_by}"


def test_operator_table_is_the_documented_one() -> None:
    assert list(OPERATORS) == ["eq", "ne", "gt", "gte", "lt", "lte", "in", "isnull"]


# parameter, value, WHERE on PostgreSQL, WHERE on SQLite, bound values
FILTERS: list[tuple[str, str, str, str, list[Any]]] = [
    ("customer_id", "7", "orders.customer_id = $1::BIGINT", "orders.customer_id = ?", [7]),
    ("customer_id__eq", "7", "orders.customer_id = $1::BIGINT", "orders.customer_id = ?", [7]),
    ("customer_id__ne", "7", "orders.customer_id IS DISTINCT FROM $1::BIGINT", "orders.customer_id IS NOT ?", [7]),
    ("customer_id__gt", "7", "orders.customer_id > $1::BIGINT", "orders.customer_id > ?", [7]),
    ("customer_id__gte", "7", "orders.customer_id >= $1::BIGINT", "orders.customer_id >= ?", [7]),
    ("customer_id__lt", "7", "orders.customer_id < $1::BIGINT", "orders.customer_id < ?", [7]),
    ("customer_id__lte", "7", "orders.customer_id <= $1::BIGINT", "orders.customer_id <= ?", [7]),
    ("customer_id__in", "1,2,3", "orders.customer_id IN (__[POSTCOMPILE_param_1])",
     "orders.customer_id IN (__[POSTCOMPILE_param_1])", [[1, 2, 3]]),
    ("shipped_on__isnull", "true", "orders.shipped_on IS NULL", "orders.shipped_on IS NULL", []),
    ("shipped_on__isnull", "false", "orders.shipped_on IS NOT NULL", "orders.shipped_on IS NOT NULL", []),
    ("extra__isnull", "true", "orders.extra IS NULL", "orders.extra IS NULL", []),
]


@pytest.mark.parametrize(("parameter", "value", "pg_where", "sqlite_where", "bound"), FILTERS)
def test_each_operator_compiles_to_its_comparison_with_bound_values(parameter: str, value: str, pg_where: str,
                                                                    sqlite_where: str, bound: list[Any]) -> None:
    for dialect, where in (("postgresql", pg_where), ("sqlite", sqlite_where)):
        assert compiled([("columns", "id"), (parameter, value)], dialect) == (
            f"SELECT orders.id FROM orders WHERE {where} ORDER BY orders.id", bound)


def test_every_operator_is_covered_by_the_filter_table() -> None:
    used = {parameter.partition("__")[2] or "eq" for parameter, *_ in FILTERS}
    assert used == set(OPERATORS)


def test_filters_on_several_parameters_are_combined_with_and() -> None:
    sql, bound = compiled([("columns", "id"), ("status", "paid"), ("amount__gte", "10"), ("amount__lt", "20")])
    assert sql == ("SELECT orders.id FROM orders WHERE orders.status = $1::VARCHAR "
                   "AND orders.amount >= $2::NUMERIC AND orders.amount < $3::NUMERIC ORDER BY orders.id")
    assert bound == ["paid", Decimal("10"), Decimal("20")]


# parameter, value, bound on PostgreSQL, bound on SQLite
VALUES: list[tuple[str, str, Any, Any]] = [
    ("customer_id", "-42", -42, -42),
    ("customer_id", "9223372036854775807", 2**63 - 1, 2**63 - 1),
    ("customer_id", "-9223372036854775808", -(2**63), -(2**63)),
    ("amount", "12.50", Decimal("12.50"), 12.5),
    ("amount", "-0.01", Decimal("-0.01"), -0.01),
    ("created_at", "2024-01-01T10:00:00", datetime(2024, 1, 1, 10, tzinfo=UTC),
     datetime(2024, 1, 1, 10, tzinfo=UTC)),
    ("created_at", "2024-01-01T12:00:00.5+02:00", datetime(2024, 1, 1, 10, 0, 0, 500000, tzinfo=UTC),
     datetime(2024, 1, 1, 10, 0, 0, 500000, tzinfo=UTC)),
    ("shipped_on", "2024-02-29", date(2024, 2, 29), date(2024, 2, 29)),
    ("status", "O'Brien'; DROP TABLE orders; --", "O'Brien'; DROP TABLE orders; --",
     "O'Brien'; DROP TABLE orders; --"),
    ("status", "Grüße ✓", "Grüße ✓", "Grüße ✓"),
]


@pytest.mark.parametrize(("parameter", "value", "pg_bound", "sqlite_bound"), VALUES)
def test_filter_values_are_parsed_by_the_column_kind_and_bound(parameter: str, value: str, pg_bound: Any,
                                                               sqlite_bound: Any) -> None:
    for dialect, expected in (("postgresql", pg_bound), ("sqlite", sqlite_bound)):
        sql, bound = compiled([("columns", "id"), (parameter, value)], dialect)
        assert bound == [expected]
        assert type(bound[0]) is type(expected)
        assert value not in sql
        if isinstance(expected, Decimal | datetime):
            assert str(bound[0]) == str(expected)  # same digits and the same zone, not only equal


@pytest.mark.parametrize(
    ("parameter", "value", "pg_where", "sqlite_where"),
    [
        ("is_gift", "true", "orders.is_gift = true", "orders.is_gift = 1"),
        ("is_gift", "FALSE", "orders.is_gift = false", "orders.is_gift = 0"),
        ("is_gift__ne", "false", "orders.is_gift IS DISTINCT FROM false", "orders.is_gift IS NOT 0"),
    ],
)
def test_boolean_filter_values_compile_to_the_sql_constants(parameter: str, value: str, pg_where: str,
                                                            sqlite_where: str) -> None:
    # SQLAlchemy renders a comparison with a Python bool as the constant, not a parameter; the value has
    # been parsed to True or False first, so no request text reaches the SQL.
    for dialect, where in (("postgresql", pg_where), ("sqlite", sqlite_where)):
        assert compiled([("columns", "id"), (parameter, value)], dialect) == (
            f"SELECT orders.id FROM orders WHERE {where} ORDER BY orders.id", [])


def test_timestamptz_filter_values_without_offset_are_taken_as_utc() -> None:
    _, bound = compiled([("created_at__lt", "2024-06-01")])
    assert bound == [datetime(2024, 6, 1, tzinfo=UTC)]
    assert bound[0].utcoffset().total_seconds() == 0


def test_sqlite_binds_decimal_values_as_floats_in_lists_too() -> None:
    _, bound = compiled([("amount__in", "1.5,2,0.10")], "sqlite")
    assert bound == [[1.5, 2.0, 0.1]]
    assert all(type(v) is float for v in bound[0])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_limit_is_bound(dialect: str) -> None:
    sql, bound = compiled([("columns", "id"), ("limit", "10")], dialect)
    assert sql.startswith("SELECT orders.id FROM orders ORDER BY orders.id LIMIT ")
    assert bound[0] == 10
    assert " 10" not in sql


def test_limit_zero_is_allowed() -> None:
    assert compiled([("columns", "id"), ("limit", "0")])[1] == [0]


@pytest.mark.parametrize(
    ("params", "where", "order_by"),
    [
        ([("after", "41")], "orders.id > $1::BIGINT", "orders.id"),
        ([("after", "41"), ("order", "id")], "orders.id > $1::BIGINT", "orders.id"),
        ([("after", "41"), ("order", "-id")], "orders.id < $1::BIGINT", "orders.id DESC"),
    ],
)
def test_after_continues_from_the_key_in_the_direction_of_the_order(params: list[tuple[str, str]], where: str,
                                                                    order_by: str) -> None:
    assert compiled([("columns", "id"), *params]) == (
        f"SELECT orders.id FROM orders WHERE {where} ORDER BY {order_by}", [41])


def test_after_combines_with_filters_and_limit() -> None:
    sql, bound = compiled([("columns", "id"), ("status", "paid"), ("after", "41"), ("limit", "100")], "sqlite")
    assert sql == ("SELECT orders.id FROM orders WHERE orders.status = ? AND orders.id > ? "
                   "ORDER BY orders.id LIMIT ? OFFSET ?")
    assert bound == ["paid", 41, 100, 0]


def test_csv_options_are_not_filters() -> None:
    params = [("header", "false"), ("delimiter", ";"), ("null", "NULL"), ("bom", "true")]
    assert compiled([("columns", "id"), *params]) == ("SELECT orders.id FROM orders ORDER BY orders.id", [])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_dataset_declared_with_sql_is_selected_as_a_subquery(dialect: str) -> None:
    declared = dataset(table=None, sql="SELECT * FROM orders WHERE status <> 'void'")
    sql, bound = compiled([("columns", "id,status"), ("customer_id", "7")], dialect, declared)
    placeholder = "$1::BIGINT" if dialect == "postgresql" else "?"
    assert sql == ("SELECT src.id, src.status FROM (SELECT * FROM orders WHERE status <> 'void') AS src "
                   f"WHERE src.customer_id = {placeholder} ORDER BY src.id")
    assert bound == [7]


def test_dataset_table_may_name_its_schema() -> None:
    sql, _ = compiled([("columns", "id")], source=dataset(table="reporting.orders"))
    assert sql == "SELECT reporting.orders.id FROM reporting.orders ORDER BY reporting.orders.id"


# parameters, the error, the parameter it names
ERRORS: list[tuple[list[tuple[str, str]], type[ExportError], str]] = [
    ([("columns", "id,nope")], UnknownColumn, "columns"),
    ([("columns", "")], UnknownColumn, "columns"),
    ([("columns", "id,status,id")], InvalidParameter, "columns"),
    ([("order", "nope")], UnknownColumn, "order"),
    ([("order", "-nope")], UnknownColumn, "order"),
    ([("order", "status,-status")], InvalidParameter, "order"),
    ([("nope", "1")], UnknownColumn, "nope"),
    ([("nope__gt", "1")], UnknownColumn, "nope__gt"),
    ([("note", "x")], ColumnNotFilterable, "note"),
    ([("note__isnull", "true")], ColumnNotFilterable, "note__isnull"),
    ([("extra", "{}")], ColumnNotFilterable, "extra"),
    ([("customer_id__like", "7")], UnknownOperator, "customer_id__like"),
    ([("customer_id__between", "1,2")], UnknownOperator, "customer_id__between"),
    ([("customer_id", "abc")], InvalidValue, "customer_id"),
    ([("customer_id", "1.5")], InvalidValue, "customer_id"),
    ([("customer_id", "9223372036854775808")], InvalidValue, "customer_id"),
    ([("customer_id", "-9223372036854775809")], InvalidValue, "customer_id"),
    ([("customer_id__in", "1,x,3")], InvalidValue, "customer_id__in"),
    ([("customer_id__in", "")], InvalidValue, "customer_id__in"),
    ([("amount", "NaN")], InvalidValue, "amount"),
    ([("amount", "Infinity")], InvalidValue, "amount"),
    ([("amount", "12,50")], InvalidValue, "amount"),
    ([("is_gift", "yes")], InvalidValue, "is_gift"),
    ([("is_gift", "1")], InvalidValue, "is_gift"),
    ([("created_at__gt", "yesterday")], InvalidValue, "created_at__gt"),
    ([("shipped_on", "2024-02-30")], InvalidValue, "shipped_on"),
    ([("status", "a\x00b")], InvalidValue, "status"),
    ([("status__isnull", "maybe")], InvalidValue, "status__isnull"),
    ([("limit", "-1")], InvalidParameter, "limit"),
    ([("limit", "abc")], InvalidParameter, "limit"),
    ([("limit", "1.5")], InvalidParameter, "limit"),
    ([("limit", "")], InvalidParameter, "limit"),
    ([("limit", "9223372036854775808")], InvalidParameter, "limit"),
    ([("after", "5"), ("order", "status")], AfterRequiresKeyOrder, "after"),
    ([("after", "5"), ("order", "status,id")], AfterRequiresKeyOrder, "after"),
    ([("after", "5"), ("order", "id,status")], AfterRequiresKeyOrder, "after"),
    ([("after", "abc")], InvalidValue, "after"),
    ([("limit", "1"), ("limit", "2")], InvalidParameter, "limit"),
    ([("after", "1"), ("after", "1")], InvalidParameter, "after"),
    ([("columns", "id"), ("columns", "status")], InvalidParameter, "columns"),
    ([("order", "id"), ("order", "id")], InvalidParameter, "order"),
    ([("header", "true"), ("header", "false")], InvalidParameter, "header"),
]


@pytest.mark.parametrize(("params", "error", "parameter"), ERRORS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_invalid_parameters_raise_an_error_naming_the_parameter(dialect: str, params: list[tuple[str, str]],
                                                                error: type[ExportError], parameter: str) -> None:
    with pytest.raises(error) as raised:
        build_query(ORDERS, params, dialect)
    assert type(raised.value) is error
    assert raised.value.parameter == parameter


def test_limit_with_a_superscript_digit_is_an_invalid_parameter() -> None:
    with pytest.raises(InvalidParameter) as raised:
        build_query(ORDERS, [("limit", "\u00b2")], "postgresql")
    assert raised.value.parameter == "limit"


@pytest.mark.parametrize("value", ["1_000", " 7", "\u0661\u0662"])
def test_integer_filter_values_are_plain_ascii_digits(value: str) -> None:
    with pytest.raises(InvalidValue):
        build_query(ORDERS, [("customer_id", value)], "postgresql")
