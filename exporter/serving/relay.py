"""Named upstreams for /proxy: one pooled AsyncClient each (over transport.UpstreamTransport), a cap on concurrent
relays, upstream URLs that stay under the base URL, header allow-lists both ways, and the upstream's body relayed as
it arrives."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote, quote_from_bytes, unquote, urlsplit

import httpx

from exporter import __version__
from exporter.config import HOP_BY_HOP_HEADERS, UpstreamConfig
from exporter.errors import (
    InvalidPath,
    TooManyRelays,
    UnknownUpstream,
    UpstreamRedirect,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from exporter.metrics import UPSTREAM_ERRORS
from exporter.serving.files import SANDBOX, is_dot_segment, safe_segments
from exporter.serving.transport import UpstreamTransport

log = logging.getLogger(__name__)

# What an upstream's answer may pass on to the caller: the representation, its validators, ranges and caching.
# Not Set-Cookie (the upstream session is the service's, not the caller's), WWW-Authenticate (a challenge to the
# service's credentials), Server, Date (uvicorn sends its own) or anything else the upstream adds.
RELAYED_HEADERS = frozenset({
    "content-type", "content-length", "content-disposition", "content-encoding", "content-language", "etag",
    "last-modified", "accept-ranges", "content-range", "cache-control", "expires", "vary", "retry-after",
})
# Lists (RFC 9110 §5.3): repeated fields are joined with commas; for the others the first field counts.
LIST_HEADERS = frozenset({"content-encoding", "content-language", "accept-ranges", "cache-control", "vary"})
# pchar (RFC 3986 §3.3) that stays literal in an upstream path segment; "%" and the rest are percent-encoded.
SEGMENT_SAFE = "!$&'()*+,;=:@"
# The raw query is passed on as it came; only bytes that may not appear in a query at all get encoded.
QUERY_SAFE = "!$&'()*+,;=:@/?%"
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # RFC 3986 §3.1
class Upstream:
    """A named upstream: its settings, the AsyncClient whose pool serves every relay to it (closed by aclose()),
    and the number of relays in progress."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.relays = 0
        self.base = httpx.URL(config.base_url)
        self.base_path = urlsplit(config.base_url).path  # "" or "/a/b": the config drops a trailing slash
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.read_timeout_seconds, connect=config.connect_timeout_seconds,
                                  pool=config.connect_timeout_seconds),
            transport=UpstreamTransport(
                # As many connections as relays, so a relay that got its slot never waits for a connection.
                httpx.Limits(max_connections=config.max_concurrent_relays,
                             max_keepalive_connections=config.max_concurrent_relays),
                # https upstreams are verified against certifi's CA bundle, never one named by the environment.
                httpx.create_ssl_context(verify=True, trust_env=False)),
            follow_redirects=False,
            # A jar that keeps nothing: an upstream's Set-Cookie must not ride along on the next caller's request.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
            trust_env=False,  # no proxy, netrc or CA from the environment: the config says where requests go
        )

    async def aclose(self) -> None:
        await self.client.aclose()


def create_upstreams(configs: Mapping[str, UpstreamConfig]) -> dict[str, Upstream]:
    """One Upstream per config; the caller closes each with aclose() (the app's lifespan does)."""
    return {name: Upstream(config) for name, config in configs.items()}


def find_upstream(upstreams: Mapping[str, Upstream], name: str) -> Upstream:
    upstream = upstreams.get(name)
    if upstream is None:
        raise UnknownUpstream(f"no upstream named {name!r}")
    return upstream


def upstream_url(upstream: Upstream, path: str, query: bytes) -> httpx.URL:
    """The base URL joined with `path` (percent-decoded once, by the server) and the raw `query`.

    Raises InvalidPath for anything that could leave the base URL's path: what safe_segments refuses (NUL,
    backslash, leading slash, empty, `.` or `..` segments, also with path parameters: `..;x`), a first segment
    that reads as a scheme (`http:`), and a segment that decodes once more into one of those, a slash, a
    backslash or NUL (`%252e%252e`, `..%253b`), for an upstream that decodes twice. Each segment is
    percent-encoded again for the upstream; a trailing slash is kept.
    """
    segments = safe_segments(path)
    if segments and SCHEME.match(segments[0]):
        raise InvalidPath("the path starts like a URL scheme")
    for segment in segments:
        twice = unquote(segment)
        if twice != segment and (is_dot_segment(twice) or any(c in twice for c in "/\\\x00")):
            raise InvalidPath("the path has a percent-encoded '.', '..', '/', '\\' or NUL segment")
    raw_path = upstream.base_path + "/" + "/".join(quote(segment, safe=SEGMENT_SAFE) for segment in segments)
    if segments and path.endswith("/"):
        raw_path += "/"
    if query:
        raw_path += "?" + quote_from_bytes(query, safe=QUERY_SAFE)
    try:
        url = upstream.base.copy_with(raw_path=raw_path.encode("ascii"))
    except httpx.InvalidURL:
        raise InvalidPath("the path cannot be sent to the upstream") from None
    if not url.raw_path.decode("ascii").startswith(upstream.base_path + "/"):
        raise InvalidPath("the path leaves the upstream's base URL")  # a safety net: the checks above prevent it
    return url


def outgoing_headers(config: UpstreamConfig, incoming: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream request's headers: the caller's `forward_headers` (repeats kept) unless its Connection header
    names them (hop-by-hop, RFC 9110 §7.6.1), then the configured ones, which win over a forwarded header of the
    same name. Accept-Encoding is identity unless configured or forwarded, so the bytes relayed are the
    representation itself."""
    incoming = list(incoming)
    configured = {name.lower() for name in config.headers}
    excluded = configured | connection_options(value for name, value in incoming if name.lower() == "connection")
    forwarded = [(name, value) for name, value in incoming
                 if name.lower() in config.forward_headers and name.lower() not in excluded]
    defaults = {"user-agent": f"exporter/{__version__}", "accept-encoding": "identity"}
    present = {name.lower() for name, _ in forwarded} | configured
    return [*((name, value) for name, value in defaults.items() if name not in present), *forwarded,
            *config.headers.items()]


def connection_options(values: Iterable[str]) -> set[str]:
    """The header names that Connection header values list, in lower case: hop-by-hop for this message."""
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def relayed_headers(upstream: Upstream, response: httpx.Response, proxy_prefix: str) -> dict[str, str]:
    """The allow-listed headers of the upstream's answer, without hop-by-hop headers, headers that its Connection
    header names (RFC 9110 §7.6.1) and any header the service adds upstream (credentials stay inside), plus
    X-Accel-Buffering: no. A redirect's Location is rewritten under `proxy_prefix` (see proxy_location)."""
    excluded = (HOP_BY_HOP_HEADERS | connection_options(response.headers.get_list("connection"))
                | {name.lower() for name in upstream.config.headers})
    values: dict[str, list[str]] = {}
    for raw_name, raw_value in response.headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name in RELAYED_HEADERS and name not in excluded:
            values.setdefault(name, []).append(raw_value.decode("latin-1"))
    headers = {name: ", ".join(found) if name in LIST_HEADERS else found[0] for name, found in values.items()}
    if response.status_code in (204, 304):
        headers.pop("content-length", None)  # no body follows (RFC 9110 §8.6), and the server would wait for one
    location = response.headers.get("location")
    if 300 <= response.status_code < 400 and response.status_code != 304 and location is not None:
        headers["location"] = proxy_location(upstream, response.url, location, proxy_prefix)
    headers["x-accel-buffering"] = "no"  # nginx-like proxies in front must not buffer an event stream
    # An upstream's HTML or SVG would otherwise run as a page of this origin (see files.SANDBOX).
    headers.update((name.lower(), value) for name, value in SANDBOX.items())
    if not upstream.config.inline:
        headers["content-disposition"] = as_attachment(headers.get("content-disposition"))
    return headers


def as_attachment(disposition: str | None) -> str:
    """An upstream's Content-Disposition with its type made `attachment`, its parameters (a filename) kept."""
    parameters = disposition.partition(";")[2].strip() if disposition else ""
    return f"attachment; {parameters}" if parameters else "attachment"


def proxy_location(upstream: Upstream, request_url: httpx.URL, location: str, proxy_prefix: str) -> str:
    """The caller's Location for an upstream redirect, which is never followed: the same path under
    `proxy_prefix` (e.g. /proxy/store/) if the target stays under the base URL (same scheme, host and port, path
    below the base path). Raises UpstreamRedirect otherwise, without naming the target."""
    target = request_url.join(location)  # httpx has parsed it already: an invalid Location fails the request
    if (target.scheme, target.host, target.port, target.userinfo) == (
            upstream.base.scheme, upstream.base.host, upstream.base.port, b""):
        path, mark, query = target.raw_path.decode("ascii").partition("?")
        if path.startswith(upstream.base_path + "/"):
            return proxy_prefix + path[len(upstream.base_path) + 1:] + mark + query
    log.warning("upstream %s redirected outside its base URL to %s; answered 502", upstream.config.name, location)
    UPSTREAM_ERRORS.labels(upstream.config.name, "redirect").inc()
    raise UpstreamRedirect(f"upstream {upstream.config.name} redirected outside its base URL")


class UpstreamResponse:
    """An upstream's answer with its status and the headers to relay, its body not yet read. It holds one of the
    upstream's relay slots and, until its body has been read, a connection: close it with aclose(), or read it
    through iter_upstream(), which closes it."""

    def __init__(self, upstream: Upstream, response: httpx.Response, headers: dict[str, str]) -> None:
        self.upstream = upstream
        self.response = response
        self.status_code = response.status_code
        self.headers = headers
        self._closed = False

    async def aclose(self) -> None:
        """Free the slot and close the upstream response (its connection too, if the body was not read to the
        end); idempotent."""
        if not self._closed:
            self._closed = True
            self.upstream.relays -= 1  # before the await, which a cancellation could interrupt
            await self.response.aclose()


async def open_upstream(upstream: Upstream, method: str, path: str, query: bytes,
                        incoming: Iterable[tuple[str, str]], proxy_prefix: str) -> UpstreamResponse:
    """Send `method` for `path` and `query` (see upstream_url) with the caller's `incoming` headers filtered (see
    outgoing_headers), and return the answer once its status and headers have arrived, before any body byte is
    read, so that every failure here becomes a JSON error. The caller must close the result.

    Raises InvalidPath; TooManyRelays (429, Retry-After: 1) when max_concurrent_relays are in progress;
    UpstreamTimeout when the upstream does not connect or answer within its timeouts; UpstreamUnreachable when
    the connection fails or the answer is not HTTP; UpstreamRedirect for a redirect out of the base URL.
    """
    name = upstream.config.name
    url = upstream_url(upstream, path, query)
    if upstream.relays >= upstream.config.max_concurrent_relays:
        raise TooManyRelays(f"upstream {name} has {upstream.config.max_concurrent_relays} relays in progress")
    upstream.relays += 1
    try:
        # Bytes as received: Starlette decoded the caller's header values as latin-1, httpx would encode as ASCII.
        headers = [(header.encode("latin-1"), value.encode("latin-1"))
                   for header, value in outgoing_headers(upstream.config, incoming)]
        request = upstream.client.build_request(method, url, headers=headers)
        try:
            response = await upstream.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            log.warning("upstream %s: %s %s timed out: %r", name, method, url.path, exc)
            UPSTREAM_ERRORS.labels(name, "timeout").inc()
            raise UpstreamTimeout(f"upstream {name} did not answer in time") from None
        except httpx.TransportError as exc:
            log.warning("upstream %s: %s %s failed: %r", name, method, url.path, exc)
            UPSTREAM_ERRORS.labels(name, "unreachable").inc()
            raise UpstreamUnreachable(f"upstream {name} is unreachable") from None
        try:
            return UpstreamResponse(upstream, response, relayed_headers(upstream, response, proxy_prefix))
        except BaseException:
            await response.aclose()
            raise
    except BaseException:
        upstream.relays -= 1
        raise


def iter_upstream(response: UpstreamResponse) -> AsyncIterator[bytes]:
    """Yield the upstream's body as it arrives, each chunk as soon as it is read from the socket (up to
    UPSTREAM_READ_BYTES at a time), undecoded: a Content-Encoding is relayed with its bytes, never undone
    (aiter_raw, not aiter_bytes). The upstream is read only as fast as the chunks are taken, so a slow caller pauses it.

    The response is closed and its slot freed however the iteration ends, also by aclose() before the first
    chunk. A read that fails raises UpstreamUnreachable, one that waits longer than read_timeout_seconds
    UpstreamTimeout: a JSON error before the first chunk, an aborted transfer after it.
    """
    return _UpstreamChunks(response)


class _UpstreamChunks:
    """iter_upstream's iterator: a class, not an async generator, because aclose() on a generator that never
    started skips its `finally`, which would leave the connection open and the slot taken."""

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response
        self._chunks = response.response.aiter_raw()
        self._relayed_bytes = 0

    def __aiter__(self) -> _UpstreamChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            await self.aclose()
            raise
        except httpx.TransportError as exc:
            await self.aclose()
            raise self._failure(exc) from None
        self._relayed_bytes += len(chunk)
        return chunk

    def _failure(self, exc: httpx.TransportError) -> UpstreamTimeout | UpstreamUnreachable:
        name = self._response.upstream.config.name
        UPSTREAM_ERRORS.labels(name, "broke_off").inc()
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"upstream {name} stopped sending after {self._relayed_bytes} bytes ({exc!r})")
        return UpstreamUnreachable(f"upstream {name} broke off its answer after {self._relayed_bytes} bytes "
                                   f"({exc!r})")

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()  # type: ignore[attr-defined]
        finally:
            await self._response.aclose()
