"""iter_rows: row batches from a server-side cursor inside the export's snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Select, exc
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.db import open_snapshot
from exporter.errors import DatabaseUnavailable, DatasetUnavailable


async def iter_rows(engine: AsyncEngine, statement: Select[Any], batch_rows: int) -> AsyncIterator[Sequence[Any]]:
    """Yield batches of up to `batch_rows` rows from a server-side cursor.

    Holds one pooled connection from the first iteration until exhausted or closed; closing early (aclose,
    or cancellation) ends the query and returns the connection at once. Errors before the first batch are
    ExportErrors (503); later ones propagate as they are, so the response is aborted.
    """
    async with open_snapshot(engine) as conn:
        try:
            result = await conn.stream(statement.execution_options(yield_per=batch_rows))
        except (OSError, exc.InterfaceError, exc.OperationalError) as error:
            raise DatabaseUnavailable("the database is unreachable") from error
        except exc.DBAPIError as error:
            raise DatasetUnavailable(f"the dataset's query failed: {error.orig}") from error
        async for batch in result.partitions(batch_rows):
            yield batch
