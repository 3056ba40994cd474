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

# the first path segment → the kind of download it asks for
KINDS = {"exports": "export", "files": "file", "proxy": "relay", "jobs": "job", "datasets": "datasets"}
COLUMNS = ("started_at", "key_name", "client_address", "kind", "dataset", "format", "resource", "parameters",
           "outcome", "rows", "bytes", "duration_seconds", "request_id", "error")


async def record_refusal(engine: AsyncEngine, request: Request, error: ExportError) -> None:
    """One `denied` row for a 401 or 403, one `limited` row for a 429 or 503-busy answer; no token text."""
    outcome = "denied" if error.status in (401, 403) else "limited" if error.status in (429, 503) else None
    if outcome is None or error.code() in ("database_unavailable", "dataset_unavailable"):
        return
    segments = request.url.path.strip("/").split("/")
    kind = KINDS.get(segments[0], segments[0])
    if kind == "job" and segments[-1] == "result":
        kind = "job_result"
    name = segments[1] if len(segments) > 1 else ""
    if kind == "export":
        name = name.split(".")[0]
    caller = getattr(request.state, "caller", None)
    params = [(n, v) for n, v in request.query_params.multi_items() if n != "signature"]
    record = ExportRecord(name, "", grouped(params), request.client.host if request.client else None, kind=kind,
                          key_name=caller.name if caller is not None else None,
                          resource="/".join(segments[2:]) or None, started=time.monotonic())
    record.path = None
    await write_log(engine, record, outcome, f"{error.status} {error.code()}: {error.message}")


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
