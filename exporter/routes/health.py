"""GET /healthz (the process is up) and GET /readyz (every database answers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.services import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
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
