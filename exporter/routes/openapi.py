"""GET /openapi.json: the OpenAPI document, for any valid key (Bearer or a browser session), or anyone with auth
off. There are no HTML docs pages (docs/api.md says why)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from exporter.services import CallerDep

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json", response_class=JSONResponse)
async def openapi_document(request: Request, caller: CallerDep) -> JSONResponse:
    return JSONResponse(request.app.openapi())
