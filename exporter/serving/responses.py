"""stream_response: a streamed download (chunked, or with the Content-Length the headers give) whose body iterator
is always closed, however the response ends."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from exporter.access.admission import Hold
from exporter.errors import ExportError, error_response
from exporter.serving.filechunks import iter_file_chunks
from exporter.serving.files import SANDBOX, Target, if_range_holds, is_not_modified
from exporter.serving.ranges import parse_range, range_body


def content_disposition(filename: str) -> str:
    """`attachment` with the file's name: ASCII in `filename`, and the exact name in `filename*` if it is not
    ASCII (RFC 6266 §4.3)."""
    # A quote, backslash or control character would end or break the quoted-string (RFC 9110 §5.6.4).
    ascii_name = re.sub(r'[\x00-\x1f\x7f"\\]', "_", filename.encode("ascii", "replace").decode())
    disposition = f'attachment; filename="{ascii_name}"'
    if ascii_name != filename:
        disposition += f"; filename*=UTF-8''{quote(filename)}"
    return disposition


def download_headers(filename: str, media_type: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        "Content-Type": media_type,
        "Content-Disposition": content_disposition(filename),
        **SANDBOX,
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # tell nginx-like proxies not to buffer the stream
        **(extra or {}),
    }


def stream_response(chunks: AsyncIterator[bytes], headers: Mapping[str, str], status_code: int = 200,
                    hold: Hold | None = None) -> Response:
    """A response that waits for the first chunk before it starts, then sends it and the rest as they come.
    Chunked, unless `headers` carry a Content-Length, which the chunks must then fill exactly.

    An ExportError before the first chunk becomes its JSON error response, so a failed query never
    produces a 200. A client that leaves, even while the first chunk is awaited, cancels the producer.
    An error after the first byte propagates to the server, which then drops the connection without the
    final chunk (or short of the Content-Length): the client sees an incomplete transfer rather than a clean
    end. `chunks` is closed in every case. A `hold` (see limits.py) is released when the response ends; its key
    being revoked, or the end of a shutdown's drain, stops the download the same way.
    """
    return ChunkedResponse(chunks, headers, status_code, hold)


def file_response(request: Request, target: Target, chunk_bytes: int, extra: Mapping[str, str],
                  content_type: str | None = None, hold: Hold | None = None,
                  wrap: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None) -> Response:
    """GET or HEAD of a regular file: 304 for a matching If-None-Match or If-Modified-Since, single and multiple
    ranges (honouring If-Range), else the whole file; with its validators and `extra` headers. `wrap` (the
    export log's recorder) goes around the file's chunks; `hold` is released when the response ends."""
    validators = target.validators()
    if is_not_modified(target, request.headers.get("if-none-match"), request.headers.get("if-modified-since")):
        if hold is not None:
            hold.release()
        return Response(status_code=304, headers={**validators, **extra, **SANDBOX,
                                                  "Content-Disposition": content_disposition(target.name)})
    content_type = content_type or target.content_type
    spans = None
    if request.method == "GET" and if_range_holds(target, request.headers.get("if-range")):
        spans = parse_range(request.headers.get("range"), target.size)  # Range applies to GET only (§14.2)
    body = range_body(spans, target.size, content_type)
    headers = download_headers(target.name, content_type,
                               {**validators, **extra, "Accept-Ranges": "bytes", **body.headers})
    if request.method == "HEAD":
        return head_response(headers, hold=hold)
    chunks = iter_file_chunks(target.path, body.parts, chunk_bytes, expected=target.stat)
    return stream_response(wrap(chunks) if wrap is not None else chunks, headers, body.status, hold)


def head_response(headers: Mapping[str, str], status_code: int = 200, hold: Hold | None = None) -> Response:
    """The headers a GET would get, and no body."""
    return ChunkedResponse(_nothing(), headers, status_code, hold)


async def _nothing() -> AsyncIterator[bytes]:
    yield b""


class ChunkedResponse(Response):
    def __init__(self, chunks: AsyncIterator[bytes], headers: Mapping[str, str], status_code: int,
                 hold: Hold | None = None) -> None:
        # Not Response.__init__: it would add Content-Length for the empty `body`.
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)
        self._chunks = chunks
        self._hold = hold
        self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stopped: ExportError | None = None
        try:
            async with anyio.create_task_group() as group:

                async def cancel_on_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                async def stop_when_told(hold: Hold) -> None:
                    nonlocal stopped
                    stopped = await hold.stop_reason()
                    group.cancel_scope.cancel()

                group.start_soon(cancel_on_disconnect)
                if self._hold is not None:
                    group.start_soon(stop_when_told, self._hold)
                try:
                    await self._send(scope, receive, send)
                except OSError:
                    pass  # the client went away while we were writing to it
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._chunks.aclose()  # type: ignore[attr-defined]
                    group.cancel_scope.cancel()
        finally:
            if self._hold is not None:
                self._hold.release()
        if stopped is not None:
            if self._started:
                raise stopped  # the server drops the connection: an incomplete transfer, never a clean end
            await error_response(stopped)(scope, receive, send)

    async def _send(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first = await anext(self._chunks, b"")
        except ExportError as error:
            if error.status == 503 and self._hold is not None:  # busy: with the key's limit, as a 429 has
                error.headers = {**self._hold.rate_limit, **error.headers}
            await error_response(error)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._started = True
        if first:
            await send({"type": "http.response.body", "body": first, "more_body": True})
        async for chunk in self._chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

