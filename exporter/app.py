"""create_app(settings): the lifespan builds the Services (engines, catalog, upstream clients, job workers) once;
the routers are mounted; every error has one JSON shape."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from exporter import __version__
from exporter.access.admission import Limits
from exporter.access.authentication import Authenticator, RefuseTokensInUrls
from exporter.access.secrets import load_secret
from exporter.access.throttle import FailedAuthThrottle
from exporter.audit import record_refusal
from exporter.config import Settings
from exporter.downloads import Downloads
from exporter.errors import ExportError, TooManyFailedAttempts
from exporter.eventloop import watch_lag
from exporter.exportlog import flush_backlog, kept_backlog
from exporter.handlers import install_error_handlers
from exporter.jobs.submission import Submissions
from exporter.jobs.worker import run_jobs
from exporter.logs import RequestIds
from exporter.openapi import document
from exporter.routes import datasets, exports, files, health, jobs, metrics, openapi, proxy
from exporter.services import Services
from exporter.serving.bodies import BodyLimit
from exporter.serving.relay import create_upstreams
from exporter.serving.sendtimeout import SendTimeout
from exporter.sources.datasets import open_sources
from exporter.sources.probes import DatabaseProbe
from exporter.supervision import Supervisor
from exporter.web import pages, rendering

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstreams = create_upstreams(settings.upstreams)
        try:
            # The export log's backlog outlives the job workers, whose last rows are written as they stop.
            async with open_sources(settings) as (engine, catalog), kept_backlog(
                    engine, settings.export_log_backlog_rows) as backlog:
                auth = settings.auth != "off"
                if not auth:
                    log.warning("EXPORTER_AUTH=off: every caller may read every dataset, file and upstream")
                link_secret = await load_secret(engine, "link") if auth else None
                session_secret = await load_secret(engine, "session") if auth else None
                # Every background loop runs under the supervisor; leaving the block stops them, the job
                # workers first (run_jobs), which hand their jobs back.
                async with (Supervisor() as supervisor,
                            run_jobs(settings, catalog, engine, supervisor, link_secret) as runner):
                    limits = Limits(runner.keys, engine, settings.key_max_concurrent)
                    throttle = FailedAuthThrottle(settings.failed_auth_limit, settings.failed_auth_window_seconds,
                                                  settings.failed_auth_delay_seconds)
                    databases = DatabaseProbe(catalog.engines)
                    await databases.probe()
                    app.state.services = Services(
                        settings, engine, catalog, upstreams, Authenticator(runner.keys, session_secret, throttle),
                        limits,
                        Downloads(limits, engine, settings), runner, Submissions(runner.jobs, limits, engine),
                        supervisor, databases)
                    if auth and not await runner.keys.count():
                        log.warning("no API key exists, so every request is refused (401). Create one with: "
                                    "exporter keys create NAME --grant 'dataset:*'")
                    supervisor.add("download-watch", limits.watch)
                    supervisor.add("database-probe", databases.run)
                    supervisor.add("event-loop-lag", watch_lag)
                    supervisor.add("export-log-flusher", lambda: flush_backlog(backlog))
                    try:
                        yield
                    finally:
                        await limits.close()
        finally:
            for upstream in upstreams.values():
                await upstream.aclose()

    async def on_refused(request: Request, error: ExportError) -> None:
        services: Services | None = getattr(request.app.state, "services", None)
        if isinstance(error, TooManyFailedAttempts) and not error.first:
            return  # a throttled address's failures add one row, when throttling begins, not one each (a flood)
        if services is not None:
            await record_refusal(services.engine, request, error)

    # FastAPI's own /openapi.json, /docs and /redoc answer anyone, and /docs loads Swagger's script from a CDN:
    # the document is served by routes/openapi.py behind auth instead, and there are no HTML docs (issue 18).
    app = FastAPI(title="exporter", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.add_middleware(RefuseTokensInUrls)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIds)  # outermost: refusals get a request id and an access line too
    install_error_handlers(app, on_refused, rendering.error_page_for(settings.auth != "off"))
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    if settings.trusted_proxies:
        # Outermost, so the audit log and the cookie's Secure flag see the client the proxy names. The servers
        # run uvicorn with proxy_headers off (it would trust 127.0.0.1): this is the one place that decides.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    # Around the whole stack, Starlette's ServerErrorMiddleware too, so every response (its 500 as well) is
    # covered, and SendTimeout is given the server's own send (see its docstring).
    build_middleware_stack = app.build_middleware_stack
    app.build_middleware_stack = (  # type: ignore[method-assign]
        lambda: SendTimeout(build_middleware_stack(), seconds=settings.send_timeout_seconds))
    for module in (datasets, exports, jobs, files, proxy, health, metrics, openapi, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=rendering.STATIC), name="static")
    return app
