"""Signed result links: `?expires=…&signature=…` (HMAC-SHA256 with the service's `link` secret) that work without
an Authorization header, for as long as they are fresh and the key they speak for is usable."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import UTC, datetime

from exporter.access.grants import ANONYMOUS, Caller, caller_of
from exporter.access.keys import Keys, refusal
from exporter.errors import Forbidden, LinkExpired, RevokedToken

# Unix seconds as the link was made: ASCII digits only (str.isdigit() and int() also take '²' or '٣', and int()
# refuses more than 4,300 digits), and 12 at most, which is past the year 30000.
EXPIRES = re.compile(r"[0-9]{1,12}")


def sign_link(secret: bytes, job_id: str, expires: int) -> str:
    return hmac.new(secret, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def link_query(secret: bytes, job_id: str, ttl_seconds: float) -> str:
    """`expires=…&signature=…` for a result link valid `ttl_seconds` from now."""
    expires = int(time.time() + ttl_seconds)
    return f"expires={expires}&signature={sign_link(secret, job_id, expires)}"


def check_link(secret: bytes, job_id: str, expires: str, signature: str) -> None:
    """Raises Forbidden for a signature that does not match (or an `expires` or `signature` that is not what a
    link holds, whatever its characters), LinkExpired for one whose time has passed."""
    # compare_digest takes str only when both are ASCII: compare the bytes, so that 'é' is a mismatch, not a 500.
    if not EXPIRES.fullmatch(expires) or not hmac.compare_digest(
            sign_link(secret, job_id, int(expires)).encode(), signature.encode("utf-8", "replace")):
        raise Forbidden("this link is not valid for this result")
    if int(expires) < time.time():
        raise LinkExpired("this link has expired: fetch the job again for a fresh one")


async def link_caller(keys: Keys, owner_key: str | None) -> Caller:
    """The key a signed link speaks for: its job's owner (ANONYMOUS when auth was off), which must be usable."""
    if owner_key is None:
        return ANONYMOUS
    key = await keys.find(owner_key)
    if key is None or refusal(key, datetime.now(UTC)) is not None:
        raise RevokedToken("the key this link was made for was revoked or has expired")
    return caller_of(key)
