"""iter_rows: row batches from a server-side cursor inside the export's snapshot; count_rows: how many there are;
estimate_rows: the planner's guess, without running the query."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import orjson
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from exporter.sources.engines import database_errors, open_snapshot


async def iter_rows(engine: AsyncEngine, statement: Select[Any], batch_rows: int,
                    idle_seconds: float | None = None) -> AsyncIterator[Sequence[Any]]:
    """Yield batches of up to `batch_rows` rows from a server-side cursor (see open_snapshot for `idle_seconds`).

    Holds one pooled connection from the first iteration until exhausted or closed; closing early (aclose,
    or cancellation) ends the query and returns the connection at once. Database errors are ExportErrors
    (see database_errors): a 503 before the first byte, an aborted response after it.
    """
    with database_errors("export"):
        async with open_snapshot(engine, idle_seconds) as conn:
            result = await conn.stream(statement.execution_options(yield_per=batch_rows))
            batches = aiter(result.partitions(batch_rows))
            # Read one batch ahead: the database (or SQLite's thread) fetches the next batch while this one
            # is encoded and sent, so the two use both cores instead of taking turns.
            ahead = asyncio.ensure_future(anext(batches, None))
            try:
                while (batch := await ahead) is not None:
                    ahead = asyncio.ensure_future(anext(batches, None))
                    yield batch
            finally:
                if not ahead.done():
                    ahead.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(ahead, return_exceptions=True)


async def count_rows(engine: AsyncEngine, statement: Select[Any]) -> int:
    """How many rows `statement` gives (its filters, `after` and `limit` included), in a snapshot of its own."""
    with database_errors("export"):
        async with open_snapshot(engine) as conn:
            counted = await conn.scalar(select(func.count()).select_from(statement.subquery()))
            return int(counted or 0)


class _Explain(Executable, ClauseElement):
    """`EXPLAIN (FORMAT JSON) <select>` with the select's bound parameters kept as parameters."""

    inherit_cache = False

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(_Explain, "postgresql")
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


async def estimate_rows(engine: AsyncEngine, statement: Select[Any]) -> int | None:
    """The rows PostgreSQL's planner expects `statement` to return, from the table statistics: no COUNT(*), and
    the query is not run. None on SQLite, whose planner gives no such number."""
    if engine.dialect.name != "postgresql":
        return None
    with database_errors("estimate"):
        async with engine.connect() as conn:
            plan = await conn.scalar(_Explain(statement))
    parsed = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
    return int(parsed[0]["Plan"]["Plan Rows"])
