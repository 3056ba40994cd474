"""The service's own secrets (`link`, `session`): made by the migrations, shared by every replica of the database."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.models import ServiceSecret


async def load_secret(engine: AsyncEngine, name: str) -> bytes:
    async with engine.connect() as conn:
        value = await conn.scalar(select(ServiceSecret.value).where(ServiceSecret.name == name))
    if value is None:
        raise RuntimeError(f"the {name} secret is missing: run `exporter migrate`")
    return bytes.fromhex(value)
