"""What the lifespan builds once (Services) and the dependencies through which routes receive it: the one place
that reads app.state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.access.admission import Limits
from exporter.access.authentication import Authenticator
from exporter.access.grants import Caller
from exporter.config import Settings
from exporter.downloads import Downloads
from exporter.jobs.queue import JobQueue
from exporter.jobs.submission import Submissions
from exporter.jobs.worker import Runner
from exporter.serving.relay import Upstream
from exporter.sources.datasets import Catalog
from exporter.sources.probes import DatabaseProbe
from exporter.supervision import Supervisor


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine  # the service's own database: the export log, keys, secrets
    catalog: Catalog
    upstreams: Mapping[str, Upstream]
    authenticator: Authenticator
    limits: Limits
    downloads: Downloads
    runner: Runner
    submissions: Submissions
    supervisor: Supervisor  # the background loops: add one with supervisor.add(name, factory)
    databases: DatabaseProbe  # whether each database answers, for /readyz

    @property
    def jobs(self) -> JobQueue:
        return self.runner.jobs


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services_of)]


def _settings(services: ServicesDep) -> Settings:
    return services.settings


def _catalog(services: ServicesDep) -> Catalog:
    return services.catalog


def _upstreams(services: ServicesDep) -> Mapping[str, Upstream]:
    return services.upstreams


def _jobs(services: ServicesDep) -> JobQueue:
    return services.jobs


def _downloads(services: ServicesDep) -> Downloads:
    return services.downloads


def _submissions(services: ServicesDep) -> Submissions:
    return services.submissions


def _authenticator(services: ServicesDep) -> Authenticator:
    return services.authenticator


async def _caller(request: Request, services: ServicesDep) -> Caller:
    return await services.authenticator.authenticate(request)


SettingsDep = Annotated[Settings, Depends(_settings)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
UpstreamsDep = Annotated[Mapping[str, Upstream], Depends(_upstreams)]
JobsDep = Annotated[JobQueue, Depends(_jobs)]
DownloadsDep = Annotated[Downloads, Depends(_downloads)]
SubmissionsDep = Annotated[Submissions, Depends(_submissions)]
AuthenticatorDep = Annotated[Authenticator, Depends(_authenticator)]
CallerDep = Annotated[Caller, Depends(_caller)]
