"""GET /healthz (the process is up) and GET /readyz (every database answers and every background loop runs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from exporter.services import ServicesDep

router = APIRouter(tags=["health"])
READINESS = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ok", "unavailable", "draining"]},
    "databases": {"type": "object", "additionalProperties": {"type": "string", "enum": ["ok", "unreachable"]}},
    "loops": {"type": "object", "additionalProperties": {"type": "string", "enum": ["up", "down"]}}}}
# /readyz's 503 is its own body, not the error shape: the OpenAPI document lists it from here.
NOT_READY: dict[int | str, dict[str, Any]] = {503: {
    "description": "not ready: a database does not answer, a background loop is down, or the server is draining",
    "content": {"application/json": {"schema": READINESS}}}}


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", responses=NOT_READY)
async def readyz(services: ServicesDep) -> JSONResponse:
    """From the background probe's last round (sources/probes.py: at most a few seconds old), never a query of
    its own, so it answers at once under load."""
    if services.limits.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    databases, loops = services.databases.answering(), services.supervisor.loops()
    ready = all(databases.values()) and all(loops.values())
    body = {"status": "ok" if ready else "unavailable",
            "databases": {name: "ok" if ok else "unreachable" for name, ok in databases.items()},
            "loops": {name: "up" if up else "down" for name, up in loops.items()}}
    return JSONResponse(body, status_code=200 if ready else 503)
