"""Export jobs: POST /jobs, GET /jobs, GET and DELETE /jobs/{id}, its event stream and its result file."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from exporter.access.admission import Limits, released_on_error
from exporter.access.authentication import CallerDep, authenticate, check_link, require
from exporter.access.keys import ANONYMOUS, Caller, caller_of
from exporter.config import FileRootConfig
from exporter.errors import InvalidParameter, JobExpired, RevokedToken
from exporter.export.pipeline import (
    EXPORT_FORMATS,
    Export,
    ExportRecord,
    export_media_type,
    grouped,
    iter_recorded,
    prepare_export,
    write_log,
)
from exporter.jobs.queue import TERMINAL, JobRequest, Jobs, filename
from exporter.models import Job
from exporter.services import CatalogDep, EngineDep, JobsDep, LimitsDep, SettingsDep
from exporter.serving.files import Target
from exporter.serving.responses import file_response
from exporter.web import pages

router = APIRouter(tags=["jobs"])

RETRY_MILLISECONDS = 3000  # how long EventSource waits before it reconnects
SHUTDOWN_GRACE_SECONDS = 2.0  # more than the streams' poll, so each sees the shutdown and ends cleanly
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII
CACHE_CONTROL = {"Cache-Control": "no-cache"}
State = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]


class JobSubmission(BaseModel):
    """The body of POST /jobs: `params` are the query parameters of GET /exports/{dataset}.{format}."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    format: Annotated[str, Field(json_schema_extra={"enum": list(EXPORT_FORMATS)})]
    params: dict[str, str] = {}

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in EXPORT_FORMATS:
            raise ValueError(f"must be one of {', '.join(EXPORT_FORMATS)}")
        return value


@router.post("/jobs", status_code=202, response_class=JSONResponse)
async def create_job(submission: JobSubmission, request: Request, catalog: CatalogDep, caller: CallerDep
                     ) -> Response:
    require(caller, "dataset", submission.dataset)
    params = list(submission.params.items())
    export = await prepare_export(catalog, f"{submission.dataset}.{submission.format}", params,
                                  caller.restriction(submission.dataset))
    return await submit_job(request, caller, export, params)


async def submit_job(request: Request, caller: Caller, export: Export, params: list[tuple[str, str]]) -> Response:
    """202 with the new job, or 200 with the one an earlier request with this Idempotency-Key created; the
    submission is recorded in the export log."""
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidParameter("Idempotency-Key must be 1 to 255 visible ASCII characters",
                               parameter="Idempotency-Key")
    jobs: Jobs = request.app.state.jobs
    limits: Limits = request.app.state.limits
    hold = await limits.admit(caller)  # refused at the key's limit; the job counts itself from now on
    if hold is not None:
        hold.release()
    job, created = await jobs.submit(JobRequest(export.dataset.name, export.format, dict(params), caller.key_id,
                                                caller.restriction(export.dataset.name)), idempotency_key)
    record = ExportRecord(export.dataset.name, export.format, grouped(params),
                          request.client.host if request.client else None, kind="job", key_name=caller.name,
                          resource=job.id)
    await write_log(request.app.state.engine, record, "completed", None)
    return JSONResponse(jobs.json(job), status_code=202 if created else 200,
                        headers={"Location": f"/jobs/{job.id}", "Preference-Applied": "respond-async"})


def prefers_async(prefer: str | None) -> bool:
    """Whether a Prefer header (RFC 7240) asks for respond-async."""
    return prefer is not None and any(
        item.split(";")[0].strip().lower() == "respond-async" for item in prefer.split(","))


def _owner(caller: Caller) -> str | None:
    """Whose jobs the caller sees: its own, or (admin, or auth off) everyone's."""
    return None if caller.admin else caller.key_id


@router.get("/jobs", response_class=JSONResponse)
async def list_jobs(request: Request, jobs: JobsDep, caller: CallerDep, state: State | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Response:
    """The jobs as JSON; for a browser, the jobs page."""
    found = [jobs.json(job) for job in await jobs.newest(state, limit, _owner(caller))]
    if pages.wants_html(request):
        return pages.jobs_page(request, found, caller)
    return JSONResponse({"jobs": found}, headers={"Vary": "Accept"})


@router.get("/jobs/{job_id}", response_class=JSONResponse)
async def get_job(job_id: str, jobs: JobsDep, caller: CallerDep) -> Response:
    return JSONResponse(jobs.json(await jobs.get(job_id, _owner(caller))))


@router.delete("/jobs/{job_id}", response_class=JSONResponse)
async def delete_job(job_id: str, jobs: JobsDep, caller: CallerDep) -> Response:
    return JSONResponse(jobs.json(await jobs.delete(job_id, _owner(caller))))


@router.get("/jobs/{job_id}/events", response_class=Response)
async def job_events(job_id: str, request: Request, jobs: JobsDep, settings: SettingsDep, caller: CallerDep,
                     last_event_id: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None) -> Response:
    """The job's event stream (WHATWG Server-Sent Events), resumable with Last-Event-ID or ?last_event_id=."""
    header = request.headers.get("last-event-id", "").strip()
    after = int(header) if header.isdigit() else last_event_id
    job = await jobs.get(job_id, _owner(caller))
    if job.state in TERMINAL and after is not None and after >= job.last_event_id:
        return Response(status_code=204)  # it has seen the end: 204 tells EventSource to stop reconnecting
    # On shutdown the stream ends cleanly within the grace period (EventSource then reconnects, to another
    # replica behind a load balancer) instead of being cut off.
    shutdown = anyio.Event()
    return EventSourceResponse(
        _sse(jobs, job, after, shutdown), headers=CACHE_CONTROL, sep="\n", ping=settings.sse_ping_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


async def _sse(jobs: Jobs, job: Job, after: int | None, shutdown: anyio.Event) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(retry=RETRY_MILLISECONDS, sep="\n")
    async for event_id, kind, data in jobs.iter_events(job, after, shutdown.is_set):
        yield ServerSentEvent(data, event=kind, id=str(event_id), sep="\n")


@router.api_route("/jobs/{job_id}/result", methods=["GET", "HEAD"], response_class=Response)
async def job_result(job_id: str, request: Request, jobs: JobsDep, settings: SettingsDep, limits: LimitsDep,
                     engine: EngineDep, expires: str | None = None, signature: str | None = None) -> Response:
    """The result for its owner's key, or for anyone with a signed link (what `result.url` holds with auth on),
    which works without a header as long as the link is fresh and its key valid."""
    if signature is not None and jobs.link_secret is not None:
        check_link(jobs.link_secret, job_id, expires or "", signature)
        job = await jobs.get(job_id)
        caller = await _link_caller(request, job.owner_key)
    else:
        caller = await authenticate(request)
        job = await jobs.get(job_id, _owner(caller))
    path = jobs.finished_result(job)
    try:
        info = await anyio.Path(path).stat()
    except FileNotFoundError:
        raise JobExpired(f"the result of job {job.id} has expired") from None
    target = Target(FileRootConfig("jobs", path.parent), filename(job), path, info)
    digest = base64.b64encode(bytes.fromhex(job.result_sha256 or "")).decode()
    extra = {**CACHE_CONTROL, "Repr-Digest": f"sha-256=:{digest}:", "X-Export-Rows": str(job.result_rows)}
    if request.method == "HEAD":
        return file_response(request, target, settings.file_chunk_bytes, extra, export_media_type(job.format))
    record = ExportRecord(job.dataset, job.format, {}, request.client.host if request.client else None,
                          kind="job_result", key_name=caller.name, resource=job.id)
    hold = await limits.admit(caller)
    with released_on_error(hold):
        return file_response(request, target, settings.file_chunk_bytes, extra, export_media_type(job.format),
                             hold, lambda chunks: iter_recorded(chunks, record, engine))


async def _link_caller(request: Request, owner_key: str | None) -> Caller:
    """The key a signed link speaks for: its job's owner, which must still be valid."""
    if owner_key is None:
        return ANONYMOUS
    key = await request.app.state.keys.find(owner_key)
    now = datetime.now(UTC)
    if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise RevokedToken("the key this link was made for was revoked or has expired")
    return caller_of(key)
