"""The OpenAPI document: FastAPI's, completed with what the routes cannot say themselves: every error response
(status, codes, the one JSON shape), the Bearer security of every route but the health checks, and the media
types of the streamed bodies."""

from __future__ import annotations

import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from exporter.formats import FORMATS

OPEN_PATHS = {"/healthz", "/readyz"}
LINK_PATHS = {"/jobs/{job_id}/result"}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "parameter": {"type": "string"}},
    }},
}
# status → the codes it carries, for the descriptions
CODES = {
    400: "invalid_parameter, unknown_column, column_not_filterable, unknown_operator, invalid_value, "
         "after_requires_key_order, invalid_path, token_in_url, too_many_rows_for_xlsx, too_many_parameters, "
         "parameter_too_long, too_many_values",
    401: "missing_token, invalid_token, expired_token, revoked_token (with WWW-Authenticate: Bearer)",
    403: "forbidden, link_expired, row_limit_exceeded",
    404: "unknown_dataset, unknown_format, unknown_root, file_not_found, unknown_upstream, unknown_job, not_found",
    405: "method_not_allowed",
    409: "job_not_finished (with Retry-After), job_failed, job_cancelled, idempotency_conflict",
    410: "job_expired",
    413: "body_too_large (the body is over EXPORTER_MAX_BODY_BYTES)",
    416: "range_not_satisfiable (with Content-Range: bytes */SIZE)",
    429: "too_many_requests, too_many_jobs, too_many_relays, too_many_failed_attempts (with Retry-After)",
    502: "upstream_unreachable, upstream_redirect",
    503: "database_unavailable, dataset_unavailable, file_changed, file_unreadable, shutting_down, busy "
         "(with Retry-After)",
    504: "upstream_timeout, statement_timeout",
}
# (path, method) → the statuses it may answer beyond 400, 401, 403, 404 and 503, and its body's media types
EXTRA: dict[tuple[str, str], tuple[tuple[int, ...], tuple[str, ...]]] = {
    ("/exports/{filename}", "get"): ((202, 409, 429, 504), tuple(sorted({f.media_type for f in FORMATS.values()}))),
    ("/exports/{filename}", "head"): ((), ()),
    ("/jobs", "post"): ((200, 409, 413, 429), ()),
    ("/jobs/{job_id}", "delete"): ((), ()),
    ("/jobs/{job_id}/events", "get"): ((204,), ("text/event-stream",)),
    ("/jobs/{job_id}/result", "get"): ((206, 304, 409, 410, 416, 429), ("*/*",)),
    ("/jobs/{job_id}/result", "head"): ((304, 409, 410), ()),
    ("/files/{root}", "get"): ((308,), ()),
    ("/files/{root}", "head"): ((308,), ()),
    ("/files/{root}/{path}", "get"): ((206, 304, 308, 416, 429), ("*/*",)),
    ("/files/{root}/{path}", "head"): ((304, 308), ()),
    ("/proxy/{upstream}/{path}", "get"): ((429, 502, 504), ("*/*",)),
    ("/proxy/{upstream}/{path}", "head"): ((429, 502, 504), ()),
    ("/metrics", "get"): ((), ("text/plain",)),
}
SUCCESS = {200: "the body", 202: "the job, created", 204: "nothing more to send", 206: "the ranges asked for",
           304: "not modified", 308: "the directory's URL, with a trailing slash"}


def document(app: FastAPI) -> dict[str, Any]:
    """The completed document (FastAPI caches it in app.openapi_schema)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    with warnings.catch_warnings():
        # A route that answers GET and HEAD gets one operation id for both; they are told apart below.
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key: exp_…"}}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            operation["operationId"] = f"{operation['operationId'].rsplit('_', 1)[0]}_{method}"
            extra, media_types = EXTRA.get((path, method), ((), ()))
            responses = operation["responses"]
            responses.pop("422", None)  # validation errors are 400 here, in the one error shape
            if media_types:
                responses.setdefault("200", {"description": SUCCESS[200]})["content"] = {
                    media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in media_types}
            # 429 on every authenticated operation: an address whose authentication failed too often
            statuses = [400, 405, *extra] if path in OPEN_PATHS else [400, 401, 403, 404, 405, 429, 503, *extra]
            for status in statuses:
                if status in SUCCESS:
                    responses.setdefault(str(status), {"description": SUCCESS[status]})
                    continue
                responses[str(status)] = {"description": CODES[status],
                                          "content": {"application/json": {"schema": ERROR}}}
            if path in LINK_PATHS:
                operation["security"] = [{"bearer": []}, {}]  # or a signed link's expires and signature
            elif path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema
