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

from exporter.access import sessions
from exporter.access.keys import ANONYMOUS, PREFIX, Caller, Keys, MalformedToken, caller_of, parse_token, secret_matches
from exporter.errors import (
    ExpiredToken,
    Forbidden,
    InvalidCsrfToken,
    InvalidToken,
    LinkExpired,
    MissingToken,
    RevokedToken,
    TokenInUrl,
    error_response,
)
from exporter.models import ApiKey, ServiceSecret

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
    """The caller of this request; ANONYMOUS when auth is off. A request without an Authorization header may
    speak through a browser session's cookie instead: the same key, loaded afresh, with a CSRF token required on
    state-changing methods. Raises MissingToken, InvalidToken (malformed, mistyped, unknown key or wrong secret:
    all alike, and as slow whether the key exists or not; a session that is forged or over), ExpiredToken,
    RevokedToken, InvalidCsrfToken."""
    if request.app.state.settings.auth == "off":
        return ANONYMOUS
    header = request.headers.get("authorization")
    keys: Keys = request.app.state.keys
    if not header:
        session = request.cookies.get(sessions.COOKIE)
        if session is None:
            raise MissingToken("send an API key: Authorization: Bearer exp_…")
        key = await _session_key(request, keys, session)
    else:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise InvalidToken("use the Bearer scheme: Authorization: Bearer exp_…")
        key = await verify_token(keys, token.strip())
    await keys.touch(key.id, datetime.now(UTC))
    caller = caller_of(key)
    request.state.caller = caller
    return caller


async def verify_token(keys: Keys, token: str) -> ApiKey:
    """The usable key a token belongs to; raises InvalidToken, ExpiredToken or RevokedToken."""
    try:
        key_id, secret = parse_token(token)
    except MalformedToken as error:
        raise InvalidToken(str(error)) from None
    key = await keys.find(key_id)
    if key is None or not secret_matches(secret, key.secret_hash):
        raise InvalidToken("unknown API key")
    return _usable(key)


def _usable(key: ApiKey) -> ApiKey:
    if key.revoked_at is not None:
        raise RevokedToken(f"the key {key.name!r} was revoked")
    if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
        raise ExpiredToken(f"the key {key.name!r} expired")
    return key


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _session_key(request: Request, keys: Keys, session: str) -> ApiKey:
    """The key a session cookie names, read now, so that a key revoked since sign-in ends its sessions at once."""
    secret: bytes = request.app.state.session_secret
    key_id = sessions.session_key(secret, session, time.time())
    key = None if key_id is None else await keys.find(key_id)
    if key is None:
        raise InvalidToken("your session has ended or is not valid: sign in again")
    key = _usable(key)
    # The cookie rides along with any request the browser makes to this site, so a state-changing one must also
    # prove it comes from our own page: a token only that page was given (SameSite=Strict is the second line).
    if request.method not in SAFE_METHODS and not sessions.csrf_matches(
            secret, session, request.headers.get(sessions.CSRF_HEADER)):
        raise InvalidCsrfToken("this request needs the page's CSRF token (X-CSRF-Token): reload the page")
    request.state.session = session
    return key


CallerDep = Annotated[Caller, Depends(authenticate)]


def require(caller: Caller, kind: str, name: str) -> None:
    """Forbidden unless a grant covers `kind:name` (dataset, files or proxy)."""
    if not caller.may(kind, name):
        raise Forbidden(f"this key has no grant for {kind}:{name}")


async def load_link_secret(engine: AsyncEngine) -> bytes:
    """The secret that signs result links, made by the migrations and shared by every replica of the database."""
    return await load_secret(engine, "link")


async def load_secret(engine: AsyncEngine, name: str) -> bytes:
    """A secret the migrations made (`link`, `session`), shared by every replica of the database."""
    async with engine.connect() as conn:
        value = await conn.scalar(select(ServiceSecret.value).where(ServiceSecret.name == name))
    if value is None:
        raise RuntimeError(f"the {name} secret is missing: run `exporter migrate`")
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
