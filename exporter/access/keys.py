"""The api_keys table, and the one rule for whether a key may still be used."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.access.grants import Restriction
from exporter.access.tokens import new_token
from exporter.errors import ConfigError, ExpiredToken, RevokedToken, Unauthorized
from exporter.models import ApiKey

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def refusal(key: ApiKey, now: datetime) -> Unauthorized | None:
    """Why `key` may not be used at `now` (revoked, or expired), or None when it may: every check of a key's
    validity (a token, a session, a signed link, the revocation watch, a job's owner) asks this."""
    if key.revoked_at is not None:
        return RevokedToken(f"the key {key.name!r} was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        return ExpiredToken(f"the key {key.name!r} expired")
    return None


class Keys:
    """The api_keys table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, name: str, grants: Sequence[str], restrictions: Mapping[str, Restriction],
                     expires_in: timedelta | None, max_concurrent: int | None) -> str:
        """Store a new key and return its token (shown once: only its hash is kept)."""
        if not NAME.fullmatch(name):
            raise ConfigError(f"{name!r}: key names are 1 to 64 letters, digits, '_', '.', '@' and '-'")
        key_id, token, secret_hash = new_token()
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            if await conn.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
                raise ConfigError(f"a key named {name!r} exists already (revoke it, or choose another name)")
            await conn.execute(insert(ApiKey).values(
                id=key_id, name=name, secret_hash=secret_hash, grants=sorted(set(grants)),
                restrictions={d: r.as_json() for d, r in restrictions.items()}, max_concurrent=max_concurrent,
                created_at=now, expires_at=now + expires_in if expires_in is not None else None))
        return token

    async def all(self) -> list[ApiKey]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(*ApiKey.__table__.columns).order_by(ApiKey.name))
            return [ApiKey(**row._mapping) for row in rows]

    async def revoke(self, name: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
                                        .values(revoked_at=datetime.now(UTC)))
            return bool(result.rowcount)

    async def find(self, key_id: str) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*ApiKey.__table__.columns).where(ApiKey.id == key_id))).one_or_none()
        return None if row is None else ApiKey(**row._mapping)

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return len(list(await conn.scalars(select(ApiKey.id).limit(1))))

    async def touch(self, key_id: str, now: datetime) -> None:
        """Record a use, at most once a minute per key (a write per request would cost more than it tells)."""
        async with self.engine.begin() as conn:
            await conn.execute(update(ApiKey).where(
                ApiKey.id == key_id,
                (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < now - timedelta(minutes=1)),
            ).values(last_used_at=now))

    async def unusable(self, key_ids: Sequence[str], now: datetime) -> set[str]:
        """Those of the keys that may not be used (see refusal), or are gone."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(*ApiKey.__table__.columns).where(ApiKey.id.in_(key_ids)))
            usable = {row.id for row in rows if refusal(ApiKey(**row._mapping), now) is None}
        return set(key_ids) - usable
