"""create_app(settings): the lifespan owns the engines, the upstream clients and the job workers; routers mounted;
one JSON error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter import __version__
from exporter.config import Settings
from exporter.datasets import Catalog
from exporter.db import create_db_engine
from exporter.errors import install_error_handlers
from exporter.events import Notifier
from exporter.exports import export_media_type
from exporter.jobs import Jobs
from exporter.relay import create_upstreams
from exporter.routes import datasets, exports, files, health, jobs, proxy
from exporter.workers import Runner


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_db_engine(settings.database_url)
        sources: dict[str | None, AsyncEngine] = {None: engine}
        sources.update({name: create_db_engine(url) for name, url in settings.sources.items()})
        app.state.settings = settings
        app.state.engine = engine
        app.state.sources = sources
        app.state.catalog = Catalog(settings.datasets, sources)
        upstreams = create_upstreams(settings.upstreams)
        app.state.upstreams = upstreams
        # The jobs' bookkeeping has its own small pool, so busy exports never delay it (and it never takes
        # their slots); its sessions are named exporter-jobs in pg_stat_activity.
        jobs_engine = create_db_engine(settings.database_url, application_name="exporter-jobs")
        app.state.jobs = Jobs(jobs_engine, Notifier(), settings, export_media_type)
        runner = Runner(settings, app.state.jobs, app.state.catalog, engine)
        app.state.runner = runner
        runner.start(settings.job_workers)
        try:
            yield
        finally:
            try:
                await runner.stop()
                for upstream in upstreams.values():
                    await upstream.aclose()
            finally:
                await jobs_engine.dispose()
                for source in sources.values():
                    await source.dispose()

    app = FastAPI(title="exporter", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    for module in (datasets, exports, jobs, files, proxy, health):
        app.include_router(module.router)
    return app
