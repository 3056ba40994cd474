"""GET and HEAD /exports/{name}.csv|.ndjson[.gz]; with `Prefer: respond-async`, the same export as a job."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.auth import CallerDep, require
from exporter.compression import accepts_gzip
from exporter.deps import CatalogDep, EngineDep, LimitsDep, SettingsDep
from exporter.exports import ExportRecord, grouped, iter_export, open_chunks, prepare_export
from exporter.responses import download_headers, head_response, stream_response
from exporter.routes.jobs import prefers_async, submit_job
from exporter.serializers import media_type, split_filename

router = APIRouter(tags=["exports"])


@router.api_route("/exports/{filename}", methods=["GET", "HEAD"], response_class=Response)
async def export(filename: str, request: Request, catalog: CatalogDep, engine: EngineDep,
                 settings: SettingsDep, caller: CallerDep, limits: LimitsDep) -> Response:
    name = split_filename(filename)[0]
    require(caller, "dataset", name)
    params = request.query_params.multi_items()
    export = await prepare_export(catalog, filename, params, caller.restriction(name))
    if request.method == "GET" and prefers_async(request.headers.get("prefer")):
        return await submit_job(request, caller, export, params)
    if export.gzip_file:
        headers = download_headers(filename, "application/gzip")
    elif accepts_gzip(request.headers.get("accept-encoding", "")):
        headers = download_headers(filename, media_type(export.options),
                                   {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    else:
        headers = download_headers(filename, media_type(export.options), {"Vary": "Accept-Encoding"})
    if request.method == "HEAD":
        return head_response(headers)

    record = ExportRecord(export.dataset.name, export.format, grouped(params),
                          request.client.host if request.client else None, key_name=caller.name)
    hold = await limits.admit(caller)
    chunks = open_chunks(export.dataset, export.query, export.options, settings, record)
    body = iter_export(chunks, gzip="Content-Encoding" in headers or export.gzip_file, record=record,
                       log_engine=engine, max_rows=export.max_rows)
    return stream_response(body, headers, hold=hold)
