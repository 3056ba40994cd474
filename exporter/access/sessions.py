"""Browser sessions: a signed cookie that names an API key (never holds its token) and one live session row, and
the CSRF token derived from it. The cookie's functions are pure; Sessions is the `sessions` table, which makes a
sign-out end the session on every replica. The secret is the `session` row of service_secrets."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.models import BrowserSession

COOKIE = "exporter_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_VALUE = re.compile(r"([0-9a-f]{1,64})\.([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{64})")


def _sign(secret: bytes, purpose: str, text: str) -> str:
    return hmac.new(secret, f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()


def new_session_id() -> str:
    return secrets.token_hex(16)


def session_value(secret: bytes, key_id: str, session_id: str, expires: int) -> str:
    """The cookie's value: `{key id}.{session id}.{expires, Unix seconds}.{HMAC-SHA256 of the three}`."""
    text = f"{key_id}.{session_id}.{expires}"
    return f"{text}.{_sign(secret, 'session', text)}"


def session_key(secret: bytes, value: str, now: float) -> tuple[str, str] | None:
    """The key id and session id a cookie value speaks for; None if it is malformed, not signed with `secret`, or
    expired. Whether the session is still live (not signed out) is the table's to say (Sessions.live)."""
    match = _VALUE.fullmatch(value)
    if match is None:
        return None
    key_id, session_id, expires, signature = match.groups()
    if not hmac.compare_digest(_sign(secret, "session", f"{key_id}.{session_id}.{expires}"), signature):
        return None
    return (key_id, session_id) if int(expires) > now else None


def csrf_token(secret: bytes, value: str) -> str:
    """The token a page sends back with a state-changing request: bound to this one session, so a token seen
    in another session (or after signing in again) does not work."""
    return _sign(secret, "csrf", value)


def csrf_matches(secret: bytes, value: str, token: str | None) -> bool:
    """Constant-time, on bytes: compare_digest raises TypeError for a str that is not ASCII (a header or form
    field can hold any character), which must be a mismatch, not a 500."""
    return token is not None and hmac.compare_digest(csrf_token(secret, value).encode(),
                                                     token.encode("utf-8", "replace"))


class Sessions:
    """The sessions table: a row per live session, deleted at sign-out; expired rows are pruned at each sign-in,
    so the table holds at most the sessions started within one session's lifetime."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def start(self, key_id: str, expires: int) -> str:
        """Record a new live session of this key until `expires` (Unix seconds); its id."""
        session_id = new_session_id()
        async with self.engine.begin() as conn:
            await conn.execute(delete(BrowserSession).where(BrowserSession.expires_at <= datetime.now(UTC)))
            await conn.execute(insert(BrowserSession).values(
                id=session_id, key_id=key_id, expires_at=datetime.fromtimestamp(expires, UTC)))
        return session_id

    async def live(self, session_id: str, key_id: str) -> bool:
        """Whether this session of this key was started and has neither ended nor expired."""
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(BrowserSession.id).where(
                BrowserSession.id == session_id, BrowserSession.key_id == key_id,
                BrowserSession.expires_at > datetime.now(UTC)))
        return found is not None

    async def end(self, session_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(BrowserSession).where(BrowserSession.id == session_id))
