"""Real servers for tests: the app under uvicorn on a socket bound to 127.0.0.1 port 0, in a thread; and ports for
the servers a test starts as processes, which bind a port they are given."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import BinaryIO

import uvicorn
from starlette.types import ASGIApp

from exporter.serving.sendtimeout import TransportInScope

# A block of ports per pytest-xdist worker (gw0, gw1, ...; the serial run is block 0), below the kernel's ephemeral
# range (ip_local_port_range starts at 32768). A port found free with bind(0) could be handed out by the kernel
# again, to another test's server or a client, before the process it was meant for binds it; under xdist another
# worker then took it, answered the test's /healthz and got the test's requests. Ports here are never handed out
# by the kernel, and no other worker picks from this block.
PORT_BLOCK = 1000
_FIRST_PORT = 20_000
_BLOCKS = (32_768 - _FIRST_PORT) // PORT_BLOCK
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, from this worker's block, and not one this process handed out
    before: for a server process to bind, or for a port that refuses connections."""
    first = _FIRST_PORT + (_WORKER % _BLOCKS) * PORT_BLOCK
    candidates = [port for port in range(first, first + PORT_BLOCK) if port not in _handed_out]
    if not candidates:  # each handed out once: their processes are long gone
        _handed_out.clear()
        candidates = list(range(first, first + PORT_BLOCK))
    random.shuffle(candidates)  # another checkout's suite on this machine uses the same block
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (another service, or a connection in TIME_WAIT)
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {first}-{first + PORT_BLOCK - 1}")


class ServerThread:
    """uvicorn serving `app` in a background thread; use as a context manager."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # As `exporter serve`: X-Forwarded-* count only as the app's EXPORTER_TRUSTED_PROXIES says, and the send
        # timeout sees the connection's transport.
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
                                proxy_headers=False, http=TransportInScope)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()


class ChunkedReader:
    """A GET over a raw socket that hands back the HTTP/1.1 chunks as the server framed them (an HTTP client
    would hide them). Its receive buffer is small, so the server cannot push the whole body into the kernel."""

    def __init__(self, url: str, path: str, receive_buffer_bytes: int = 64 * 1024,
                 headers: dict[str, str] | None = None) -> None:
        self._socket, self._stream = self._request(url, path, receive_buffer_bytes, headers)
        self.status_line = self._stream.readline()
        while self._stream.readline() not in (b"\r\n", b""):
            pass

    @staticmethod
    def _request(url: str, path: str, receive_buffer_bytes: int, headers: dict[str, str] | None = None
                 ) -> tuple[socket.socket, BinaryIO]:
        host, port = url.removeprefix("http://").split(":")
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        conn.settimeout(30)
        conn.connect((host, int(port)))
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode())
        return conn, conn.makefile("rb")

    @classmethod
    @contextmanager
    def connect(cls, url: str, path: str) -> Iterator[None]:
        """Send the request and keep the connection open without reading the response; close on exit."""
        conn, stream = cls._request(url, path, 64 * 1024)
        with conn, stream:
            yield

    def next_chunk(self) -> bytes | None:
        """The next chunk's data; None at the final zero-length chunk."""
        size = int(self._stream.readline().split(b";")[0], 16)
        data = self._stream.read(size + 2)[:size]
        return data if size else None

    def read_rest(self) -> bytes:
        """Whatever the server still sends, raw, until it closes the connection (or resets it)."""
        received = bytearray()
        try:
            while data := self._stream.read1(64 * 1024):
                received += data
        except ConnectionResetError:
            pass
        return bytes(received)

    def __enter__(self) -> ChunkedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()
        self._socket.close()
