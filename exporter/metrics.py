"""Prometheus metrics (prometheus-client). Downloads are counted where the export log row is written, so the two
never disagree. Labels name kinds, datasets, roots, upstreams and states: never a key, a token, a path or a
parameter value."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.models import Job

log = logging.getLogger(__name__)

KINDS = ("export", "file", "relay", "job_result")  # the downloads; job submissions and runs are counted as jobs
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

DOWNLOADS = Counter("exporter_downloads_total", "Downloads by how they ended",
                    ["kind", "dataset_or_root", "format", "outcome"])
BYTES_SENT = Counter("exporter_bytes_sent_total", "Body bytes sent", ["kind"])
ROWS_SENT = Counter("exporter_rows_sent_total", "Rows sent in exports", ["dataset"])
ACTIVE_STREAMS = Gauge("exporter_active_streams", "Downloads being sent now", ["kind"], multiprocess_mode="livesum")
DURATION = Histogram("exporter_download_duration_seconds", "From the request to the end of the body", ["kind"],
                     buckets=BUCKETS)
FIRST_BYTE = Histogram("exporter_first_byte_seconds", "From the request to the first body byte", ["kind"],
                       buckets=BUCKETS)
JOBS = Gauge("exporter_jobs", "Jobs by state (read from the database at each scrape)", ["state"],
             multiprocess_mode="mostrecent")
QUEUE_WAIT = Histogram("exporter_job_queue_wait_seconds", "From a job's submission to its start", buckets=BUCKETS)
POOL_IN_USE = Gauge("exporter_db_pool_in_use", "Connections checked out of each database's pool", ["database"],
                    multiprocess_mode="livesum")
POOL_WAIT = Histogram("exporter_db_pool_wait_seconds", "Time an export waited for a database connection",
                      buckets=BUCKETS)
COPY_PARTS = Histogram("exporter_copy_parts", "COPY parts (connections) per fast-path export: more than 1 ran in "
                       "parallel", buckets=(1, 2, 3, 4, 8, 16, 64))
UPSTREAM_ERRORS = Counter("exporter_upstream_errors_total", "Upstream failures", ["upstream", "reason"])
EXPORT_LOG_BACKLOG = Gauge("exporter_export_log_backlog", "Export log rows waiting for the database",
                           multiprocess_mode="livesum")
EXPORT_LOG_BACKLOG_DROPPED = Counter("exporter_export_log_backlog_dropped_total",
                                     "Export log rows dropped because the backlog was full")
EVENT_LOOP_LAG = Gauge("exporter_event_loop_lag_seconds", "The worst delay of the event loop in the last 10 s: how "
                       "long a ready request waited to be served", multiprocess_mode="livemax")
# With several processes, a loop is up only if it runs in every one of them.
LOOP_UP = Gauge("exporter_background_loop_up", "1 while the background loop runs, 0 while it waits to be started "
                "again", ["loop"], multiprocess_mode="livemin")
LOOP_RESTARTS = Counter("exporter_background_loop_restarts_total", "Background loops started again after they "
                        "failed", ["loop"])


def count_download(kind: str, name: str, fmt: str, outcome: str, size: int, rows: int, seconds: float) -> None:
    if kind not in KINDS:
        return
    DOWNLOADS.labels(kind, name, fmt, outcome).inc()
    if outcome in ("denied", "limited"):
        return
    BYTES_SENT.labels(kind).inc(size)
    if kind == "export":
        ROWS_SENT.labels(name).inc(rows)
    DURATION.labels(kind).observe(seconds)


async def render(engines: Mapping[str | None, AsyncEngine], jobs_engine: AsyncEngine) -> tuple[bytes, str]:
    """The text format, with the gauges read now: jobs by state, and each pool's connections in use. While the
    database is away the jobs keep their last counts, so the rest (the export log's backlog) still shows."""
    try:
        async with jobs_engine.connect() as conn:
            rows = await conn.execute(select(Job.state, func.count()).group_by(Job.state))
            counts = {state: count for state, count in rows}
    except Exception as error:
        log.warning("metrics: the jobs could not be counted (%s); their gauges keep their last values",
                    type(error).__name__)
    else:
        for state in ("queued", "running", "succeeded", "failed", "cancelled", "expired"):
            JOBS.labels(state).set(counts.get(state, 0))
    for name, engine in engines.items():
        POOL_IN_USE.labels(name or "service").set(engine.pool.checkedout())  # type: ignore[attr-defined]
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(), CONTENT_TYPE_LATEST
    # `exporter serve --workers N`: the sums of every worker's samples, plus this process's own process metrics.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    ProcessCollector(registry=registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
