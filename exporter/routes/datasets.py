"""GET /datasets and /datasets/{name}: what the caller may export, with columns, key and filterable columns."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from exporter.auth import CallerDep, require
from exporter.deps import CatalogDep

router = APIRouter(tags=["datasets"])


@router.get("/datasets")
async def list_datasets(catalog: CatalogDep, caller: CallerDep) -> JSONResponse:
    readable = [name for name in catalog.names if caller.may("dataset", name)]
    return JSONResponse({"datasets": [(await catalog.get(name)).describe(caller.restriction(name).columns)
                                      for name in readable]})


@router.get("/datasets/{name}")
async def get_dataset(name: str, catalog: CatalogDep, caller: CallerDep) -> JSONResponse:
    require(caller, "dataset", name)
    return JSONResponse((await catalog.get(name)).describe(caller.restriction(name).columns))
