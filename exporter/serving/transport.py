"""The relay's httpx transport: httpcore's connection pool over a network backend that reads up to
UPSTREAM_READ_BYTES per socket read, where httpx's own transport reads 64 KiB."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

# What one read from an upstream's socket may return. httpcore asks for 64 KiB; each read is also an event-loop
# turn, a pass through h11 and httpx's iterators, and one send to the client, so larger reads relay faster (issue
# 13). The event loop receives at most about 256 KB per recv (uvloop 256,000 bytes, asyncio 256 KiB), so a larger
# size gains nothing.
UPSTREAM_READ_BYTES = 256 * 1024
# httpcore's errors as httpx raises them (what its own transport does), the most specific first.
HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout), (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout), (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException), (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError), (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError), (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol), (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError), (httpcore.ProtocolError, httpx.ProtocolError),
)


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """A network backend whose streams read up to UPSTREAM_READ_BYTES at a time, whatever httpcore asks for:
    `backend`'s streams (httpcore's own AnyIO backend), wrapped. httpx has no setting for httpcore's read size, but
    httpcore's connection pool takes a network backend."""

    # The `timeout` parameters (ASYNC109) are httpcore's interface, passed on as they come.

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return LargeReadStream(await self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return LargeReadStream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class LargeReadStream(httpcore.AsyncNetworkStream):
    """`stream`, except that a read returns up to UPSTREAM_READ_BYTES (or `max_bytes`, if larger). h11 keeps what
    it has not parsed yet, so reading further than the message is harmless."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._stream.read(max(max_bytes, UPSTREAM_READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return LargeReadStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """httpx's transport for one upstream: an httpcore connection pool (HTTP/1.1, no proxy) over LargeReadBackend,
    with httpcore's errors raised as httpx's. What httpx's own AsyncHTTPTransport does, which takes no network
    backend. Timeouts come with each request (its extensions), as httpx sets them."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=LargeReadBackend(httpcore.AnyIOBackend()))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                           target=request.url.raw_path)
        with httpx_errors():
            response = await self._pool.handle_async_request(httpcore.Request(
                request.method, url, headers=request.headers.raw, content=request.stream,
                extensions=request.extensions))
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(response.status, headers=response.headers, extensions=response.extensions,
                              stream=_UpstreamBody(response.stream))

    async def aclose(self) -> None:
        await self._pool.aclose()


class _UpstreamBody(httpx.AsyncByteStream):
    """httpcore's response body, which returns the connection to the pool (or closes it) on aclose()."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]


@contextmanager
def httpx_errors() -> Iterator[None]:
    """Raise an httpcore error as the httpx error that httpx's own transport would raise."""
    try:
        yield
    except Exception as exc:
        for core_error, error in HTTPCORE_ERRORS:
            if isinstance(exc, core_error):
                raise error(str(exc)) from exc
        raise


