"""GET and HEAD /exports/{name}.{format} (the formats of exporter.formats.FORMATS); with `Prefer: respond-async`,
the same export as a job."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.access.grants import require
from exporter.downloads import client_address
from exporter.export.parameters import query_pairs
from exporter.export.request import prepare_export
from exporter.formats import split_filename
from exporter.jobs.submission import prefers_async
from exporter.services import AuthenticatorDep, CallerDep, CatalogDep, DownloadsDep, SettingsDep, SubmissionsDep

router = APIRouter(tags=["exports"])


@router.api_route("/exports/{filename}", methods=["GET", "HEAD"], response_class=Response)
async def export(filename: str, request: Request, catalog: CatalogDep, settings: SettingsDep, caller: CallerDep,
                 downloads: DownloadsDep, submissions: SubmissionsDep, authenticator: AuthenticatorDep) -> Response:
    name = split_filename(filename)[0]
    require(caller, "dataset", name)
    params = query_pairs(request.scope["query_string"])
    export = await prepare_export(catalog, filename, params, caller.restriction(name), settings)
    if request.method == "GET" and prefers_async(request.headers.get("prefer")):
        authenticator.require_csrf(request)  # this GET creates a job: a session shows its CSRF token
        return await submissions.submit(caller, export, params, request.headers.get("idempotency-key"),
                                        client_address(request))
    return await downloads.export(request, caller, export)
