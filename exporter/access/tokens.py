"""API tokens: `exp_` and 50 URL-safe base64 characters, a 9-byte key id, a 24-byte secret and a 4-byte checksum
(the first bytes of the SHA-256 of the two), so a mistyped token is refused before any database lookup. Only the
SHA-256 of the secret is stored; a high-entropy secret needs no slow hash. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "exp_"
ID_BYTES, SECRET_BYTES, CHECK_BYTES = 9, 24, 4
TOKEN_LENGTH = len(PREFIX) + (ID_BYTES + SECRET_BYTES + CHECK_BYTES) * 4 // 3 + 1  # unpadded base64: 50 chars
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


class MalformedToken(ValueError):
    """Not a token: wrong prefix, length, alphabet or checksum."""


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
