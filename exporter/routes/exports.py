"""GET and HEAD /exports/{name}.csv|.ndjson[.gz]."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.compression import accepts_gzip
from exporter.deps import CatalogDep, EngineDep, SettingsDep
from exporter.exports import ExportRecord, iter_export, open_chunks
from exporter.queries import build_query
from exporter.responses import download_headers, head_response, stream_response
from exporter.serializers import format_options, media_type, split_filename

router = APIRouter(tags=["exports"])


@router.api_route("/exports/{filename}", methods=["GET", "HEAD"], response_class=Response)
async def export(filename: str, request: Request, catalog: CatalogDep, engine: EngineDep,
                 settings: SettingsDep) -> Response:
    name, fmt, gzip_file = split_filename(filename)
    dataset = await catalog.get(name)
    dialect = dataset.engine.dialect.name
    params = request.query_params.multi_items()
    query = build_query(dataset, params, dialect)
    options = format_options(fmt, dict(params))
    if gzip_file:
        headers = download_headers(filename, "application/gzip")
    elif accepts_gzip(request.headers.get("accept-encoding", "")):
        headers = download_headers(filename, media_type(options),
                                   {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    else:
        headers = download_headers(filename, media_type(options), {"Vary": "Accept-Encoding"})
    if request.method == "HEAD":
        return head_response(headers)

    record = ExportRecord(dataset.name, fmt + (".gz" if gzip_file else ""), _grouped(params),
                          request.client.host if request.client else None)
    chunks = open_chunks(dataset, query, options, settings, record)
    body = iter_export(chunks, gzip="Content-Encoding" in headers or gzip_file, record=record, log_engine=engine)
    return stream_response(body, headers)


def _grouped(params: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return grouped
