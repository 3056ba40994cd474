"""An export split into parts for parallel COPY: disjoint ranges of its key whose outputs, sent one after
the other, are the serial export's bytes."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import AsyncConnection

from exporter.datasets import Dataset
from exporter.queries import ExportQuery


async def split_query(conn: AsyncConnection, dataset: Dataset, query: ExportQuery, parts: int, min_rows: int
                      ) -> list[ExportQuery]:
    """The export as up to `parts` queries over consecutive ranges of its integer key, in the order their
    output is sent; `[query]` when it should stay serial: one part asked for, an order that is not the key's
    alone, a dataset that is not a table, or fewer than `min_rows` rows estimated.

    Runs its queries on `conn`, which must be in the export's snapshot: a `limit` becomes a bound on the key
    (the key of the limit-th row), read in that snapshot. The ranges partition all keys, so every row is in
    exactly one part however good the estimates are; they only make the parts about equal. Bounds come from
    pg_stats' histogram of the key where ANALYZE made one, else from the key's min and max.
    """
    key = dataset.key
    if (parts < 2 or len(query.order) != 1 or query.order[0][0] != key.name or key.kind != "integer"
            or dataset.config.table is None or query.limit == 0):
        return [query]
    if await _estimated_rows(conn, query) < min_rows:
        return [query]
    descending = query.order[0][1]
    column = query.raw(key.name)
    statement = query.statement.limit(None)
    if query.limit is not None:
        last = (await conn.execute(statement.with_only_columns(column).offset(query.limit - 1).limit(1))).scalar()
        if last is not None:
            statement = statement.where(column >= last if descending else column <= last)
    low, high = (await conn.execute(
        statement.with_only_columns(func.min(column), func.max(column)).order_by(None))).one()
    if low is None or low == high:
        return [query]
    cuts = _cuts(await _histogram(conn, dataset), low, high, parts)
    ranges = [statement.where(column < cuts[0])] if cuts else []
    ranges += [statement.where(column >= start, column < end) for start, end in itertools.pairwise(cuts)]
    ranges += [statement.where(column >= cuts[-1])] if cuts else []
    if len(ranges) < 2:
        return [query]
    if descending:
        ranges.reverse()
    return [replace(query, statement=part, limit=None) for part in ranges]


def _cuts(histogram: list[int], low: int, high: int, parts: int) -> list[int]:
    """Up to parts - 1 increasing keys in (low, high] that split [low, high] into parts of about equal rows:
    every n-th histogram bound inside the range (each bucket holds about as many rows), else equal widths."""
    inside = [bound for bound in histogram if low < bound <= high]
    if len(inside) >= parts - 1:
        chosen = [inside[len(inside) * i // parts] for i in range(1, parts)]
    else:
        chosen = [low + (high - low) * i // parts for i in range(1, parts)]
    return sorted({cut for cut in chosen if low < cut <= high})


async def _histogram(conn: AsyncConnection, dataset: Dataset) -> list[int]:
    assert dataset.config.table is not None
    schema, _, name = dataset.config.table.rpartition(".")
    bounds = (await conn.execute(
        text("SELECT histogram_bounds::text FROM pg_stats WHERE schemaname = coalesce(:schema, current_schema())"
             " AND tablename = :name AND attname = :column"),
        {"schema": schema or None, "name": name, "column": dataset.key.name})).scalar()
    return [int(bound) for bound in bounds.strip("{}").split(",")] if bounds else []


async def _estimated_rows(conn: AsyncConnection, query: ExportQuery) -> float:
    compiled = query.statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    args = [compiled.params[name] for name in compiled.positiontup or ()]
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    plan = await driver.fetchval("EXPLAIN (FORMAT JSON) " + compiled.string, *args)
    if isinstance(plan, str):  # SQLAlchemy's engines decode json already
        plan = json.loads(plan)
    return float(plan[0]["Plan"]["Plan Rows"])
