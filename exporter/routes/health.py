"""GET /healthz (the process is up) and GET /readyz (every database answers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.services import ServicesDep

router = APIRouter(tags=["health"])
READINESS = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ok", "unavailable", "draining"]},
    "databases": {"type": "object", "additionalProperties": {"type": "string", "enum": ["ok", "unreachable"]}}}}
# /readyz's 503 is its own body, not the error shape: the OpenAPI document lists it from here.
NOT_READY: dict[int | str, dict[str, Any]] = {503: {
    "description": "not ready: a database does not answer, or the server is draining",
    "content": {"application/json": {"schema": READINESS}}}}


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", responses=NOT_READY)
async def readyz(services: ServicesDep) -> JSONResponse:
    if services.limits.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    checks = {name or "service": await _ping(engine) for name, engine in services.catalog.engines.items()}
    ready = all(checks.values())
    body = {"status": "ok" if ready else "unavailable", "databases": {n: "ok" if ok else "unreachable"
                                                                    for n, ok in checks.items()}}
    return JSONResponse(body, status_code=200 if ready else 503)


async def _ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
