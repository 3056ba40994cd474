"""GET and HEAD /proxy/{upstream}/{path}: the named upstream's answer for {base_url}/{path}?{query}, relayed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.access.admission import released_on_error
from exporter.access.authentication import CallerDep, require
from exporter.export.pipeline import ExportRecord, iter_recorded
from exporter.services import EngineDep, LimitsDep, UpstreamsDep
from exporter.serving.relay import find_upstream, iter_upstream, open_upstream
from exporter.serving.responses import head_response, stream_response

router = APIRouter(tags=["proxy"])


@router.api_route("/proxy/{upstream}/{path:path}", methods=["GET", "HEAD"], response_class=Response)
async def proxy(upstream: str, path: str, request: Request, upstreams: UpstreamsDep, caller: CallerDep,
                limits: LimitsDep, engine: EngineDep) -> Response:
    require(caller, "proxy", upstream)
    found = find_upstream(upstreams, upstream)
    prefix = f"{request.scope.get('root_path', '')}/proxy/{upstream}/"  # where a relayed redirect points
    if request.method == "HEAD":
        response = await open_upstream(found, "HEAD", path, request.scope["query_string"], request.headers.items(),
                                       prefix)
        await response.aclose()
        return head_response(response.headers, response.status_code)
    hold = await limits.admit(caller)
    with released_on_error(hold):
        response = await open_upstream(found, "GET", path, request.scope["query_string"], request.headers.items(),
                                       prefix)
        record = ExportRecord(upstream, "relay", {}, request.client.host if request.client else None, kind="relay",
                              key_name=caller.name, resource=path)
        return stream_response(iter_recorded(iter_upstream(response), record, engine), response.headers,
                               response.status_code, hold)
