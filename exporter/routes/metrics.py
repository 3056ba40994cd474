"""GET /metrics: Prometheus's text format; needs the `metrics` grant (or `admin`) when auth is on."""

from __future__ import annotations

from fastapi import APIRouter, Response

from exporter.errors import Forbidden
from exporter.metrics import render
from exporter.services import CallerDep, ServicesDep

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep, caller: CallerDep) -> Response:
    if not (caller.admin or "metrics" in caller.grants):
        raise Forbidden("this key has no grant for metrics")
    body, content_type = await render(services.catalog.engines, services.jobs.engine)
    return Response(body, media_type=content_type)
