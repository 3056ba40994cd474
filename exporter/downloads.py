"""The one download sequence, for exports, files, relays and job results: admit the caller (429 or 503 before any
byte), record the download in the export log, stream it, and log its outcome however it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from fastapi import Request, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.access.admission import Hold, Limits, released_on_error
from exporter.access.grants import Caller
from exporter.config import Settings
from exporter.export.compression import choose_encoding
from exporter.export.pipeline import iter_export, open_chunks
from exporter.export.request import Export
from exporter.exportlog import ExportRecord, grouped, iter_recorded
from exporter.serving.files import Target
from exporter.serving.relay import Upstream, iter_upstream, open_upstream
from exporter.serving.responses import download_headers, file_response, head_response, stream_response

Recorded = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


class Downloads:
    """Starts every download the same way (see send)."""

    def __init__(self, limits: Limits, log_engine: AsyncEngine, settings: Settings) -> None:
        self._limits = limits
        self._log_engine = log_engine
        self._settings = settings

    async def send(self, caller: Caller, record: ExportRecord,
                   respond: Callable[[Recorded, Hold], Awaitable[Response]]) -> Response:
        """Admit the caller, then `respond(recorded, hold)` makes the response: its body goes through `recorded`,
        which writes `record`'s export log row when the body closes, however it ends, and the response releases
        `hold` when it ends. If `respond` raises, the place is given back and nothing is logged here."""
        hold = await self._limits.admit(caller)
        with released_on_error(hold):
            return await respond(lambda chunks: iter_recorded(chunks, record, self._log_engine), hold)

    async def export(self, request: Request, caller: Caller, export: Export) -> Response:
        """GET or HEAD of an export: its file's name and type, and Content-Encoding negotiated where the format
        allows it (CSV and NDJSON; `.gz` and `.zst` names are compressed files instead)."""
        compression = export.compression
        extra: dict[str, str] = {}
        if export.export_format.negotiates_encoding:
            compression = choose_encoding(request.headers.get("accept-encoding", ""))
            extra = {"Vary": "Accept-Encoding", **({"Content-Encoding": compression} if compression else {})}
        headers = download_headers(export.filename, export.export_format.media_type, extra)
        if request.method == "HEAD":
            return head_response(headers)
        params = request.query_params.multi_items()
        record = ExportRecord(export.dataset.name, export.format, grouped(params), client_address(request),
                              key_name=caller.name)

        async def respond(recorded: Recorded, hold: Hold) -> Response:
            chunks = open_chunks(export.dataset, export.query, export.options, self._settings, record)
            body = iter_export(chunks, compression=compression, record=record, max_rows=export.max_rows)
            return stream_response(recorded(body), headers, hold=hold)

        return await self.send(caller, record, respond)

    async def file(self, request: Request, caller: Caller, record: ExportRecord, target: Target,
                   extra: Mapping[str, str], content_type: str | None = None) -> Response:
        """A file on disk (a file root's, or a job's result): GET or HEAD, with ranges and conditional requests."""
        chunk_bytes = self._settings.file_chunk_bytes
        if request.method == "HEAD":
            return file_response(request, target, chunk_bytes, extra, content_type)

        async def respond(recorded: Recorded, hold: Hold) -> Response:
            return file_response(request, target, chunk_bytes, extra, content_type, hold, recorded)

        return await self.send(caller, record, respond)

    async def relay(self, request: Request, caller: Caller, upstream: Upstream, path: str) -> Response:
        """The upstream's answer for `path`, relayed as it arrives."""
        # Where a relayed redirect points.
        prefix = f"{request.scope.get('root_path', '')}/proxy/{upstream.config.name}/"
        query, headers = request.scope["query_string"], request.headers.items()
        if request.method == "HEAD":
            response = await open_upstream(upstream, "HEAD", path, query, headers, prefix)
            await response.aclose()
            return head_response(response.headers, response.status_code)
        record = ExportRecord(upstream.config.name, "relay", {}, client_address(request), kind="relay",
                              key_name=caller.name, resource=path)

        async def respond(recorded: Recorded, hold: Hold) -> Response:
            response = await open_upstream(upstream, "GET", path, query, headers, prefix)
            return stream_response(recorded(iter_upstream(response)), response.headers, response.status_code, hold)

        return await self.send(caller, record, respond)
