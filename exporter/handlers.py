"""The app's error handlers: every error response, ours or the framework's, in the one JSON shape of errors.py."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import Match

from exporter.errors import DatabaseUnavailable, ExportError, error_body, error_response
from exporter.outages import DRIVER_ERRORS, is_outage, outage_reason

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI,
                           on_refused: Callable[[Request, ExportError], Awaitable[None]] | None = None,
                           as_page: Callable[[Request, ExportError], Response | None] | None = None) -> None:
    """Every error response, ours or the framework's, has the same JSON shape. `on_refused` sees each of ours
    first (the audit log records refusals); `as_page` may answer a browser with a page instead of the JSON."""

    async def on_export_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ExportError)
        if on_refused is not None:
            await on_refused(request, exc)
        page = as_page(request, exc) if as_page is not None else None
        return page if page is not None else error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = re.sub(r"\W+", "_", _reason(exc.status_code)).lower()
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed(request))  # every route on this path, not just the first
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        parameter = location[1] if len(location) > 1 and location[0] in ("query", "path", "header") else None
        return JSONResponse(error_body("invalid_parameter", f"{'.'.join(location)}: {first.get('msg')}", parameter),
                            status_code=400)

    async def on_driver_error(request: Request, exc: Exception) -> Response:
        """A database that went away, met outside the paths that turn it into DatabaseUnavailable (the service
        database's reads and writes: jobs, keys, the export log): 503 with Retry-After, not a plain 500."""
        if not is_outage(exc):
            raise exc  # a plain 500, as before
        reason = outage_reason(exc)
        log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path, reason)
        return await on_export_error(request, DatabaseUnavailable(f"the database is unavailable ({reason})"))

    app.add_exception_handler(ExportError, on_export_error)
    for driver_error in DRIVER_ERRORS:
        app.add_exception_handler(driver_error, on_driver_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


def _allowed(request: Request) -> list[str]:
    """The methods of every route on the request's path. FastAPI keeps an included router as one entry of
    app.router.routes, so the routes are walked through iter_route_contexts, which opens them (issue 18: every 405
    had carried an empty Allow)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"
