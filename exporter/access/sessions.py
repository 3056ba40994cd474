"""Browser sessions: a signed cookie that names an API key (never holds its token) until it expires, and the CSRF
token derived from it. Pure: no I/O; the secret is the `session` row of service_secrets."""

from __future__ import annotations

import hashlib
import hmac
import re

COOKIE = "exporter_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_VALUE = re.compile(r"([0-9a-f]{1,64})\.([0-9]{1,12})\.([0-9a-f]{64})")


def _sign(secret: bytes, purpose: str, text: str) -> str:
    return hmac.new(secret, f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()


def session_value(secret: bytes, key_id: str, expires: int) -> str:
    """The cookie's value: `{key id}.{expires, Unix seconds}.{HMAC-SHA256 of both}`."""
    return f"{key_id}.{expires}.{_sign(secret, 'session', f'{key_id}.{expires}')}"


def session_key(secret: bytes, value: str, now: float) -> str | None:
    """The key id a cookie value speaks for; None if it is malformed, not signed with `secret`, or expired."""
    match = _VALUE.fullmatch(value)
    if match is None:
        return None
    key_id, expires, signature = match.groups()
    if not hmac.compare_digest(_sign(secret, "session", f"{key_id}.{expires}"), signature):
        return None
    return key_id if int(expires) > now else None


def csrf_token(secret: bytes, value: str) -> str:
    """The token a page sends back with a state-changing request: bound to this one session, so a token seen
    in another session (or after signing in again) does not work."""
    return _sign(secret, "csrf", value)


def csrf_matches(secret: bytes, value: str, token: str | None) -> bool:
    """Constant-time, on bytes: compare_digest raises TypeError for a str that is not ASCII (a header or form
    field can hold any character), which must be a mismatch, not a 500."""
    return token is not None and hmac.compare_digest(csrf_token(secret, value).encode(),
                                                     token.encode("utf-8", "replace"))
