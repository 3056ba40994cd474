"""API keys: tokens (format, checksum, hashing), grants and per-dataset restrictions, and the keys table.

A token is `exp_` and 50 URL-safe base64 characters: a 9-byte key id, a 24-byte secret and a 4-byte checksum
(the first bytes of the SHA-256 of the two), so a mistyped token is refused before any database lookup. Only the
SHA-256 of the secret is stored; a high-entropy secret needs no slow hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.errors import ConfigError
from exporter.models import ApiKey

PREFIX = "exp_"
ID_BYTES, SECRET_BYTES, CHECK_BYTES = 9, 24, 4
TOKEN_LENGTH = len(PREFIX) + (ID_BYTES + SECRET_BYTES + CHECK_BYTES) * 4 // 3 + 1  # unpadded base64: 50 chars
GRANT = re.compile(r"(dataset|files|proxy):([A-Za-z0-9_.*-]+)|admin|metrics")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
DURATION = re.compile(r"([0-9]+)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


class MalformedToken(ValueError):
    """Not a token: wrong prefix, length, alphabet or checksum."""


@dataclass(frozen=True)
class Restriction:
    """What a key may see of one dataset: only `columns` (also its default column set), only rows matching
    `filters` (query-string grammar, always ANDed), and at most `max_rows` rows per export."""

    columns: tuple[str, ...] | None = None
    filters: tuple[tuple[str, str], ...] = ()
    max_rows: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns) if self.columns is not None else None,
                "filters": [list(f) for f in self.filters], "max_rows": self.max_rows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Restriction:
        if not data:
            return cls()
        columns = data.get("columns")
        return cls(tuple(columns) if columns is not None else None,
                   tuple((str(n), str(v)) for n, v in data.get("filters", [])), data.get("max_rows"))


NO_RESTRICTION = Restriction()


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key's id, name, grants and restrictions; `key_id` None when auth is off (everything is
    granted)."""

    key_id: str | None
    name: str | None
    grants: frozenset[str] = frozenset()
    restrictions: Mapping[str, Restriction] = field(default_factory=dict)
    max_concurrent: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    def may(self, kind: str, name: str) -> bool:
        """Whether a grant covers `kind:name` (kind is dataset, files or proxy)."""
        return self.anonymous or f"{kind}:{name}" in self.grants or f"{kind}:*" in self.grants

    @property
    def admin(self) -> bool:
        return self.anonymous or "admin" in self.grants

    def restriction(self, dataset: str) -> Restriction:
        return self.restrictions.get(dataset, NO_RESTRICTION)


ANONYMOUS = Caller(None, None)


def new_token() -> tuple[str, str, str]:
    """(key id, token, stored hash) for a new key."""
    key_id, secret = secrets.token_bytes(ID_BYTES), secrets.token_bytes(SECRET_BYTES)
    body = key_id + secret
    token = PREFIX + base64.urlsafe_b64encode(body + _check(body)).decode().rstrip("=")
    return key_id.hex(), token, _hash(secret)


def parse_token(token: str) -> tuple[str, bytes]:
    """(key id, secret) of a well-formed token; MalformedToken otherwise. No I/O."""
    if len(token) != TOKEN_LENGTH or not token.startswith(PREFIX):
        raise MalformedToken("not an exporter token")
    try:
        raw = base64.urlsafe_b64decode(token[len(PREFIX):] + "==")
    except (binascii.Error, ValueError):
        raise MalformedToken("not an exporter token") from None
    body, check = raw[:-CHECK_BYTES], raw[-CHECK_BYTES:]
    canonical = base64.urlsafe_b64encode(raw).decode().rstrip("=") == token[len(PREFIX):]  # no spare bits set
    if len(raw) != ID_BYTES + SECRET_BYTES + CHECK_BYTES or not canonical or not hmac.compare_digest(check,
                                                                                                     _check(body)):
        raise MalformedToken("the token's checksum does not match: it was mistyped or cut short")
    return body[:ID_BYTES].hex(), body[ID_BYTES:]


def secret_matches(secret: bytes, stored_hash: str | None) -> bool:
    """Constant-time; with no stored hash (unknown key) it still hashes and compares, so both take as long."""
    return hmac.compare_digest(_hash(secret), stored_hash or _DUMMY_HASH) and stored_hash is not None


def _check(body: bytes) -> bytes:
    return hashlib.sha256(b"exporter-token" + body).digest()[:CHECK_BYTES]


def _hash(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s`."""
    match = DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a duration: a whole number and s, m, h or d (e.g. 90d)")
    return timedelta(seconds=int(match[1]) * UNITS[match[2]])


def parse_grant(text: str) -> str:
    if not GRANT.fullmatch(text):
        raise ConfigError(f"{text!r} is not a grant: dataset:NAME, files:ROOT, proxy:UPSTREAM (NAME may be *), "
                          "admin or metrics")
    return text


def parse_restrictions(columns: Sequence[str], row_filters: Sequence[str], max_rows: Sequence[str]
                       ) -> dict[str, Restriction]:
    """`--columns orders=id,amount`, `--row-filter orders=country=DE`, `--max-rows orders=100000`, by dataset."""
    found: dict[str, dict[str, Any]] = {}
    for text in columns:
        dataset, names = _split(text, "--columns", "orders=id,amount")
        found.setdefault(dataset, {})["columns"] = tuple(n.strip() for n in names.split(",") if n.strip())
    for text in row_filters:
        dataset, condition = _split(text, "--row-filter", "orders=country=DE")
        name, equals, value = condition.partition("=")
        if not equals or not name:
            raise ConfigError(f"--row-filter {text!r}: give DATASET=COLUMN[__OP]=VALUE, e.g. orders=country=DE")
        entry = found.setdefault(dataset, {})
        entry["filters"] = (*entry.get("filters", ()), (name, value))
    for text in max_rows:
        dataset, count = _split(text, "--max-rows", "orders=100000")
        if not count.isdigit():
            raise ConfigError(f"--max-rows {text!r}: the limit must be a whole number")
        found.setdefault(dataset, {})["max_rows"] = int(count)
    return {dataset: Restriction(**values) for dataset, values in found.items()}


def _split(text: str, option: str, example: str) -> tuple[str, str]:
    dataset, equals, rest = text.partition("=")
    if not equals or not dataset or not rest:
        raise ConfigError(f"{option} {text!r}: give DATASET=..., e.g. {example}")
    return dataset, rest


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
        """Those of the keys that are revoked or expired (or gone)."""
        async with self.engine.connect() as conn:
            usable = set(await conn.scalars(select(ApiKey.id).where(
                ApiKey.id.in_(key_ids), ApiKey.revoked_at.is_(None),
                (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now))))
        return set(key_ids) - usable


def caller_of(key: ApiKey) -> Caller:
    return Caller(key.id, key.name, frozenset(key.grants),
                  {d: Restriction.from_json(r) for d, r in (key.restrictions or {}).items()}, key.max_concurrent)
