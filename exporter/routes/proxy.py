"""GET and HEAD /proxy/{upstream}/{path}: the named upstream's answer for {base_url}/{path}?{query}, relayed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.access.grants import require
from exporter.services import CallerDep, DownloadsDep, UpstreamsDep
from exporter.serving.relay import find_upstream

router = APIRouter(tags=["proxy"])


@router.api_route("/proxy/{upstream}/{path:path}", methods=["GET", "HEAD"], response_class=Response)
async def proxy(upstream: str, path: str, request: Request, upstreams: UpstreamsDep, caller: CallerDep,
                downloads: DownloadsDep) -> Response:
    require(caller, "proxy", upstream)
    return await downloads.relay(request, caller, find_upstream(upstreams, upstream), path)
