"""GET /datasets and /datasets/{name}: what the caller may export, with columns, key and filterable columns; a
browser asking for /datasets/{name} gets the export builder instead. GET /datasets/{name}/estimate: the planner's
guess of an export's rows."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from exporter.access.grants import require
from exporter.export.cursor import estimate_rows
from exporter.export.parameters import query_pairs
from exporter.export.request import prepare_export
from exporter.formats import FORMATS
from exporter.services import CallerDep, CatalogDep
from exporter.web.builder import dataset_page
from exporter.web.rendering import wants_html

router = APIRouter(tags=["datasets"])

VARY = {"Vary": "Accept"}


@router.get("/datasets")
async def list_datasets(catalog: CatalogDep, caller: CallerDep) -> JSONResponse:
    readable = [name for name in catalog.names if caller.may("dataset", name)]
    return JSONResponse({"datasets": [
        (await catalog.get(name)).describe(list(FORMATS), caller.restriction(name).columns) for name in readable]})


@router.get("/datasets/{name}", response_class=Response)
async def get_dataset(name: str, request: Request, catalog: CatalogDep, caller: CallerDep) -> Response:
    require(caller, "dataset", name)
    dataset = await catalog.get(name)
    if wants_html(request):
        return await dataset_page(request, catalog, dataset, caller)
    return JSONResponse(dataset.describe(list(FORMATS), caller.restriction(name).columns), headers=VARY)


@router.get("/datasets/{name}/estimate")
async def estimate(name: str, request: Request, catalog: CatalogDep, caller: CallerDep) -> JSONResponse:
    """{"rows": N}: what PostgreSQL's planner expects the export with these query parameters (filters, columns,
    order, limit; the key's restrictions) to send, from its statistics and without running it; null on SQLite.
    Bad parameters are the export's own 400s."""
    require(caller, "dataset", name)
    export = await prepare_export(catalog, f"{name}.ndjson", query_pairs(request.scope["query_string"]),
                                  caller.restriction(name))
    rows = await estimate_rows(export.dataset.engine, export.query.statement)
    if rows is not None and export.max_rows is not None:
        rows = min(rows, export.max_rows)
    return JSONResponse({"rows": rows})
