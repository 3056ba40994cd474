"""Job workers: claim a queued job, run the export pipeline into its result file while the lease is renewed and
progress reported, then finish it. Also each process's janitor (jobs of dead workers, expired results, partial
files) and its LISTEN connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.access.grants import Restriction
from exporter.access.keys import Keys
from exporter.config import Settings
from exporter.errors import DatabaseUnavailable, ExportError
from exporter.export.pipeline import iter_export, open_chunks
from exporter.export.request import export_media_type, prepare_export
from exporter.exportlog import ExportRecord, grouped, iter_recorded, recording
from exporter.jobs import wakeups
from exporter.jobs.queue import MAX_ATTEMPTS, JobQueue, now
from exporter.jobs.results import Result, part_path, result_path, write_result
from exporter.jobs.views import JobView, filename, job_params, progress_json
from exporter.models import Job
from exporter.outages import is_outage, outage_reason
from exporter.sources.datasets import Catalog
from exporter.sources.engines import create_db_engine
from exporter.supervision import LoopFactory, Supervisor

log = logging.getLogger(__name__)

JANITOR_SECONDS = 2.0  # also how soon the jobs of a revoked key stop
MAX_SILENCE_SECONDS = 2.0  # a running job reports progress at least this often, even when no row arrived
RETRY_SECONDS = 1.0  # after a database error in a worker's own bookkeeping (claiming, recording an outcome)
T = TypeVar("T")


@asynccontextmanager
async def run_jobs(settings: Settings, catalog: Catalog, log_engine: AsyncEngine, supervisor: Supervisor,
                   link_secret: bytes | None = None) -> AsyncIterator[Runner]:
    """EXPORTER_JOB_WORKERS workers, the janitor and the listener, running under `supervisor` until the block
    ends; then every job they run is handed back to the queue. The jobs' bookkeeping has its own small pool, so
    busy exports never delay it; its sessions are named exporter-jobs in pg_stat_activity. With a `link_secret`
    (auth on), the jobs' result URLs are signed."""
    engine = create_db_engine(settings.database_url, application_name="exporter-jobs")
    view = JobView(export_media_type, link_secret, settings.link_ttl_seconds)
    runner = Runner(settings, JobQueue(engine, wakeups.Notifier(), settings, view), Keys(engine), catalog,
                    log_engine, supervisor)
    runner.start(settings.job_workers)
    try:
        yield runner
    finally:
        try:
            await runner.stop()
        finally:
            await engine.dispose()


class Runner:
    """`workers` job workers (loops job-worker-0, -1, ...), the janitor (job-janitor) and, on PostgreSQL, the
    notification listener (job-listener): background loops of `supervisor`. stop() hands every running job back
    to the queue."""

    def __init__(self, settings: Settings, jobs: JobQueue, keys: Keys, catalog: Catalog, log_engine: AsyncEngine,
                 supervisor: Supervisor) -> None:
        self._settings = settings
        self.jobs = jobs
        self.keys = keys
        self._catalog = catalog
        self._log_engine = log_engine
        self._supervisor = supervisor
        self._loops: list[str] = []

    def start(self, workers: int) -> None:
        self._settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        loops: dict[str, LoopFactory] = {f"job-worker-{number}": functools.partial(self._work, f"{prefix}:{number}")
                                         for number in range(workers)}
        loops["job-janitor"] = self._janitor
        if self.jobs.engine.dialect.name == "postgresql":
            url = self.jobs.engine.url.render_as_string(hide_password=False)
            loops["job-listener"] = functools.partial(self.jobs.notifier.listen, url)
        for name, loop in loops.items():
            self._supervisor.add(name, loop)
            self._loops.append(name)

    def stop_soon(self) -> None:
        """Start stopping (SIGTERM): each worker hands its job back as it stops. The process's other loops run
        on (the export log, the watch over downloads) until the app stops."""
        self._supervisor.stop_soon(self._loops)

    async def stop(self) -> None:
        """Stop these loops; running jobs are handed back before this returns. Safe to call again."""
        await self._supervisor.stop(self._loops)

    async def _work(self, owner: str) -> None:
        while True:
            with self.jobs.notifier.watch(wakeups.QUEUE) as woken:
                try:
                    job = await self.jobs.claim(owner)
                except Exception as error:
                    if not is_outage(error):
                        raise  # a bug: the supervisor logs it and starts this worker again
                    log.warning("job worker: cannot claim a job, the database is unavailable (%s); trying again "
                                "in %.0f s", outage_reason(error), RETRY_SECONDS)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if job is None:
                    await wakeups.wait(woken)
                    continue
            await self._run(job, owner)

    async def _run(self, job: Job, owner: str) -> None:
        """Run one claimed job to its end: succeeded, failed, or stopped because it was cancelled or its lease was
        lost. Cancelling this (shutdown) stops the export, removes its partial file and hands the job back."""
        record = ExportRecord(job.dataset, job.format, grouped(job_params(job)), None,
                              kind="job_run", resource=job.id)
        export = asyncio.create_task(self._export(job, record))
        try:
            if not await self._watch(job, owner, record, export):
                return
        except asyncio.CancelledError:
            await _stopped(export)
            with contextlib.suppress(Exception):
                await self.jobs.hand_back(job, owner)
            raise
        try:
            size, sha256 = export.result()
        except Exception as error:
            await self._record(job, self._failure(job, owner, error))
            return
        result = Result(result_path(self._settings.jobs_dir, job), size, sha256, record.rows)
        if await self._record(job, lambda: self.jobs.succeed(job, owner, result)):
            return
        # Not ours any more: cancelled at the last moment, or requeued when its lease ran out while the database
        # was away (the next attempt then writes the file again).
        current = await self._record(job, lambda: self.jobs.get(job.id))
        if current is not None and current.state != "succeeded":
            await anyio.Path(result.path).unlink(missing_ok=True)

    def _failure(self, job: Job, owner: str, error: Exception) -> Callable[[], Awaitable[None]]:
        """Log how the attempt failed and return the write that records it: an attempt whose database went away
        is run again (up to MAX_ATTEMPTS, then database_unavailable), an ExportError fails the job with its
        code, anything else with internal_error."""
        if is_outage(error):
            reason = outage_reason(error)
            log.warning("job %s: attempt %d of %d lost its database (%s)", job.id, job.attempt, MAX_ATTEMPTS, reason)
            return lambda: self.jobs.retry(job, owner, DatabaseUnavailable.code(), f"the database went away: {reason}")
        if isinstance(error, ExportError):
            log.warning("job %s failed: %s: %s", job.id, error.code(), error.message)
            code, message = error.code(), error.message
        else:
            log.error("job %s failed", job.id, exc_info=error)
            code, message = "internal_error", "the export failed unexpectedly; see the server log"
        return lambda: self.jobs.fail(job, owner, code, message)

    async def _record(self, job: Job, write: Callable[[], Awaitable[T]]) -> T | None:
        """Run a write of the job's outcome until it is done: while the database is away it is tried again every
        RETRY_SECONDS. Each such write is conditional on the job's state and lease, so once the job is no longer
        ours it changes nothing. Any other error is logged and gives None: the job is left to its lease, after
        which the janitor runs it again."""
        waiting = False
        while True:
            try:
                return await write()
            except Exception as error:
                if not is_outage(error):
                    log.exception("job %s: recording its outcome failed; it runs again when its lease ends", job.id)
                    return None
                if not waiting:
                    log.warning("job %s: the database is unavailable (%s); recording its outcome when it is back",
                                job.id, outage_reason(error))
                    waiting = True
            await asyncio.sleep(RETRY_SECONDS)

    async def _watch(self, job: Job, owner: str, record: ExportRecord, export: asyncio.Task[tuple[int, str]]
                     ) -> bool:
        """Renew the lease and report progress until the export ends (True), or stop it when the job is no longer
        ours: cancelled by DELETE, or handed to another worker after our lease expired (False)."""
        started = last_sent = time.monotonic()
        last_rows = -1
        failing = False  # the lease's renewal failed last time: one warning per outage, not one per interval
        while not export.done():
            await asyncio.wait({export}, timeout=self._settings.job_progress_seconds)
            if export.done():
                break
            now = time.monotonic()
            due = record.rows != last_rows or now - last_sent >= MAX_SILENCE_SECONDS
            progress = progress_json(record.rows, record.bytes, now - started) if due else None
            try:
                ours = await self.jobs.heartbeat(job, owner, record.rows, record.bytes, progress)
            except Exception as error:
                if not is_outage(error):
                    log.exception("job %s: renewing its lease failed", job.id)
                elif not failing:
                    log.warning("job %s: renewing its lease failed: %s", job.id, outage_reason(error))
                failing = True
                continue
            failing = False
            if not ours:
                await _stopped(export)
                return False
            if due:
                last_sent, last_rows = now, record.rows
        return True

    async def _export(self, job: Job, record: ExportRecord) -> tuple[int, str]:
        export = await prepare_export(self._catalog, filename(job), job_params(job),
                                      Restriction.from_json(job.restriction), self._settings)
        chunks = open_chunks(export.dataset, export.query, export.options, self._settings, record,
                             wait_for_slot=True)
        body = iter_recorded(iter_export(chunks, compression=export.compression, record=record,
                                         max_rows=export.max_rows), record, None)
        jobs_dir = self._settings.jobs_dir
        # The run ends when its file is in place: its row is written then, so a full disk logs it failed.
        async with recording(record, self._log_engine):
            return await write_result(body, part_path(jobs_dir, job), result_path(jobs_dir, job))

    async def _janitor(self) -> None:
        while True:
            try:
                await self.jobs.requeue_lost()
                await self.jobs.fail_unauthorised(await self.keys.unusable(await self.jobs.owners(), now()))
                await self.jobs.expire_due()
                await self._sweep_parts()
            except Exception as error:
                if is_outage(error):
                    log.warning("job janitor: the database is unavailable (%s)", outage_reason(error))
                else:
                    log.exception("job janitor: a round failed")
            await asyncio.sleep(JANITOR_SECONDS)

    async def _sweep_parts(self) -> None:
        """Remove partial files that no running attempt writes any more (left by a process that died)."""
        parts: dict[tuple[str, int], anyio.Path] = {}
        async for path in anyio.Path(self._settings.jobs_dir).glob("*.part"):
            job_id, _, attempt = path.name.removesuffix(".part").rpartition(".")
            if attempt.isdigit():
                parts[(job_id, int(attempt))] = path
        if not parts:
            return
        running = await self.jobs.running_attempts([job_id for job_id, _ in parts])
        for key, path in parts.items():
            if key not in running:
                await path.unlink(missing_ok=True)


async def _stopped(export: asyncio.Task[tuple[int, str]]) -> None:
    """Cancel the export and wait until its query is cancelled and its partial file removed."""
    export.cancel()
    await asyncio.gather(export, return_exceptions=True)
