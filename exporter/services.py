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

    @property
    def jobs(self) -> JobQueue:
        return self.runner.jobs


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _caller(request: Request, services: Annotated[Services, Depends(services_of)]) -> Caller:
    return await services.authenticator.authenticate(request)


ServicesDep = Annotated[Services, Depends(services_of)]
SettingsDep = Annotated[Settings, Depends(lambda request: services_of(request).settings)]
CatalogDep = Annotated[Catalog, Depends(lambda request: services_of(request).catalog)]
UpstreamsDep = Annotated[Mapping[str, Upstream], Depends(lambda request: services_of(request).upstreams)]
JobsDep = Annotated[JobQueue, Depends(lambda request: services_of(request).jobs)]
DownloadsDep = Annotated[Downloads, Depends(lambda request: services_of(request).downloads)]
SubmissionsDep = Annotated[Submissions, Depends(lambda request: services_of(request).submissions)]
AuthenticatorDep = Annotated[Authenticator, Depends(lambda request: services_of(request).authenticator)]
CallerDep = Annotated[Caller, Depends(_caller)]
