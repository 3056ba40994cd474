"""Deterministic seed for the demo `orders` table, generated inside the database (SQL, no row round trips).

Row g depends only on g, so the same --rows N gives the same rows on PostgreSQL and on SQLite.
"""

from __future__ import annotations

from sqlalchemy import Table, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.models import DemoBase, Order

STATUSES = ("pending", "paid", "shipped", "cancelled", "refunded")
CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY")
COUNTRIES = ("DE", "US", "FR", "GB", "JP", "BR", "IN", "SE", "CH", "ES")
# About 5% of notes: the values that break naive CSV writers and readers.
AWKWARD_NOTES = (
    'Grüße, "fragile"\nleave at door ✓',
    "=HYPERLINK(\"http://example.com\")",
    "comma, separated, words",
    'she said "hi"',
    "line one\r\nline two",
    "  padded  ",
    "tab\there; semicolon",
    "日本語のメモ",
    "",
    "back\\slash",
)
ORDERS: Table = Order.__table__  # type: ignore[assignment]
BASE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pick(index_sql: str, values: tuple[str, ...]) -> str:
    whens = " ".join(f"WHEN {i} THEN {_literal(v)}" for i, v in enumerate(values))
    return f"CASE {index_sql} {whens} END"


def _select_sql(dialect: str) -> str:
    """The rows 1..:rows as one SELECT; only the series and the timestamp arithmetic differ by dialect."""
    if dialect == "postgresql":
        series = "generate_series(1, CAST(:rows AS bigint)) AS s(g)"
        amount = "CAST((g * 7919) % 1000000 AS numeric) / 100"
        created = f"to_timestamp({BASE_EPOCH} + g * 53)"
        shipped = f"to_timestamp({BASE_EPOCH} + g * 53 + 86400 * (1 + g % 7) + (g % 3600))"
        gift = "g % 10 = 3"
    else:
        series = "s"
        amount = "CAST((g * 7919) % 1000000 AS REAL) / 100"
        created = f"strftime('%Y-%m-%d %H:%M:%S', {BASE_EPOCH} + g * 53, 'unixepoch') || '.000000'"
        shipped = (
            f"strftime('%Y-%m-%d %H:%M:%S', {BASE_EPOCH} + g * 53 + 86400 * (1 + g % 7) + (g % 3600),"
            " 'unixepoch') || '.000000'"
        )
        gift = "CASE WHEN g % 10 = 3 THEN 1 ELSE 0 END"
    note = (
        f"CASE WHEN g % 20 = 7 THEN {_pick(f'(g / 20) % {len(AWKWARD_NOTES)}', AWKWARD_NOTES)}"
        " WHEN g % 4 = 1 THEN 'order ' || CAST(g AS text) ELSE NULL END"
    )
    return f"""
        SELECT g, 1 + (g * 7907) % 50000, {_pick(f"g % {len(STATUSES)}", STATUSES)}, {amount},
               {_pick(f"(g / 5) % {len(CURRENCIES)}", CURRENCIES)}, {created},
               CASE WHEN g % 3 = 0 THEN NULL ELSE {shipped} END,
               {_pick(f"(g * 31) % {len(COUNTRIES)}", COUNTRIES)}, {note}, {gift}
        FROM {series}"""


async def seed_demo(engine: AsyncEngine, rows: int) -> None:
    """Replace the `orders` table with rows 1..rows."""
    dialect = engine.dialect.name
    insert = (
        "INSERT INTO orders (id, customer_id, status, amount, currency, created_at, shipped_at, country,"
        " note, is_gift)" + _select_sql(dialect)
    )
    if dialect == "sqlite":
        series = "WITH RECURSIVE s(g) AS (SELECT 1 WHERE :rows > 0 UNION ALL SELECT g + 1 FROM s WHERE g < :rows)"
        insert = series + insert
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: DemoBase.metadata.drop_all(sync, tables=[ORDERS]))
        await conn.run_sync(lambda sync: DemoBase.metadata.create_all(sync, tables=[ORDERS]))
        await conn.execute(text(insert), {"rows": rows})
    if dialect == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("ANALYZE orders"))


async def demo_exists(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: inspect(sync).has_table("orders"))
