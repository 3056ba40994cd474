"""Who is asking: the bearer token → the caller's key (CallerDep), tokens refused in URLs, and signed result links
that work without a header."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from exporter.errors import (
    ExpiredToken,
    Forbidden,
    InvalidToken,
    LinkExpired,
    MissingToken,
    RevokedToken,
    TokenInUrl,
    error_response,
)
from exporter.keys import ANONYMOUS, PREFIX, Caller, Keys, MalformedToken, caller_of, parse_token, secret_matches
from exporter.models import ServiceSecret

log = logging.getLogger(__name__)

TOKEN_PARAMETER = "access_token"  # RFC 6750 §2.3, refused: URLs end up in logs


class RefuseTokensInUrls:
    """ASGI middleware: 400 token_in_url for a query string that carries `access_token=` or any value starting
    with `exp_`, before routing, on every path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            query = scope["query_string"].decode("latin-1")
            if any(name == TOKEN_PARAMETER or value.startswith(PREFIX)
                   for name, value in parse_qsl(query, keep_blank_values=True)):
                error = TokenInUrl("send the token in the Authorization header (Bearer), never in the URL: "
                                   "URLs are written to logs; revoke a token that was sent this way")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def authenticate(request: Request) -> Caller:
    """The caller of this request; ANONYMOUS when auth is off. Raises MissingToken, InvalidToken (malformed,
    mistyped, unknown key or wrong secret: all alike, and as slow whether the key exists or not), ExpiredToken,
    RevokedToken."""
    if request.app.state.settings.auth == "off":
        return ANONYMOUS
    header = request.headers.get("authorization")
    if not header:
        raise MissingToken("send an API key: Authorization: Bearer exp_…")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidToken("use the Bearer scheme: Authorization: Bearer exp_…")
    try:
        key_id, secret = parse_token(token.strip())
    except MalformedToken as error:
        raise InvalidToken(str(error)) from None
    keys: Keys = request.app.state.keys
    key = await keys.find(key_id)
    if key is None or not secret_matches(secret, key.secret_hash):
        raise InvalidToken("unknown API key")
    now = datetime.now(UTC)
    if key.revoked_at is not None:
        raise RevokedToken(f"the key {key.name!r} was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise ExpiredToken(f"the key {key.name!r} expired")
    await keys.touch(key.id, now)
    caller = caller_of(key)
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


def require(caller: Caller, kind: str, name: str) -> None:
    """Forbidden unless a grant covers `kind:name` (dataset, files or proxy)."""
    if not caller.may(kind, name):
        raise Forbidden(f"this key has no grant for {kind}:{name}")


async def load_link_secret(engine: AsyncEngine) -> bytes:
    """The secret that signs result links, made by the migrations and shared by every replica of the database."""
    async with engine.connect() as conn:
        value = await conn.scalar(select(ServiceSecret.value).where(ServiceSecret.name == "link"))
    if value is None:
        raise RuntimeError("the link secret is missing: run `exporter migrate`")
    return bytes.fromhex(value)


def sign_link(secret: bytes, job_id: str, expires: int) -> str:
    return hmac.new(secret, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def link_query(secret: bytes, job_id: str, ttl_seconds: float) -> str:
    """`expires=…&signature=…` for a result link valid `ttl_seconds` from now."""
    expires = int(time.time() + ttl_seconds)
    return f"expires={expires}&signature={sign_link(secret, job_id, expires)}"


def check_link(secret: bytes, job_id: str, expires: str, signature: str) -> None:
    """Raises Forbidden for a signature that does not match, LinkExpired for one whose time has passed."""
    if not expires.isdigit() or not hmac.compare_digest(sign_link(secret, job_id, int(expires)), signature):
        raise Forbidden("this link is not valid for this result")
    if int(expires) < time.time():
        raise LinkExpired("this link has expired: fetch the job again for a fresh one")
