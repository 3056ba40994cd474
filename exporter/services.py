"""Annotated dependencies read from app.state, which the lifespan fills."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.access.admission import Limits
from exporter.config import Settings
from exporter.jobs.queue import Jobs
from exporter.serving.relay import Upstream
from exporter.sources.datasets import Catalog


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def _catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


def _upstreams(request: Request) -> Mapping[str, Upstream]:
    upstreams: Mapping[str, Upstream] = request.app.state.upstreams
    return upstreams


def _jobs(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.jobs
    return jobs


def _limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[AsyncEngine, Depends(_engine)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
UpstreamsDep = Annotated[Mapping[str, Upstream], Depends(_upstreams)]
JobsDep = Annotated[Jobs, Depends(_jobs)]
LimitsDep = Annotated[Limits, Depends(_limits)]
