"""SendTimeout: a response whose client has acknowledged no bytes for the send timeout is abandoned, like nginx's
send_timeout; and the uvicorn protocol that shows it the connection, so that the kernel can say what was taken."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

TRANSPORT = "exporter.transport"  # the connection's transport, in scope["state"] (see TransportInScope)
MOST_SECONDS_BETWEEN_CHECKS = 1.0


class TransportInScope(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools, which uvicorn[standard] brings), that also puts the connection's
    transport in each request's scope["state"] under TRANSPORT. uvicorn gives every request a copy of the
    protocol's `app_state` (the lifespan's state) as scope["state"]; here each connection gets its own copy
    with its transport added. Select it with uvicorn.Config(http=TransportInScope): `exporter serve` and the
    tests' servers do. Under another protocol or server, SendTimeout finds no transport and falls back to
    timing each write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.app_state = {**self.app_state, TRANSPORT: transport}
        super().connection_made(transport)


def unacknowledged_bytes(transport: asyncio.Transport) -> Callable[[], int | None] | None:
    """A probe of the bytes written to this connection that its client has not acknowledged yet: the socket's
    send queue (sent and unacknowledged, or not sent yet: Linux's SIOCOUTQ, alias TIOCOUTQ) plus what the
    transport still holds. The sum only goes down as the client's TCP stack acknowledges data (moving bytes from
    the transport into the kernel changes both terms by as much), and up as the server writes. The probe
    answers None once the connection is closing. None instead of a probe where the kernel does not tell: not
    Linux, not TCP (a Unix socket), or no socket."""
    sock = transport.get_extra_info("socket")
    if sys.platform != "linux" or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    fd = sock.fileno()

    def probe() -> int | None:
        if transport.is_closing():  # its descriptor may be closed, and its number taken by another socket
            return None
        queued: int = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return queued + transport.get_write_buffer_size()

    try:
        probe()
    except OSError:
        return None
    return probe


class SendTimeout:
    """ASGI middleware: a response whose client acknowledges no data for `seconds` is abandoned. Then
    TimeoutError (an OSError, as for a client that left) is raised into the response, which closes its body
    iterator, so its database connection, file or upstream request is released, and the server closes the
    connection without the end of the body.

    A send waits while the connection's buffers are full, and a socket becomes writable again only once the
    kernel's buffer (megabytes, autotuned) has drained by a third: for a slow but steady reader one write may
    wait minutes. So the timeout is not on one write's duration: while a send waits, the bytes the client has
    not acknowledged (see unacknowledged_bytes) are checked every `check_seconds`, and the response is cut
    only when they have not gone down for `seconds`. This needs the transport that TransportInScope puts in
    the scope; without it (another server, a Unix socket, not Linux) each write gets `seconds` instead, as
    nginx's send_timeout does.

    A send is waited for in slices of `check_seconds`, and one cancelled at the end of a slice is sent again:
    uvicorn's send waits for its flow control to let it write before it writes anything, so a cancelled send
    has written nothing. This holds because SendTimeout wraps the whole app (see app.py) and is given uvicorn's
    own send.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds
        self.check_seconds = min(MOST_SECONDS_BETWEEN_CHECKS, seconds / 4)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        transport = scope.get("state", {}).get(TRANSPORT)
        probe = unacknowledged_bytes(transport) if transport is not None else None

        async def send_within(message: Message) -> None:
            if probe is None:
                stalled = not await self._send_in_time(send, message)
            else:
                stalled = not await self._send_while_taken(send, message, probe)
            if stalled:
                client = scope.get("client")
                log.warning("%s %s: the client %s took no data for %g s; aborting the response",
                            scope["method"], scope["path"], client[0] if client else "?", self.seconds)
                raise TimeoutError(f"the client took no data for {self.seconds:g} s")

        await self.app(scope, receive, send_within)

    async def _send_in_time(self, send: Send, message: Message) -> bool:
        with anyio.move_on_after(self.seconds) as waited:
            await send(message)
        return not waited.cancelled_caught

    async def _send_while_taken(self, send: Send, message: Message, probe: Callable[[], int | None]) -> bool:
        """Send `message`; False, unsent, once the client has acknowledged nothing for `seconds`."""
        progress_at = time.monotonic()
        pending = probe()
        while True:
            with anyio.move_on_after(self.check_seconds) as waited:
                await send(message)
            if not waited.cancelled_caught:
                return True
            now = probe()
            if now is not None and pending is not None and now < pending:
                progress_at = time.monotonic()
            pending = now
            if time.monotonic() - progress_at >= self.seconds:
                return False
