"""GET /datasets and /datasets/{name}: what can be exported, with columns, key and filterable columns."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from exporter.deps import CatalogDep
from exporter.formats import FORMATS

router = APIRouter(tags=["datasets"])


@router.get("/datasets")
async def list_datasets(catalog: CatalogDep) -> JSONResponse:
    return JSONResponse({"datasets": [(await catalog.get(name)).describe(list(FORMATS)) for name in catalog.names]})


@router.get("/datasets/{name}")
async def get_dataset(name: str, catalog: CatalogDep) -> JSONResponse:
    return JSONResponse((await catalog.get(name)).describe(list(FORMATS)))
