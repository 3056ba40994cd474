"""GET and HEAD /proxy/{upstream}/{path}: the named upstream's answer for {base_url}/{path}?{query}, relayed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exporter.deps import UpstreamsDep
from exporter.relay import find_upstream, iter_upstream, open_upstream
from exporter.responses import head_response, stream_response

router = APIRouter(tags=["proxy"])


@router.api_route("/proxy/{upstream}/{path:path}", methods=["GET", "HEAD"], response_class=Response)
async def proxy(upstream: str, path: str, request: Request, upstreams: UpstreamsDep) -> Response:
    prefix = f"{request.scope.get('root_path', '')}/proxy/{upstream}/"  # where a relayed redirect points
    response = await open_upstream(find_upstream(upstreams, upstream), request.method, path,
                                   request.scope["query_string"], request.headers.items(), prefix)
    if request.method == "HEAD":
        await response.aclose()
        return head_response(response.headers, response.status_code)
    return stream_response(iter_upstream(response), response.headers, response.status_code)
