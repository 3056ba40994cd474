"""Upstream servers for the proxy tests, all real servers on 127.0.0.1: an ASGI origin (echo, gzip, redirects, an
event stream) under uvicorn, the service's own /files as a file server with ranges, and raw asyncio servers for
upstreams that misbehave byte by byte (stall, drop mid-body, never answer, stream endlessly)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from exporter.app import create_app
from exporter.cli.main import migrate
from exporter.config import Settings
from tests.servers import ServerThread, free_port

PLAIN = b"".join(b"line %d of a compressible text\n" % n for n in range(20_000))
GZIPPED = gzip.compress(PLAIN, mtime=0)


class Origin:
    """An ASGI upstream that records every request it gets and answers on:

    - /echo/{path}: the request as JSON (method, raw path, query, headers), with a mixed bag of response headers:
      allow-listed ones, hop-by-hop ones, one named by its Connection header, Set-Cookie, and the credential it was
      sent echoed back;
    - /gzip: PLAIN gzipped, with Content-Encoding and the compressed length, whatever was asked;
    - /negotiated: gzipped only if Accept-Encoding allows it;
    - /redirect?to=URL&status=N: a redirect to URL (relative or absolute);
    - /events: a text/event-stream that sends one event, then waits for `release` before the second and the end.
    """

    def __init__(self) -> None:
        self.url = ""  # set once served
        self.requests: list[Request] = []
        self.release = threading.Event()
        self.events_finished = threading.Event()
        self.app = Starlette(routes=[
            Route("/base/echo/{path:path}", self.echo, methods=["GET", "HEAD"]),
            Route("/base/gzip", self.gzipped, methods=["GET", "HEAD"]),
            Route("/base/negotiated", self.negotiated),
            Route("/base/redirect", self.redirect, methods=["GET", "HEAD"]),
            Route("/base/events", self.events),
            Route("/{path:path}", self.outside_base),
        ])

    async def echo(self, request: Request) -> Response:
        self.requests.append(request)
        body = {"method": request.method, "raw_path": request.scope["raw_path"].decode("latin-1"),
                "query": request.scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]}
        return JSONResponse(body, headers={
            "ETag": '"v1"', "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT", "Cache-Control": "max-age=60",
            "Vary": "Accept", "Content-Disposition": 'attachment; filename="echo.json"', "Content-Language": "en",
            "Set-Cookie": "session=upstream-session; HttpOnly", "Connection": "X-Hop", "X-Hop": "hop",
            "Keep-Alive": "timeout=5", "Proxy-Authenticate": "Basic", "Upgrade": "h2c", "Trailer": "X-Checksum",
            "Server": "origin/1.0", "X-Internal-Host": "db7.internal",
            "Authorization": request.headers.get("authorization", ""),
            "X-Api-Key": request.headers.get("x-api-key", ""),
        })

    async def gzipped(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(GZIPPED, media_type="text/plain", headers={"Content-Encoding": "gzip", "ETag": '"gz"'})

    async def negotiated(self, request: Request) -> Response:
        self.requests.append(request)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(GZIPPED, media_type="text/plain",
                            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return Response(PLAIN, media_type="text/plain", headers={"Vary": "Accept-Encoding"})

    async def redirect(self, request: Request) -> Response:
        self.requests.append(request)
        status = int(request.query_params.get("status", "302"))
        return Response(b"moved", status_code=status, headers={"Location": request.query_params["to"]})

    async def events(self, request: Request) -> Response:
        self.requests.append(request)

        async def stream() -> AsyncIterator[bytes]:
            yield b"event: first\ndata: 1\n\n"
            await anyio.to_thread.run_sync(self.release.wait, 20, abandon_on_cancel=True)
            yield b"event: second\ndata: 2\n\n"
            self.events_finished.set()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def outside_base(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(b"outside the base path: must never be relayed", status_code=200)


def files_upstream(directory: Path, database: Path) -> ServerThread:
    """The service's own /files, serving `directory` as root `r`: a file server with ranges, ETags and conditional
    requests. Start it with `with`."""
    url = f"sqlite+aiosqlite:///{database}"
    migrate(url)
    settings = Settings.from_dict({"database_url": url, "auth": "off", "job_workers": 0,
                                   "files": {"roots": {"r": str(directory)}}})
    return ServerThread(create_app(settings))


class Connection:
    """One connection to a RawServer: the request head as received, the streams, and whether the peer closed it."""

    def __init__(self, server: RawServer, head: bytes, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server, self.head, self.reader, self.writer = server, head, reader, writer
        self.closed_by_peer = False

    async def until_peer_closes(self) -> None:
        """Wait until the client (the relay) closes the connection."""
        while await self.reader.read(65536):
            pass
        self.closed_by_peer = True

    async def send(self, data: bytes, body_bytes: int = 0) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.server.bytes_sent += body_bytes


Handler = Callable[[Connection], Awaitable[None]]


class RawServer:
    """An asyncio server on 127.0.0.1 port 0 in its own thread; `handler(connection)` answers each connection byte
    by byte. Records request heads, body bytes sent, and how many connections the peer closed. Use as a context
    manager; connections still open are closed on exit."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[bytes] = []
        self.bytes_sent = 0
        self.peer_closed = 0
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()
        writers: list[asyncio.StreamWriter] = []

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            tasks.add(task)  # type: ignore[arg-type]
            writers.append(writer)
            connection = None
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                connection = Connection(self, head, reader, writer)
                await self._handler(connection)
            except (ConnectionError, asyncio.IncompleteReadError):
                if connection is not None:
                    connection.closed_by_peer = True
            finally:
                writer.close()
                tasks.discard(task)  # type: ignore[arg-type]
                if connection is not None and connection.closed_by_peer:
                    self.peer_closed += 1

        server = await asyncio.start_server(on_connection, sock=self._socket)
        self._started.set()
        async with server:
            await self._stop.wait()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in writers:
                writer.transport.abort()  # close() would wait for unsent data that no one reads any more
            await asyncio.sleep(0)  # let the transports close their sockets before the loop ends

    def __enter__(self) -> RawServer:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the raw upstream did not start")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)


def response_head(content_length: int | None, content_type: str = "application/octet-stream") -> bytes:
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else "Transfer-Encoding: chunked\r\n"
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{length}\r\n".encode()


def framed(body: bytes, content_length: int | None) -> bytes:
    """`body` as it goes on the wire: as is under a Content-Length, else as one chunk."""
    return body if content_length is not None or not body else b"%x\r\n%s\r\n" % (len(body), body)


def stall(body: bytes, content_length: int | None) -> Handler:
    """Send the head and `body`, then nothing more until the client leaves."""

    async def handler(connection: Connection) -> None:
        await connection.send(response_head(content_length) + framed(body, content_length), len(body))
        await connection.until_peer_closes()

    return handler


def drop(body: bytes, content_length: int | None) -> Handler:
    """Send the head and `body`, then close the connection short of the end."""

    async def handler(connection: Connection) -> None:
        await connection.send(response_head(content_length) + framed(body, content_length), len(body))

    return handler


async def silent(connection: Connection) -> None:
    """Accept the request and never answer it."""
    await connection.until_peer_closes()


async def endless(connection: Connection) -> None:
    """A chunked body of 64 KiB blocks that never ends; stops when the client closes the connection."""
    await connection.send(response_head(None))
    block = b"%x\r\n%s\r\n" % (65536, bytes(65536))
    watcher = asyncio.create_task(connection.until_peer_closes())
    try:
        while not watcher.done():
            await connection.send(block, 65536)
    finally:
        watcher.cancel()


def sendfile(path: Path) -> Handler:
    """The whole file with its Content-Length (HEAD: the head only), through os.sendfile, cheap enough that the
    relay is what is measured."""

    size = path.stat().st_size

    async def handler(connection: Connection) -> None:
        await connection.send(response_head(size))
        if connection.head.startswith(b"HEAD "):
            return
        with path.open("rb") as file:
            sent = await asyncio.get_running_loop().sendfile(connection.writer.transport, file)
        connection.server.bytes_sent += sent

    return handler


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused. Not one bound to port 0 and closed: the kernel
    could hand that one to another server (another xdist worker's) while the test relies on it being closed."""
    return free_port()


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listen queue is full and never accepted from: a new connection's SYN goes unanswered,
    so connecting times out (Linux keeps backlog + 1 connections waiting)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                try:
                    filler.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
            yield port
        finally:
            for filler in fillers:
                filler.close()


def sparse_file(path: Path, size: int, tail: bytes) -> Path:
    """`size` bytes that read as zeros and cost no disk, ending with `tail`."""
    with path.open("wb") as file:
        file.truncate(size)
        file.seek(size - len(tail))
        file.write(tail)
    return path
