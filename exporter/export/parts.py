"""An export split into parts for parallel COPY: disjoint ranges of its key whose outputs, sent one after
the other, are the serial export's bytes."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from typing import Any

from sqlalchemy import BigInteger, Select, func, literal, text, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection

from exporter.export.queries import ExportQuery
from exporter.sources.datasets import Dataset
from exporter.sources.engines import driver_connection, positional_sql

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


async def split_query(conn: AsyncConnection, dataset: Dataset, query: ExportQuery, parts: int, min_rows: int
                      ) -> list[ExportQuery]:
    """The export as up to `parts` queries over consecutive ranges of its integer key, in the order their
    output is sent; `[query]` when it should stay serial: one part asked for, an order that is not the key's
    alone, a dataset that is not a table, or fewer than `min_rows` rows estimated.

    Runs its queries on `conn`, which must be in the export's snapshot. The ranges partition all keys, so every
    row is in exactly one part however good the estimates are; they only make the parts about equal. Bounds come
    from pg_stats' histogram of the key where ANALYZE made one, else from the key's min and max.

    With a `limit`, the first part keeps it, and each other part ends at the key of the limit-th row, which a
    subquery of its own finds in the snapshot when its COPY starts. Where that row falls in the first part's range,
    the limit cuts the first part there and the others are empty; where it falls later, the first part holds fewer
    rows than the limit. Either way the parts hold the limited export's rows, and the first byte does not wait for
    that row to be found.
    """
    key = dataset.key
    if (parts < 2 or len(query.order) != 1 or query.order[0][0] != key.name or key.kind != "integer"
            or dataset.config.table is None or query.limit == 0):
        return [query]
    statement = query.statement.limit(None)
    rows = await _estimated_rows(conn, statement)
    if min(rows, query.limit or rows) < min_rows:
        return [query]
    descending = query.order[0][1]
    column = type_coerce(query.raw(key.name), BigInteger())
    low, high = (await conn.execute(
        statement.with_only_columns(func.min(column), func.max(column)).order_by(None))).one()
    if low is None or low == high:
        return [query]
    reached = 1.0 if query.limit is None else min(1.0, query.limit / max(rows, 1))  # what the limit reaches
    cuts = _cuts(await _histogram(conn, dataset), low, high, parts, reached, descending)
    ranges = [statement.where(column < cuts[0])] if cuts else []
    ranges += [statement.where(column >= start, column < end) for start, end in itertools.pairwise(cuts)]
    ranges += [statement.where(column >= cuts[-1])] if cuts else []
    if len(ranges) < 2:
        return [query]
    if descending:
        ranges.reverse()
    if query.limit is not None:
        last = statement.with_only_columns(column).offset(query.limit - 1).limit(1).correlate(None)
        # No limit-th row: the export has fewer rows, and each part keeps all of its range.
        bound = func.coalesce(last.scalar_subquery(), literal(INT64_MIN if descending else INT64_MAX, BigInteger()))
        ranges = [ranges[0].limit(query.limit),
                  *(part.where(column >= bound if descending else column <= bound) for part in ranges[1:])]
    return [replace(query, statement=part) for part in ranges]


def _cuts(histogram: list[int], low: int, high: int, parts: int, reached: float, descending: bool) -> list[int]:
    """Up to parts - 1 increasing keys in (low, high] that split the keys a limit `reached` (the share of
    [low, high]'s rows it takes, from the low end or, `descending`, the high end) into parts of about equal rows:
    every n-th histogram bound in that range (each bucket holds about as many rows), else equal widths."""
    inside = [bound for bound in histogram if low < bound <= high]
    if reached < 1:
        taken = max(1, math.ceil(len(inside) * reached))
        inside = inside[-taken:] if descending else inside[:taken]
    if len(inside) >= parts - 1:
        chosen = [inside[len(inside) * i // parts] for i in range(1, parts)]
    else:
        width = math.ceil((high - low) * reached)
        start = high - width if descending else low
        chosen = [start + width * i // parts for i in range(1, parts)]
    return sorted({cut for cut in chosen if low < cut <= high})


async def _histogram(conn: AsyncConnection, dataset: Dataset) -> list[int]:
    assert dataset.config.table is not None
    schema, _, name = dataset.config.table.rpartition(".")
    bounds = (await conn.execute(
        text("SELECT histogram_bounds::text FROM pg_stats WHERE schemaname = coalesce(:schema, current_schema())"
             " AND tablename = :name AND attname = :column"),
        {"schema": schema or None, "name": name, "column": dataset.key.name})).scalar()
    return [int(bound) for bound in bounds.strip("{}").split(",")] if bounds else []


async def _estimated_rows(conn: AsyncConnection, statement: Select[Any]) -> float:
    sql, args = positional_sql(statement, conn.dialect)
    plan = await (await driver_connection(conn)).fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    if isinstance(plan, str):  # SQLAlchemy's engines decode json already
        plan = json.loads(plan)
    return float(plan[0]["Plan"]["Plan Rows"])
