"""GET and HEAD /files/{root}/{path}: a file, with ranges and conditional requests, or a directory listing."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from exporter.deps import SettingsDep
from exporter.files import list_directory, resolve
from exporter.responses import file_response

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
    return file_response(request, target, settings.file_chunk_bytes, CACHE_CONTROL)
