"""GET and HEAD /files/{root}/{path}: a file, with ranges and conditional requests, or a directory listing."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from exporter.access.admission import released_on_error
from exporter.access.authentication import CallerDep, require
from exporter.export.pipeline import ExportRecord, iter_recorded
from exporter.services import EngineDep, LimitsDep, SettingsDep
from exporter.serving.files import list_directory, resolve
from exporter.serving.responses import file_response
from exporter.web import pages

router = APIRouter(tags=["files"])

# A file may change, so caches keep it but revalidate with its ETag.
CACHE_CONTROL = {"Cache-Control": "no-cache"}


@router.api_route("/files/{root}", methods=["GET", "HEAD"], response_class=Response)
async def root_directory(root: str, settings: SettingsDep, caller: CallerDep) -> Response:
    require(caller, "files", root)
    target = await resolve(settings.file_roots, root, "")
    return RedirectResponse(target.slash_location(), status_code=308)


@router.api_route("/files/{root}/{path:path}", methods=["GET", "HEAD"], response_class=Response)
async def file(root: str, path: str, request: Request, settings: SettingsDep, caller: CallerDep, limits: LimitsDep,
               engine: EngineDep) -> Response:
    require(caller, "files", root)
    target = await resolve(settings.file_roots, root, path)
    if target.is_directory:
        if path and not path.endswith("/"):
            return RedirectResponse(target.slash_location(), status_code=308)
        listing = await list_directory(target)
        if pages.wants_html(request):
            return pages.directory_page(request, listing, caller)
        return JSONResponse(listing, headers={"Vary": "Accept"})
    if request.method == "HEAD":
        return file_response(request, target, settings.file_chunk_bytes, CACHE_CONTROL)
    record = ExportRecord(root, "file", {}, request.client.host if request.client else None, kind="file",
                          key_name=caller.name, resource=target.relative)
    hold = await limits.admit(caller)
    with released_on_error(hold):
        return file_response(request, target, settings.file_chunk_bytes, CACHE_CONTROL, hold=hold,
                             wrap=lambda chunks: iter_recorded(chunks, record, engine))
