"""GET /metrics: Prometheus's text format; needs the `metrics` grant (or `admin`) when auth is on."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.access.authentication import CallerDep
from exporter.errors import Forbidden
from exporter.metrics import render

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, caller: CallerDep) -> Response:
    if not (caller.admin or "metrics" in caller.grants):
        raise Forbidden("this key has no grant for metrics")
    body, content_type = await render(request.app.state.sources, request.app.state.jobs.engine)
    return Response(body, media_type=content_type)
