"""create_app(settings): the lifespan owns the engines, the upstream clients and the job workers; routers mounted;
one JSON error shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter import __version__
from exporter.access.admission import Limits
from exporter.access.authentication import RefuseTokensInUrls, load_link_secret, load_secret
from exporter.access.capacity import ExportSlots, SendTimeout, export_slot_count
from exporter.audit import record_refusal
from exporter.config import Settings
from exporter.errors import install_error_handlers
from exporter.jobs.worker import run_jobs
from exporter.logs import RequestIds
from exporter.openapi import document
from exporter.routes import datasets, exports, files, health, jobs, metrics, proxy
from exporter.serving.relay import create_upstreams
from exporter.sources.datasets import Catalog
from exporter.sources.engines import create_db_engine
from exporter.web import pages


@asynccontextmanager
async def open_sources(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, Catalog]]:
    """The service's own engine and the catalog of datasets over every source; disposed on exit. Each database
    gives exports its export slots, and its pool holds EXPORTER_RESERVED_SLOTS connections more for everything
    else (the export log, the catalog, /readyz), so those never wait behind exports."""
    urls: dict[str | None, str] = {None: settings.database_url}
    urls.update(settings.sources)
    slots = {name: export_slot_count(url, settings) for name, url in urls.items()}
    sources = {name: create_db_engine(url, pool_connections=slots[name] + settings.reserved_slots)
               for name, url in urls.items()}
    engine = sources[None]
    try:
        yield engine, Catalog(settings.datasets, sources, {name: ExportSlots(n) for name, n in slots.items()})
    finally:
        for source in sources.values():
            await source.dispose()


log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstreams = create_upstreams(settings.upstreams)
        try:
            async with open_sources(settings) as (engine, catalog), run_jobs(settings, catalog, engine) as runner:
                app.state.settings = settings
                app.state.engine = engine
                app.state.sources = catalog.engines
                app.state.catalog = catalog
                app.state.upstreams = upstreams
                app.state.jobs = runner.jobs
                app.state.runner = runner
                app.state.keys = runner.keys
                limits = Limits(runner.keys, runner.jobs, settings.key_max_concurrent)
                app.state.limits = limits
                if settings.auth == "off":
                    log.warning("EXPORTER_AUTH=off: every caller may read every dataset, file and upstream")
                else:
                    runner.jobs.link_secret = await load_link_secret(runner.keys.engine)
                    app.state.session_secret = await load_secret(runner.keys.engine, "session")
                    if not await runner.keys.count():
                        log.warning("no API key exists, so every request is refused (401). Create one with: "
                                    "exporter keys create NAME --grant 'dataset:*'")
                watcher = asyncio.create_task(limits.watch())
                try:
                    yield
                finally:
                    watcher.cancel()
        finally:
            for upstream in upstreams.values():
                await upstream.aclose()

    app = FastAPI(title="exporter", version=__version__, lifespan=lifespan)
    app.add_middleware(RefuseTokensInUrls)
    app.add_middleware(RequestIds)  # outermost: refusals get a request id and an access line too
    install_error_handlers(app, record_refusal, pages.error_page)
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    app.add_middleware(SendTimeout, seconds=settings.send_timeout_seconds)
    for module in (datasets, exports, jobs, files, proxy, health, metrics, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    return app
