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
from exporter.access.throttle import FailedAuthThrottle
from exporter.access.tokens import PREFIX, MalformedToken, parse_token, secret_matches
from exporter.errors import InvalidCsrfToken, InvalidToken, MissingToken, TokenInUrl, Unauthorized, error_response
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


def _holds_token(name: str, value: str) -> bool:
    return name == TOKEN_PARAMETER or value.startswith(PREFIX) or contains_token(name) or contains_token(value)


def token_in_url(scope: Scope) -> bool:
    query = scope.get("query_string", b"").decode("latin-1")
    if contains_token(query) or any(_holds_token(name, value)
                                    for name, value in parse_qsl(query, keep_blank_values=True)):
        return True
    paths = (scope.get("path", ""), scope.get("raw_path", b"").decode("latin-1"))
    return any(contains_token(path) or f";{TOKEN_PARAMETER}=" in unquote(path).lower() for path in paths)


def refuse_tokens_in(parameters: Iterable[tuple[str, str]]) -> None:
    """Raises TokenInUrl for parameters that hold a token (a job's, sent in a body): what the same parameters
    would get in an export's URL, so that no job stores one."""
    if any(_holds_token(name, value) for name, value in parameters):
        raise TokenInUrl("a parameter holds an API token: send the token in the Authorization header only, "
                         "and revoke a token that was sent this way")


class Authenticator:
    """Finds the caller of a request. With auth off (`session_secret` None) everyone is ANONYMOUS. Failures go
    through `throttle` (see throttle.py), by the client's address."""

    def __init__(self, keys: Keys, session_secret: bytes | None, throttle: FailedAuthThrottle) -> None:
        self.keys = keys
        self._secret = session_secret
        self._sessions = sessions.Sessions(keys.engine)
        self._throttle = throttle

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    async def authenticate(self, request: Request) -> Caller:
        """The caller of this request; ANONYMOUS when auth is off. A request without an Authorization header may
        speak through a browser session's cookie instead: the same key, loaded afresh, with a CSRF token required
        on state-changing methods. Raises MissingToken, InvalidToken (malformed, mistyped, unknown key or wrong
        secret: all alike, and as slow whether the key exists or not; a session that is forged or over),
        ExpiredToken, RevokedToken, InvalidCsrfToken; TooManyFailedAttempts instead of those 401s once the client's
        address has failed too often. Sets request.state.caller (and, for a session, .csrf)."""
        if self._secret is None:
            return ANONYMOUS
        try:
            key = await self._key(request, self._secret)
        except Unauthorized as error:
            raise await self._throttle.refusal(_address(request), error) from None
        await self.keys.touch(key.id, datetime.now(UTC))
        caller = caller_of(key)
        request.state.caller = caller
        return caller

    async def _key(self, request: Request, secret: bytes) -> ApiKey:
        header = request.headers.get("authorization")
        if not header:
            session = request.cookies.get(sessions.COOKIE)
            if session is None:
                raise MissingToken("send an API key: Authorization: Bearer exp_…")
            return await self._session_key(request, secret, session)
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise InvalidToken("use the Bearer scheme: Authorization: Bearer exp_…")
        return await self.verify_token(token.strip())

    async def sign_in(self, request: Request, token: str) -> ApiKey:
        """The usable key of a token given to the sign-in form; a failure is throttled like a 401 (see
        authenticate)."""
        try:
            return await self.verify_token(token)
        except Unauthorized as error:
            raise await self._throttle.refusal(_address(request), error) from None

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

    async def start_session(self, key_id: str, expires: int) -> str:
        """A new live session for a key that signed in, until `expires` (Unix seconds): its cookie's value (see
        sessions.session_value)."""
        assert self._secret is not None, "sessions exist only with auth on"
        session_id = await self._sessions.start(key_id, expires)
        return sessions.session_value(self._secret, key_id, session_id, expires)

    async def end_session(self, session: str) -> None:
        """End the session a cookie names, on every replica (its row goes); a forged or expired cookie names
        none."""
        named = None if self._secret is None else sessions.session_key(self._secret, session, time.time())
        if named is not None:
            await self._sessions.end(named[1])

    def require_csrf(self, request: Request) -> None:
        """For a request whose method is safe but which changes state all the same (a GET with `Prefer:
        respond-async` creates a job): a session must show its page's CSRF token, as it must for a POST; a Bearer
        caller, and auth off, need none. Raises InvalidCsrfToken."""
        session = request.cookies.get(sessions.COOKIE)
        if self._secret is None or request.headers.get("authorization") or session is None:
            return
        _check_csrf(self._secret, session, request)

    def csrf_matches(self, session: str, token: str | None) -> bool:
        return self._secret is not None and sessions.csrf_matches(self._secret, session, token)

    async def _session_key(self, request: Request, secret: bytes, session: str) -> ApiKey:
        """The key a live session cookie names, read now, so that a key revoked since sign-in ends its sessions at
        once; a session signed out (on any replica) is over."""
        named = sessions.session_key(secret, session, time.time())
        live = named is not None and await self._sessions.live(named[1], named[0])
        key = await self.keys.find(named[0]) if named is not None and live else None
        if key is None:
            raise InvalidToken("your session has ended or is not valid: sign in again")
        key = _usable(key)
        # The cookie rides along with any request the browser makes to this site, so a state-changing one must also
        # prove it comes from our own page: a token only that page was given (SameSite=Strict is the second line).
        if request.method not in SAFE_METHODS:
            _check_csrf(secret, session, request)
        request.state.csrf = sessions.csrf_token(secret, session)
        return key


def _check_csrf(secret: bytes, session: str, request: Request) -> None:
    if not sessions.csrf_matches(secret, session, request.headers.get(sessions.CSRF_HEADER)):
        raise InvalidCsrfToken("this request needs the page's CSRF token (X-CSRF-Token): reload the page")


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _usable(key: ApiKey) -> ApiKey:
    error = refusal(key, datetime.now(UTC))
    if error is not None:
        raise error
    return key
