"""The migrations create exactly what exporter.models declares, on both databases."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.models import Base
from tests.conftest import Database


def test_migrated_schema_matches_the_models(db: Database) -> None:
    async def diff(engine: AsyncEngine) -> list[Any]:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )

    differences = [d for d in db.run(diff) if not (isinstance(d, tuple) and d[0] == "remove_table")]
    assert differences == []
