"""Who is asking: a Bearer token, or a browser session's cookie, → the caller's key; and tokens refused in URLs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from exporter.access import sessions
from exporter.access.grants import ANONYMOUS, Caller, caller_of
from exporter.access.keys import Keys, refusal
from exporter.access.tokens import PREFIX, MalformedToken, parse_token, secret_matches
from exporter.errors import InvalidCsrfToken, InvalidToken, MissingToken, TokenInUrl, error_response
from exporter.models import ApiKey
from exporter.redaction import contains_token

log = logging.getLogger(__name__)

TOKEN_PARAMETER = "access_token"  # RFC 6750 §2.3, refused: URLs end up in logs
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RefuseTokensInUrls:
    """ASGI middleware: 400 token_in_url, before routing, on every path, for a URL that carries a token: a query
    parameter named `access_token`, a value starting with `exp_`, a token's shape anywhere in the query (a name,
    a list element, after a space; percent-decoded once or twice), or in the path (`;access_token=…` path
    parameters, a token as a segment). The answer never echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and token_in_url(scope):
            error = TokenInUrl("send the token in the Authorization header (Bearer), never in the URL: "
                               "URLs are written to logs; revoke a token that was sent this way")
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def token_in_url(scope: Scope) -> bool:
    query = scope.get("query_string", b"").decode("latin-1")
    if contains_token(query) or any(name == TOKEN_PARAMETER or value.startswith(PREFIX)
                                    for name, value in parse_qsl(query, keep_blank_values=True)):
        return True
    paths = (scope.get("path", ""), scope.get("raw_path", b"").decode("latin-1"))
    return any(contains_token(path) or f";{TOKEN_PARAMETER}=" in unquote(path).lower() for path in paths)


def refuse_tokens_in(parameters: Iterable[tuple[str, str]]) -> None:
    """Raises TokenInUrl for parameters that hold a token (a job's, sent in a body): what the same parameters
    would get in an export's URL, so that no job stores one."""
    if any(contains_token(name) or contains_token(value) or value.startswith(PREFIX)
           for name, value in parameters):
        raise TokenInUrl("a parameter holds an API token: send the token in the Authorization header only, "
                         "and revoke a token that was sent this way")


class Authenticator:
    """Finds the caller of a request. With auth off (`session_secret` None) everyone is ANONYMOUS."""

    def __init__(self, keys: Keys, session_secret: bytes | None) -> None:
        self.keys = keys
        self._secret = session_secret

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    async def authenticate(self, request: Request) -> Caller:
        """The caller of this request; ANONYMOUS when auth is off. A request without an Authorization header may
        speak through a browser session's cookie instead: the same key, loaded afresh, with a CSRF token required
        on state-changing methods. Raises MissingToken, InvalidToken (malformed, mistyped, unknown key or wrong
        secret: all alike, and as slow whether the key exists or not; a session that is forged or over),
        ExpiredToken, RevokedToken, InvalidCsrfToken. Sets request.state.caller (and, for a session, .csrf)."""
        if self._secret is None:
            return ANONYMOUS
        header = request.headers.get("authorization")
        if not header:
            session = request.cookies.get(sessions.COOKIE)
            if session is None:
                raise MissingToken("send an API key: Authorization: Bearer exp_…")
            key = await self._session_key(request, self._secret, session)
        else:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise InvalidToken("use the Bearer scheme: Authorization: Bearer exp_…")
            key = await self.verify_token(token.strip())
        await self.keys.touch(key.id, datetime.now(UTC))
        caller = caller_of(key)
        request.state.caller = caller
        return caller

    async def verify_token(self, token: str) -> ApiKey:
        """The usable key a token belongs to; raises InvalidToken, ExpiredToken or RevokedToken."""
        try:
            key_id, secret = parse_token(token)
        except MalformedToken as error:
            raise InvalidToken(str(error)) from None
        key = await self.keys.find(key_id)
        if key is None or not secret_matches(secret, key.secret_hash):
            raise InvalidToken("unknown API key")
        return _usable(key)

    def session_cookie(self, key_id: str, expires: int) -> str:
        """A session cookie's value for a key that signed in (see sessions.session_value)."""
        assert self._secret is not None, "sessions exist only with auth on"
        return sessions.session_value(self._secret, key_id, expires)

    def csrf_matches(self, session: str, token: str | None) -> bool:
        return self._secret is not None and sessions.csrf_matches(self._secret, session, token)

    async def _session_key(self, request: Request, secret: bytes, session: str) -> ApiKey:
        """The key a session cookie names, read now, so that a key revoked since sign-in ends its sessions at
        once."""
        key_id = sessions.session_key(secret, session, time.time())
        key = None if key_id is None else await self.keys.find(key_id)
        if key is None:
            raise InvalidToken("your session has ended or is not valid: sign in again")
        key = _usable(key)
        # The cookie rides along with any request the browser makes to this site, so a state-changing one must also
        # prove it comes from our own page: a token only that page was given (SameSite=Strict is the second line).
        if request.method not in SAFE_METHODS and not sessions.csrf_matches(
                secret, session, request.headers.get(sessions.CSRF_HEADER)):
            raise InvalidCsrfToken("this request needs the page's CSRF token (X-CSRF-Token): reload the page")
        request.state.csrf = sessions.csrf_token(secret, session)
        return key


def _usable(key: ApiKey) -> ApiKey:
    error = refusal(key, datetime.now(UTC))
    if error is not None:
        raise error
    return key
