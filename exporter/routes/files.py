"""GET and HEAD /files/{root}/{path}: a file, with ranges and conditional requests, or a directory listing."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from exporter.access.grants import require
from exporter.downloads import client_address
from exporter.exportlog import ExportRecord
from exporter.services import CallerDep, DownloadsDep, SettingsDep
from exporter.serving.files import REVALIDATE, list_directory, resolve
from exporter.web.rendering import directory_page, wants_html

router = APIRouter(tags=["files"])

@router.api_route("/files/{root}", methods=["GET", "HEAD"], response_class=Response)
async def root_directory(root: str, settings: SettingsDep, caller: CallerDep) -> Response:
    require(caller, "files", root)
    target = await resolve(settings.file_roots, root, "")
    return RedirectResponse(target.slash_location(), status_code=308)


@router.api_route("/files/{root}/{path:path}", methods=["GET", "HEAD"], response_class=Response)
async def file(root: str, path: str, request: Request, settings: SettingsDep, caller: CallerDep,
               downloads: DownloadsDep) -> Response:
    require(caller, "files", root)
    target = await resolve(settings.file_roots, root, path)
    if target.is_directory:
        if path and not path.endswith("/"):
            return RedirectResponse(target.slash_location(), status_code=308)
        listing = await list_directory(target)
        if wants_html(request):
            return directory_page(request, listing, caller)
        return JSONResponse(listing, headers={"Vary": "Accept"})
    record = ExportRecord(root, "file", {}, client_address(request), kind="file", key_name=caller.name,
                          resource=target.relative)
    return await downloads.file(request, caller, record, target, REVALIDATE)
