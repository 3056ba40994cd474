"""The job as the API shows it: its public JSON, its progress, and its result's name and signed URL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from exporter.access.links import link_query
from exporter.models import Job


def filename(job: Job) -> str:
    return f"{job.dataset}.{job.format}"


def job_params(job: Job) -> list[tuple[str, str]]:
    """The job's parameters as (name, value) pairs in their order; a job stored before they were pairs has an
    object (whose names cannot repeat)."""
    if isinstance(job.params, dict):
        return list(job.params.items())
    return [(str(name), str(value)) for name, value in job.params]


def job_json(job: Job, media_type: str, link_query: str | None = None) -> dict[str, Any]:
    """The job as the API shows it; `media_type` is its format's Content-Type; `link_query` signs the result's
    URL so it works without a header."""
    return {
        "id": job.id,
        "dataset": job.dataset,
        "format": job.format,
        "params": [list(pair) for pair in job_params(job)],
        "state": job.state,
        "rows": job.rows,
        "bytes": job.bytes,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "expires_at": _iso(job.expires_at),
        "attempt": job.attempt,
        "error": {"code": job.error_code, "message": job.error_message} if job.state == "failed" else None,
        "result": {
            "url": f"/jobs/{job.id}/result" + (f"?{link_query}" if link_query else ""),
            "size": job.result_size,
            "sha256": job.result_sha256,
            "rows": job.result_rows,
            "content_type": media_type,
            "filename": filename(job),
        } if job.state == "succeeded" else None,
        "events_url": f"/jobs/{job.id}/events",
    }


def progress_json(rows: int, size: int, elapsed_seconds: float, position: int | None = None) -> dict[str, Any]:
    progress: dict[str, Any] = {
        "rows": rows,
        "bytes": size,
        "rows_per_second": round(rows / elapsed_seconds, 1) if elapsed_seconds > 0 else 0.0,
        "elapsed_seconds": round(elapsed_seconds, 3),
    }
    if position is not None:
        progress["position"] = position
    return progress


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class JobView:
    """`view(job)`: the job's JSON, with a result URL signed (`link_secret`, for `link_ttl_seconds`) when auth is
    on, so that it works without a header; `media_type(format)` names a format's Content-Type."""

    def __init__(self, media_type: Callable[[str], str], link_secret: bytes | None, link_ttl_seconds: float) -> None:
        self._media_type = media_type
        self.link_secret = link_secret
        self._link_ttl_seconds = link_ttl_seconds

    def __call__(self, job: Job) -> dict[str, Any]:
        link = None
        if self.link_secret is not None and job.state == "succeeded":
            link = link_query(self.link_secret, job.id, self._link_ttl_seconds)
        return job_json(job, self._media_type(job.format), link)
