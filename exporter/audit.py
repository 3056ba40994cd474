"""The audit log is the export log: refused requests are written to it too, and `exporter audit` reads it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.errors import ExportError
from exporter.exportlog import ExportRecord, grouped, write_log
from exporter.models import ExportLogEntry
from exporter.redaction import truncated

# the first path segment → the kind of download it asks for
KINDS = {"exports": "export", "files": "file", "proxy": "relay", "jobs": "job", "datasets": "datasets",
         "sign-in": "sign_in"}
# What a refusal's row keeps of its request, at most: a caller that did not authenticate could otherwise fill the
# table with whatever it sends (one 401 row held 94 KB of query values). Its parameters are kept by name only.
MAX_PARAMETER_NAMES_CHARS = 512
MAX_RESOURCE_CHARS = 256
MAX_ERROR_CHARS = 512
COLUMNS = ("started_at", "key_name", "client_address", "kind", "dataset", "format", "resource", "parameters",
           "outcome", "rows", "bytes", "duration_seconds", "request_id", "error")


async def record_refusal(engine: AsyncEngine, request: Request, error: ExportError) -> None:
    """One `denied` row for a 401 or 403, one `limited` row for a 429 or 503-busy answer; no token text (see
    exportlog.write_log). A caller that did not authenticate gets a bounded row: its parameters' names only (up to
    MAX_PARAMETER_NAMES_CHARS in all), its resource and error cut short."""
    outcome = "denied" if error.status in (401, 403) else "limited" if error.status in (429, 503) else None
    if outcome is None or error.code() in ("database_unavailable", "dataset_unavailable"):
        return
    segments = request.url.path.strip("/").split("/")
    kind = KINDS.get(segments[0], truncated(segments[0], 64))
    if kind == "job" and segments[-1] == "result":
        kind = "job_result"
    name = truncated(segments[1], 128) if len(segments) > 1 else ""
    if kind == "export":
        name = name.split(".")[0]
    caller = getattr(request.state, "caller", None)
    params = [(n, v) for n, v in request.query_params.multi_items() if n != "signature"]
    parameters = grouped(params) if caller is not None else _names_only(params)
    resource = "/".join(segments[2:])
    record = ExportRecord(name, "", parameters, request.client.host if request.client else None, kind=kind,
                          key_name=caller.name if caller is not None else None,
                          resource=truncated(resource, MAX_RESOURCE_CHARS) if resource else None,
                          started=time.monotonic())
    record.path = None
    # A `limited` answer sheds load: its row is queued (written by the backlog's flusher moments later) rather
    # than awaited, which under 20 Parquet exports held a 503 busy up to ~0.5 s at p99 (issue 19).
    await write_log(engine, record, outcome,
                    truncated(f"{error.status} {error.code()}: {error.message}", MAX_ERROR_CHARS),
                    queued=outcome == "limited")


def _names_only(params: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Each distinct name (cut to 64 characters) with no values, in order, as long as their JSON fits
    MAX_PARAMETER_NAMES_CHARS."""
    names: dict[str, list[str]] = {}
    room = MAX_PARAMETER_NAMES_CHARS
    for raw, _ in params:
        name = truncated(raw, 64)
        if name in names:
            continue
        if len(name) + 8 > room:  # 8: the JSON around a name, `"": [], `
            break
        names[name] = []
        room -= len(name) + 8
    return names


async def audit_rows(engine: AsyncEngine, key: str | None, since: datetime | None, outcome: str | None,
                     limit: int) -> Sequence[dict[str, Any]]:
    """Newest first."""
    query = select(*(getattr(ExportLogEntry, c) for c in COLUMNS)).order_by(ExportLogEntry.id.desc()).limit(limit)
    if key is not None:
        query = query.where(ExportLogEntry.key_name == key)
    if since is not None:
        query = query.where(ExportLogEntry.started_at >= since.astimezone(UTC))
    if outcome is not None:
        query = query.where(ExportLogEntry.outcome == outcome)
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(query)]
