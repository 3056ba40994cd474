"""GET and HEAD /exports/{name}.{format}: the formats of exporter.formats.FORMATS."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.compression import choose_encoding
from exporter.deps import CatalogDep, EngineDep, SettingsDep
from exporter.exports import ExportRecord, format_defaults, iter_export, open_chunks
from exporter.formats import FORMATS, format_options, split_filename
from exporter.queries import build_query
from exporter.responses import download_headers, head_response, stream_response

router = APIRouter(tags=["exports"])


@router.api_route("/exports/{filename}", methods=["GET", "HEAD"], response_class=Response)
async def export(filename: str, request: Request, catalog: CatalogDep, engine: EngineDep,
                 settings: SettingsDep) -> Response:
    name, fmt = split_filename(filename)
    dataset = await catalog.get(name)
    params = request.query_params.multi_items()
    query = build_query(dataset, params, dataset.engine.dialect.name)
    options = format_options(fmt, dict(params), format_defaults(dataset, settings))
    export_format = FORMATS[fmt]
    compression = export_format.compression
    extra: dict[str, str] = {}
    if export_format.negotiates_encoding:
        compression = choose_encoding(request.headers.get("accept-encoding", ""))
        extra = {"Vary": "Accept-Encoding", **({"Content-Encoding": compression} if compression else {})}
    headers = download_headers(filename, export_format.media_type, extra)
    if request.method == "HEAD":
        return head_response(headers)

    record = ExportRecord(dataset.name, fmt, _grouped(params), request.client.host if request.client else None)
    chunks = open_chunks(dataset, query, options, settings, record)
    body = iter_export(chunks, compression=compression, record=record, log_engine=engine)
    return stream_response(body, headers)


def _grouped(params: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return grouped
