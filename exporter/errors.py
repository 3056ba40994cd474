"""Errors a request can meet, each with its HTTP status and a JSON body {"error": {"code", "message"}}."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from starlette.responses import JSONResponse  # fastapi re-exports it, but importing fastapi loads all of pydantic

from exporter.redaction import redact_tokens, redacted


class ExportError(Exception):
    """An error with a status; raised by stages before the first body byte, turned into JSON by the handler.
    `headers` go into that response (416 carries Content-Range)."""

    status: ClassVar[int] = 400
    # When to ask again, for the conditions that pass: each cause names its value here, once (Retry-After).
    retry_after_seconds: ClassVar[int | None] = None

    def __init__(self, message: str, *, parameter: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        retry = {} if self.retry_after_seconds is None else {"Retry-After": str(self.retry_after_seconds)}
        self.headers = {**retry, **(headers or {})}

    @classmethod
    def code(cls) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


class UnknownDataset(ExportError):
    status = 404


class UnknownFormat(ExportError):
    status = 404


class UnknownColumn(ExportError):
    pass


class UnknownOperator(ExportError):
    pass


class ColumnNotFilterable(ExportError):
    pass


class InvalidValue(ExportError):
    pass


class InvalidParameter(ExportError):
    pass


class AfterRequiresKeyOrder(ExportError):
    pass


class TooManyParameters(ExportError):
    """More query parameters (or POST /jobs params) than MAX_PARAMETERS (exporter/export/parameters.py)."""


class ParameterTooLong(ExportError):
    """A parameter's name or one of its values is longer than the grammar allows."""


class TooManyValues(ExportError):
    """More `__in` values in one request than the grammar allows."""


class TooManyRowsForXlsx(ExportError):
    """An XLSX export would have more rows than an Excel sheet holds; counted before the first byte."""


class DatasetUnavailable(ExportError):
    """The dataset's source cannot be read: its table is missing or its query fails (an operator's problem)."""

    status = 503


class DatabaseUnavailable(ExportError):
    """A database refused the connection or went away (see outages.py)."""

    status = 503
    retry_after_seconds = 5  # PostgreSQL's restart or failover takes seconds


class StorageFull(ExportError):
    """A job's result could not be written: its disk (or quota) is full. Its partial file has been removed."""

    status = 507


class StorageUnavailable(ExportError):
    """A job's result could not be written for another reason of its storage (an I/O error, a read-only or
    missing folder; later an object store that does not answer). Its partial file has been removed."""

    status = 503


class UnknownRoot(ExportError):
    status = 404


class FileNotFound(ExportError):
    """No servable file: missing, outside the root, hidden, or not a regular file; all answer the same."""

    status = 404


class InvalidPath(ExportError):
    pass


class RangeNotSatisfiable(ExportError):
    status = 416


class FileChanged(ExportError):
    """The file was truncated, rewritten or replaced after it was stat'ed: a 503 before the first byte, an aborted
    transfer after it."""

    status = 503


class FileUnreadable(ExportError):
    """The file exists but cannot be read (permissions, I/O error): an operator's problem."""

    status = 503


class UnknownUpstream(ExportError):
    status = 404


class UpstreamUnreachable(ExportError):
    """The upstream refused or failed the connection, or its answer broke off before its first body byte: a 502
    before the first byte, an aborted transfer after it. The message names the upstream, never its address."""

    status = 502


class UpstreamTimeout(ExportError):
    """The upstream did not connect, answer, or send more of its body within its timeouts: a 504 before the first
    byte, an aborted transfer after it."""

    status = 504


class UpstreamRedirect(ExportError):
    """The upstream redirected outside its base URL; the redirect is not followed and its Location not revealed."""

    status = 502


class TooManyRelays(ExportError):
    """The upstream has max_concurrent_relays in progress; the response carries Retry-After."""

    status = 429
    retry_after_seconds = 1


class UnknownJob(ExportError):
    status = 404


class JobNotFinished(ExportError):
    """The job's result is not there yet; Retry-After says when to ask again."""

    status = 409
    retry_after_seconds = 2


class JobFailed(ExportError):
    status = 409


class JobCancelled(ExportError):
    status = 409


class JobExpired(ExportError):
    """The job's result was deleted (its time to live passed, or DELETE asked for it)."""

    status = 410


class IdempotencyConflict(ExportError):
    """The Idempotency-Key was used before for another request."""

    status = 409


class TooManyJobs(ExportError):
    """EXPORTER_JOB_MAX_QUEUED jobs are queued; the response carries Retry-After."""

    status = 429
    retry_after_seconds = 10


class Unauthorized(ExportError):
    """No usable credentials: 401 with WWW-Authenticate: Bearer (RFC 6750 §3)."""

    status = 401

    def __init__(self, message: str, *, parameter: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, parameter=parameter,
                         headers={"WWW-Authenticate": 'Bearer realm="exporter"', **(headers or {})})


class MissingToken(Unauthorized):
    pass


class InvalidToken(Unauthorized):
    """Malformed, mistyped, unknown, or with the wrong secret: all answer alike."""


class ExpiredToken(Unauthorized):
    pass


class RevokedToken(Unauthorized):
    pass


class Forbidden(ExportError):
    """A valid key asked for something outside its grants or restrictions."""

    status = 403


class InvalidCsrfToken(ExportError):
    """A state-changing request authenticated by a session cookie came without its page's CSRF token."""

    status = 403


class LinkExpired(ExportError):
    status = 403


class TokenInUrl(ExportError):
    """A token in the URL (query or path) or in a job's parameters would end up in logs; it is refused before
    anything else."""


class TooManyRequests(ExportError):
    """The key has --max-concurrent downloads and jobs running; the response carries Retry-After."""

    status = 429
    retry_after_seconds = 5


class TooManyFailedAttempts(ExportError):
    """Too many failed authentications (401s, failed sign-ins) from one client address within a window: refused
    with Retry-After until it has passed. Only the first of a window (`first`) is written to the audit log."""

    status = 429
    retry_after_seconds = 60

    def __init__(self, message: str, *, parameter: str | None = None, headers: Mapping[str, str] | None = None,
                 retry_after_seconds: int = 60, first: bool = True) -> None:
        super().__init__(message, parameter=parameter,
                         headers={"Retry-After": str(retry_after_seconds), **(headers or {})})
        self.first = first


class ShuttingDown(ExportError):
    """The server is draining (SIGTERM): no new downloads; those in flight are stopped when the drain is over."""

    status = 503
    retry_after_seconds = 5


class RowLimitExceeded(ExportError):
    """The export would pass the key's --max-rows for the dataset: the transfer is aborted, never ended cleanly."""

    status = 403


class Busy(ExportError):
    """Every slot the dataset's database gives to exports is taken; answered at once, with Retry-After."""

    status = 503
    retry_after_seconds = 1


class StatementTimeout(ExportError):
    """The export's query sent no row within EXPORTER_STATEMENT_TIMEOUT_SECONDS; it has been cancelled."""

    status = 504


class BodyTooLarge(ExportError):
    """The request body is over EXPORTER_MAX_BODY_BYTES: answered as soon as that is known, the rest never read."""

    status = 413


class ConfigError(Exception):
    """The configuration file or environment is invalid; raised at startup."""


def error_body(code: str, message: str, parameter: str | None = None) -> dict[str, dict[str, str]]:
    """The one error shape; a message or parameter that echoes a request never echoes a token (see redaction)."""
    error = {"code": code, "message": redact_tokens(message)}
    if parameter is not None:
        error["parameter"] = redacted(parameter)
    return {"error": error}


def error_response(exc: ExportError) -> JSONResponse:
    return JSONResponse(error_body(exc.code(), exc.message, exc.parameter), status_code=exc.status,
                        headers=exc.headers)
