"""GET and HEAD /files/{root}/{path}: a file, with ranges and conditional requests, or a directory listing."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from exporter.chunks import iter_file_chunks
from exporter.deps import SettingsDep
from exporter.files import if_range_holds, is_not_modified, list_directory, resolve
from exporter.ranges import parse_range, range_body
from exporter.responses import download_headers, head_response, stream_response

router = APIRouter(tags=["files"])

# A file may change, so caches keep it but revalidate with its ETag.
CACHE_CONTROL = {"Cache-Control": "no-cache"}


@router.api_route("/files/{root}", methods=["GET", "HEAD"], response_class=Response)
async def root_directory(root: str, settings: SettingsDep) -> Response:
    target = await resolve(settings.file_roots, root, "")
    return RedirectResponse(target.slash_location(), status_code=308)


@router.api_route("/files/{root}/{path:path}", methods=["GET", "HEAD"], response_class=Response)
async def file(root: str, path: str, request: Request, settings: SettingsDep) -> Response:
    target = await resolve(settings.file_roots, root, path)
    if target.is_directory:
        if path and not path.endswith("/"):
            return RedirectResponse(target.slash_location(), status_code=308)
        return JSONResponse(await list_directory(target))
    validators = target.validators()
    if is_not_modified(target, request.headers.get("if-none-match"), request.headers.get("if-modified-since")):
        return Response(status_code=304, headers={**validators, **CACHE_CONTROL})
    spans = None
    if request.method == "GET" and if_range_holds(target, request.headers.get("if-range")):
        spans = parse_range(request.headers.get("range"), target.size)  # Range applies to GET only (§14.2)
    body = range_body(spans, target.size, target.content_type)
    headers = download_headers(target.name, target.content_type,
                               {**validators, **CACHE_CONTROL, "Accept-Ranges": "bytes", **body.headers})
    if request.method == "HEAD":
        return head_response(headers)
    chunks = iter_file_chunks(target.path, body.parts, settings.file_chunk_bytes, expected=target.stat)
    return stream_response(chunks, headers, body.status)
