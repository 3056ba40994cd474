"""Request bodies: BodyLimit, the cap on every request body's size (EXPORTER_MAX_BODY_BYTES)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.errors import BodyTooLarge, error_response


class BodyLimit:
    """ASGI middleware: no request body over `max_bytes`. A Content-Length over it is answered `413 body_too_large`
    at once, before the app runs and without reading a byte of the body. A chunked body (or one that outgrows its
    Content-Length) is counted as the app reads it, and the read that passes the cap raises BodyTooLarge, which
    the app's error handler answers with the same 413. Nothing more is read: once the response is complete, the
    server closes the connection instead of reading the rest of the request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await error_response(self._refusal())(scope, receive, send)
            return
        received = 0

        async def receive_within() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._refusal()
            return message

        await self.app(scope, receive_within, send)

    def _refusal(self) -> BodyTooLarge:
        return BodyTooLarge(f"the request body is over {self.max_bytes} bytes (EXPORTER_MAX_BODY_BYTES)")


def _content_length(scope: Scope) -> int | None:
    """The Content-Length header's value; None without one. The server has refused a malformed one already."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
