"""Submitting an export as a job: POST /jobs's body, `Prefer: respond-async` on an export URL, Idempotency-Key,
the key's limit, and the submission's row in the export log."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.access.admission import Limits
from exporter.access.grants import Caller
from exporter.errors import InvalidParameter
from exporter.export.request import EXPORT_FORMATS, Export
from exporter.exportlog import ExportRecord, grouped, write_log
from exporter.jobs.queue import JobQueue, JobRequest

IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII


class JobSubmission(BaseModel):
    """The body of POST /jobs: `params` are the query parameters of GET /exports/{dataset}.{format}."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    format: Annotated[str, Field(json_schema_extra={"enum": list(EXPORT_FORMATS)})]
    # An object, or a list of [name, value] pairs, which can repeat a filter as a query string can.
    params: dict[str, str] | list[tuple[str, str]] = {}

    def pairs(self) -> list[tuple[str, str]]:
        return list(self.params.items()) if isinstance(self.params, dict) else list(self.params)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in EXPORT_FORMATS:
            raise ValueError(f"must be one of {', '.join(EXPORT_FORMATS)}")
        return value


# POST /jobs reads its body itself, after authentication; the document still shows the body's schema.
SUBMISSION_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": JobSubmission.model_json_schema()}}}}


async def read_submission(request: Request) -> JobSubmission:
    """POST /jobs's body, read now (within EXPORTER_MAX_BODY_BYTES); an invalid one is a 400 invalid_parameter,
    worded as FastAPI words a body parameter's errors."""
    try:
        return JobSubmission.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError([{**item, "loc": ("body", *item["loc"])} for item in error.errors()]) from None


def prefers_async(prefer: str | None) -> bool:
    """Whether a Prefer header (RFC 7240) asks for respond-async."""
    return prefer is not None and any(
        item.split(";")[0].strip().lower() == "respond-async" for item in prefer.split(","))


class Submissions:
    """Jobs submitted through the API, admitted like downloads and recorded in the export log."""

    def __init__(self, queue: JobQueue, limits: Limits, log_engine: AsyncEngine) -> None:
        self._queue = queue
        self._limits = limits
        self._log_engine = log_engine

    async def submit(self, caller: Caller, export: Export, params: list[tuple[str, str]],
                     idempotency_key: str | None, client_address: str | None) -> JSONResponse:
        """202 with the new job, or 200 with the one an earlier request with this Idempotency-Key created."""
        if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise InvalidParameter("Idempotency-Key must be 1 to 255 visible ASCII characters",
                                   parameter="Idempotency-Key")
        limit = self._limits.limit_of(caller)  # checked as the job is queued, in one step with its insert
        name = export.dataset.name
        job, created = await self._queue.submit(
            JobRequest(name, export.format, tuple(params), caller.key_id, caller.restriction(name), limit),
            idempotency_key)
        record = ExportRecord(name, export.format, grouped(params), client_address, kind="job", key_name=caller.name,
                              resource=job.id)
        await write_log(self._log_engine, record, "completed", None)
        return JSONResponse(self._queue.view(job), status_code=202 if created else 200,
                            headers={"Location": f"/jobs/{job.id}", "Preference-Applied": "respond-async"})
