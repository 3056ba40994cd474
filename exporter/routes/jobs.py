"""Export jobs: POST /jobs, GET /jobs, GET and DELETE /jobs/{id}, its event stream and its result file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from exporter.access.authentication import refuse_tokens_in
from exporter.access.grants import Caller, require
from exporter.access.links import check_link, link_caller
from exporter.downloads import client_address
from exporter.export.request import export_media_type, prepare_export
from exporter.exportlog import ExportRecord
from exporter.jobs.events import TERMINAL, parse_event_id
from exporter.jobs.queue import JobQueue
from exporter.jobs.results import result_target
from exporter.jobs.submission import SUBMISSION_BODY, read_submission
from exporter.models import Job
from exporter.services import CallerDep, CatalogDep, DownloadsDep, JobsDep, ServicesDep, SettingsDep, SubmissionsDep
from exporter.web.rendering import jobs_page, wants_html

router = APIRouter(tags=["jobs"])

RETRY_MILLISECONDS = 3000  # how long EventSource waits before it reconnects
SHUTDOWN_GRACE_SECONDS = 2.0  # more than the streams' poll, so each sees the shutdown and ends cleanly
State = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]


def _owner(caller: Caller) -> str | None:
    """Whose jobs the caller sees: its own, or (admin, or auth off) everyone's."""
    return None if caller.admin else caller.key_id


@router.post("/jobs", status_code=202, response_class=JSONResponse, openapi_extra=SUBMISSION_BODY)
async def create_job(request: Request, catalog: CatalogDep, caller: CallerDep, submissions: SubmissionsDep) -> Response:
    """The caller is known before a byte of the body is read (a pydantic body parameter is read before it)."""
    submission = await read_submission(request)
    require(caller, "dataset", submission.dataset)
    params = submission.pairs()
    refuse_tokens_in(params)
    export = await prepare_export(catalog, f"{submission.dataset}.{submission.format}", params,
                                  caller.restriction(submission.dataset))
    return await submissions.submit(caller, export, params, request.headers.get("idempotency-key"),
                                    client_address(request))


@router.get("/jobs", response_class=JSONResponse)
async def list_jobs(request: Request, jobs: JobsDep, caller: CallerDep, state: State | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Response:
    """The jobs as JSON; for a browser, the jobs page."""
    found = [jobs.view(job) for job in await jobs.newest(state, limit, _owner(caller))]
    if wants_html(request):
        return jobs_page(request, found, caller)
    return JSONResponse({"jobs": found}, headers={"Vary": "Accept"})


@router.get("/jobs/{job_id}", response_class=JSONResponse)
async def get_job(job_id: str, jobs: JobsDep, caller: CallerDep) -> Response:
    return JSONResponse(jobs.view(await jobs.get(job_id, _owner(caller))))


@router.delete("/jobs/{job_id}", response_class=JSONResponse)
async def delete_job(job_id: str, jobs: JobsDep, caller: CallerDep) -> Response:
    return JSONResponse(jobs.view(await jobs.delete(job_id, _owner(caller))))


@router.get("/jobs/{job_id}/events", response_class=Response)
async def job_events(job_id: str, request: Request, jobs: JobsDep, settings: SettingsDep, caller: CallerDep,
                     last_event_id: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None) -> Response:
    """The job's event stream (WHATWG Server-Sent Events), resumable with Last-Event-ID or ?last_event_id=."""
    after = parse_event_id(request.headers.get("last-event-id"))
    after = last_event_id if after is None else after
    job = await jobs.get(job_id, _owner(caller))
    if job.state in TERMINAL and after is not None and after >= job.last_event_id:
        return Response(status_code=204)  # it has seen the end: 204 tells EventSource to stop reconnecting
    # On shutdown the stream ends cleanly within the grace period (EventSource then reconnects, to another
    # replica behind a load balancer) instead of being cut off.
    shutdown = anyio.Event()
    return EventSourceResponse(
        _sse(jobs, job, after, shutdown), headers={"Cache-Control": "no-cache"}, sep="\n",
        ping=settings.sse_ping_seconds, ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


async def _sse(jobs: JobQueue, job: Job, after: int | None, shutdown: anyio.Event) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(retry=RETRY_MILLISECONDS, sep="\n")
    async for event_id, kind, data in jobs.events.iter_events(job, after, shutdown.is_set):
        yield ServerSentEvent(data, event=kind, id=str(event_id), sep="\n")


async def _result_reader(job_id: str, request: Request, services: ServicesDep, expires: str | None = None,
                         signature: str | None = None) -> tuple[Job, Caller]:
    """The job and who fetches its result: its owner's key, or anyone with a signed link (what `result.url` holds
    with auth on), which works without a header as long as the link is fresh and its key usable."""
    link_secret = services.jobs.view.link_secret
    if signature is not None and link_secret is not None:
        check_link(link_secret, job_id, expires or "", signature)
        job = await services.jobs.get(job_id)
        return job, await link_caller(services.runner.keys, job.owner_key)
    caller = await services.authenticator.authenticate(request)
    return await services.jobs.get(job_id, _owner(caller)), caller


@router.api_route("/jobs/{job_id}/result", methods=["GET", "HEAD"], response_class=Response)
async def job_result(request: Request, reader: Annotated[tuple[Job, Caller], Depends(_result_reader)],
                     settings: SettingsDep, downloads: DownloadsDep) -> Response:
    job, caller = reader
    target, headers = await result_target(settings.jobs_dir, job)
    record = ExportRecord(job.dataset, job.format, {}, client_address(request), kind="job_result",
                          key_name=caller.name, resource=job.id)
    return await downloads.file(request, caller, record, target, headers, export_media_type(job.format))
