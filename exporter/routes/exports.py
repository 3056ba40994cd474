"""GET and HEAD /exports/{name}.{format} (the formats of exporter.formats.FORMATS); with `Prefer: respond-async`,
the same export as a job."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.access.authentication import CallerDep, require
from exporter.export.compression import choose_encoding
from exporter.export.pipeline import ExportRecord, grouped, iter_export, open_chunks, prepare_export
from exporter.formats import split_filename
from exporter.routes.jobs import prefers_async, submit_job
from exporter.services import CatalogDep, EngineDep, LimitsDep, SettingsDep
from exporter.serving.responses import download_headers, head_response, stream_response

router = APIRouter(tags=["exports"])


@router.api_route("/exports/{filename}", methods=["GET", "HEAD"], response_class=Response)
async def export(filename: str, request: Request, catalog: CatalogDep, engine: EngineDep,
                 settings: SettingsDep, caller: CallerDep, limits: LimitsDep) -> Response:
    name = split_filename(filename)[0]
    require(caller, "dataset", name)
    params = request.query_params.multi_items()
    export = await prepare_export(catalog, filename, params, caller.restriction(name), settings)
    if request.method == "GET" and prefers_async(request.headers.get("prefer")):
        return await submit_job(request, caller, export, params)
    compression = export.compression
    extra: dict[str, str] = {}
    if export.export_format.negotiates_encoding:
        compression = choose_encoding(request.headers.get("accept-encoding", ""))
        extra = {"Vary": "Accept-Encoding", **({"Content-Encoding": compression} if compression else {})}
    headers = download_headers(filename, export.export_format.media_type, extra)
    if request.method == "HEAD":
        return head_response(headers)

    record = ExportRecord(export.dataset.name, export.format, grouped(params),
                          request.client.host if request.client else None, key_name=caller.name)
    hold = await limits.admit(caller)
    chunks = open_chunks(export.dataset, export.query, export.options, settings, record)
    body = iter_export(chunks, compression=compression, record=record, log_engine=engine,
                       max_rows=export.max_rows)
    return stream_response(body, headers, hold=hold)
