"""The job queue in the service's own database: submit, read, cancel and expire jobs; claim one with a lease,
renew it with progress, finish it. Every change of a job stores its events in the same transaction, numbered
by the job's row, and wakes whoever waits for them."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import orjson
from sqlalchemy import exc, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from exporter.access.admission import KeyLimit
from exporter.access.grants import NO_RESTRICTION, Restriction
from exporter.config import Settings
from exporter.errors import (
    IdempotencyConflict,
    TooManyJobs,
    UnknownJob,
)
from exporter.jobs import wakeups
from exporter.jobs.events import JobEvents, store_events
from exporter.jobs.results import Result, result_path
from exporter.jobs.views import JobView, progress_json
from exporter.metrics import QUEUE_WAIT
from exporter.models import Job

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # secrets.token_urlsafe's alphabet
MAX_ATTEMPTS = 3  # a job whose worker died, or whose database went away, this many times is failed
_COLUMNS = tuple(Job.__table__.columns)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobRequest:
    dataset: str
    format: str
    params: Sequence[tuple[str, str]]  # in the request's order; a filter may repeat (they are ANDed)
    owner_key: str | None = None  # the key submitting it (None with auth off)
    restriction: Restriction = NO_RESTRICTION  # that key's on the dataset, applied when the job runs
    limit: KeyLimit | None = None  # that key's limit, checked in the transaction that queues the job

    def digest(self) -> str:
        names = [name for name, _ in self.params]
        # Without repeats, the object digested before params were pairs, so earlier Idempotency-Keys still match.
        params = dict(self.params) if len(set(names)) == len(names) else sorted(self.params)
        canonical = {"dataset": self.dataset, "format": self.format, "params": params}
        return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


class JobQueue:
    """The jobs table: the API's side (submit, read, cancel, expire) and the workers' (claim with a lease, renew
    it, finish). Every change stores its events (see events.py) and wakes whoever waits; `view(job)` is the job's
    JSON, the data of its `state` events."""

    def __init__(self, engine: AsyncEngine, notifier: wakeups.Notifier, settings: Settings,
                 view: JobView) -> None:
        self.engine = engine
        self.notifier = notifier
        self._settings = settings
        self.view = view
        self.events = JobEvents(engine, notifier, view)

    async def submit(self, request: JobRequest, idempotency_key: str | None) -> tuple[Job, bool]:
        """The new queued job and True; or, for an Idempotency-Key seen before with the same request, that job
        and False. Raises IdempotencyConflict (same key, other request), TooManyJobs (queue full) and
        TooManyRequests (the request's key limit reached)."""
        digest = request.digest()
        if idempotency_key is not None:
            idempotency_key = f"{request.owner_key or ''}/{idempotency_key}"  # each key has its own
        if idempotency_key is not None and (seen := await self._by_key(idempotency_key, digest)) is not None:
            return seen, False
        try:
            return await self._insert(request, digest, idempotency_key), True
        except exc.IntegrityError:
            if idempotency_key is None:
                raise
            seen = await self._by_key(idempotency_key, digest)  # a concurrent retry took the key first
            assert seen is not None
            return seen, False

    async def _by_key(self, idempotency_key: str, digest: str) -> Job | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(Job.idempotency_key == idempotency_key))).one_or_none()
        if row is None:
            return None
        if row.request_digest != digest:
            raise IdempotencyConflict("this Idempotency-Key was used for a different request",
                                      parameter="Idempotency-Key")
        return Job(**row._mapping)

    async def _insert(self, request: JobRequest, digest: str, idempotency_key: str | None) -> Job:
        async with self.engine.begin() as conn:
            if request.limit is not None:  # first: it locks the key's admissions until this job is committed
                await request.limit.take(conn)
            queued = await conn.scalar(select(func.count()).select_from(Job).where(Job.state == "queued")) or 0
            if queued >= self._settings.job_max_queued:
                raise TooManyJobs(f"{queued} jobs are queued, the most there may be; try again later")
            job = Job(id=secrets.token_urlsafe(16), dataset=request.dataset, format=request.format,
                      params=[list(pair) for pair in request.params], state="queued", rows=0, bytes=0,
                      created_at=now(), attempt=0,
                      idempotency_key=idempotency_key, request_digest=digest, last_event_id=2,
                      owner_key=request.owner_key, restriction=request.restriction.as_json())
            await conn.execute(insert(Job).values({c.key: getattr(job, c.key) for c in _COLUMNS}))
            await store_events(conn, job, [("state", None), ("progress", progress_json(0, 0, 0.0, queued + 1))],
                                self.view(job))
            await wakeups.announce(conn, wakeups.QUEUE)
        self.notifier.wake(wakeups.QUEUE)
        return job

    async def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job; with an `owner`, only if that key submitted it: another's job is UnknownJob as well, so ids
        cannot be probed."""
        if not JOB_ID.fullmatch(job_id):  # a NUL made PostgreSQL fail (a 500); no job has any other shape
            raise UnknownJob(f"no job {job_id!r}")
        query = select(*_COLUMNS).where(Job.id == job_id)
        if owner is not None:
            query = query.where(Job.owner_key == owner)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            raise UnknownJob(f"no job {job_id!r}")
        return Job(**row._mapping)

    async def newest(self, state: str | None, limit: int, owner: str | None = None) -> list[Job]:
        """Newest first; with an `owner`, that key's only."""
        query = select(*_COLUMNS).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        if owner is not None:
            query = query.where(Job.owner_key == owner)
        async with self.engine.connect() as conn:
            return [Job(**row._mapping) for row in await conn.execute(query)]

    async def delete(self, job_id: str, owner: str | None = None) -> Job:
        """DELETE /jobs/{id}: a queued or running job is cancelled (its worker stops within a progress interval);
        a succeeded one has its file deleted and expires; any other is left as it is."""
        await self.get(job_id, owner)
        stamp = now()
        job = await self._change(job_id, [Job.state.in_(("queued", "running"))],
                                 {"state": "cancelled", "finished_at": stamp, "lease_owner": None,
                                  "lease_expires_at": None}, ["state", "cancelled"])
        if job is not None:
            await self.events.announce_positions()
            return job
        job = await self.expire(job_id, stamp)
        return job if job is not None else await self.get(job_id)

    async def expire(self, job_id: str, stamp: datetime) -> Job | None:
        """Mark a succeeded job expired, then delete its file; None if it was not succeeded."""
        job = await self._change(job_id, [Job.state == "succeeded"], {"state": "expired", "expires_at": stamp},
                                 ["state", "expired"])
        if job is not None:
            # ~60 ms for 90 MB: not on the event loop
            await anyio.Path(result_path(self._settings.jobs_dir, job)).unlink(missing_ok=True)
        return job

    async def claim(self, owner: str) -> Job | None:
        """Take the oldest queued job, atomically (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite runs one writer
        at a time), with a lease for `owner`; its attempt grows by one."""
        stamp = now()
        oldest = (select(Job.id).where(Job.state == "queued").order_by(Job.created_at, Job.id).limit(1)
                  .with_for_update(skip_locked=True).scalar_subquery())
        job = await self._change(oldest, [Job.state == "queued"],
                                 {"state": "running", "started_at": stamp, "attempt": Job.attempt + 1,
                                  "rows": 0, "bytes": 0, "lease_owner": owner, "lease_expires_at": self._lease(stamp)},
                                 ["state"])
        if job is not None:
            QUEUE_WAIT.observe((stamp - job.created_at).total_seconds())
            await self.events.announce_positions()
        return job

    async def heartbeat(self, job: Job, owner: str, rows: int, size: int, progress: dict[str, Any] | None) -> bool:
        """Renew the lease and record the counts, with a progress event if given. False when the job is no longer
        this owner's to run (cancelled, or its lease expired and it was handed to another)."""
        changed = await self._change(job.id, self._owned(owner),
                                     {"rows": rows, "bytes": size, "lease_expires_at": self._lease(now())},
                                     [] if progress is None else [("progress", progress)])
        return changed is not None

    async def succeed(self, job: Job, owner: str, result: Result) -> bool:
        stamp = now()
        changed = await self._change(
            job.id, self._owned(owner),
            {"state": "succeeded", "finished_at": stamp, "rows": result.rows, "bytes": result.size,
             "expires_at": stamp + timedelta(hours=self._settings.job_ttl_hours), "result_size": result.size,
             "result_sha256": result.sha256, "result_rows": result.rows, "lease_owner": None,
             "lease_expires_at": None},
            ["state", "succeeded"])
        return changed is not None

    async def fail(self, job: Job, owner: str | None, code: str, message: str) -> None:
        """Fail a job this owner runs (or, with owner None, a running job whose lease expired)."""
        condition = self._owned(owner) if owner is not None else [Job.state == "running"]
        await self._change(job.id, condition,
                           {"state": "failed", "finished_at": now(), "error_code": code, "error_message": message,
                            "lease_owner": None, "lease_expires_at": None},
                           ["state", "failed"])

    async def retry(self, job: Job, owner: str, code: str, message: str) -> None:
        """This owner's attempt failed for a reason that passes (its database went away): the job goes back to
        the queue as a lost worker's does, and the attempt counts; the attempt MAX_ATTEMPTS fails it with `code`
        and `message`. Like every finishing write, it does nothing once the job is no longer this owner's (the
        janitor requeued it when its lease ran out meanwhile, or DELETE cancelled it)."""
        if job.attempt >= MAX_ATTEMPTS:
            await self.fail(job, owner, code, f"{message} (attempt {job.attempt} of {MAX_ATTEMPTS})")
            return
        changed = await self._change(job.id, self._owned(owner),
                                     {"state": "queued", "started_at": None, "rows": 0, "bytes": 0,
                                      "lease_owner": None, "lease_expires_at": None}, ["state"])
        if changed is not None:
            await self.events.announce_positions()
            await self._announce_queued()

    async def hand_back(self, job: Job, owner: str) -> None:
        """Put a job this owner runs back in the queue at once (shutdown); the attempt does not count."""
        changed = await self._change(job.id, self._owned(owner),
                                     {"state": "queued", "started_at": None, "attempt": Job.attempt - 1, "rows": 0,
                                      "bytes": 0, "lease_owner": None, "lease_expires_at": None},
                                     ["state"])
        if changed is not None:
            await self.events.announce_positions()
            await self._announce_queued()

    async def requeue_lost(self) -> int:
        """Running jobs whose lease expired (their process died) go back to the queue, or fail after
        MAX_ATTEMPTS. Returns how many were found."""
        stamp = now()
        async with self.engine.connect() as conn:
            lost = [Job(**row._mapping) for row in await conn.execute(
                select(*_COLUMNS).where(Job.state == "running", Job.lease_expires_at < stamp))]
        expired = [Job.state == "running", Job.lease_expires_at < stamp]
        for job in lost:
            if job.attempt >= MAX_ATTEMPTS:
                await self._change(job.id, expired,
                                   {"state": "failed", "finished_at": stamp, "error_code": "worker_lost",
                                    "error_message": f"the worker running this job stopped {job.attempt} times",
                                    "lease_owner": None, "lease_expires_at": None},
                                   ["state", "failed"])
            else:
                await self._change(job.id, expired,
                                   {"state": "queued", "started_at": None, "rows": 0, "bytes": 0,
                                    "lease_owner": None, "lease_expires_at": None}, ["state"])
        if lost:
            await self.events.announce_positions()
            await self._announce_queued()
        return len(lost)

    async def expire_due(self) -> int:
        """Expire succeeded jobs whose time to live has passed, deleting their files."""
        stamp = now()
        async with self.engine.connect() as conn:
            due = list(await conn.scalars(select(Job.id).where(Job.state == "succeeded", Job.expires_at <= stamp)))
        return sum([await self.expire(job_id, stamp) is not None for job_id in due])

    async def fail_unauthorised(self, unusable: Collection[str]) -> None:
        """Fail the queued and running jobs of these keys (revoked or expired): a running one stops at its next
        progress write."""
        async with self.engine.connect() as conn:
            ids = list(await conn.scalars(select(Job.id).where(Job.owner_key.in_(list(unusable)),
                                                               Job.state.in_(("queued", "running")))))
        for job_id in ids:
            await self._change(job_id, [Job.state.in_(("queued", "running"))],
                               {"state": "failed", "finished_at": now(), "error_code": "revoked_token",
                                "error_message": "the key that submitted this job was revoked or expired",
                                "lease_owner": None, "lease_expires_at": None}, ["state", "failed"])

    async def owners(self) -> list[str]:
        """The keys that own queued or running jobs."""
        async with self.engine.connect() as conn:
            return list(await conn.scalars(select(Job.owner_key).distinct().where(
                Job.owner_key.is_not(None), Job.state.in_(("queued", "running")))))

    async def running_attempts(self, job_ids: Sequence[str]) -> set[tuple[str, int]]:
        """(id, attempt) of those jobs that are running now."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(Job.id, Job.attempt).where(Job.id.in_(job_ids), Job.state == "running"))
            return {(row.id, row.attempt) for row in rows}

    async def _announce_queued(self) -> None:
        """Wake the idle workers of every replica, not only this one's: a job went back to the queue. After a
        hand-back this process's own workers are stopping, so only another replica can take the job."""
        async with self.engine.begin() as conn:
            await wakeups.announce(conn, wakeups.QUEUE)
        self.notifier.wake(wakeups.QUEUE)

    def _owned(self, owner: str) -> list[ColumnElement[bool]]:
        return [Job.state == "running", Job.lease_owner == owner]

    def _lease(self, stamp: datetime) -> datetime:
        return stamp + timedelta(seconds=self._settings.job_lease_seconds)

    async def _change(self, job_id: Any, conditions: list[ColumnElement[bool]], values: dict[str, Any],
                      kinds: Sequence[str | tuple[str, dict[str, Any]]]) -> Job | None:
        """Update one job where `conditions` hold and store one event per entry of `kinds` (a type, whose data
        is the job as changed, or a (type, data) pair); None if no job matched."""
        async with self.engine.begin() as conn:
            statement = (update(Job).where(Job.id == job_id, *conditions)
                         .values(**values, last_event_id=Job.last_event_id + len(kinds)).returning(*_COLUMNS))
            row = (await conn.execute(statement)).one_or_none()
            if row is None:
                return None
            job = Job(**row._mapping)
            typed: list[tuple[str, dict[str, Any] | None]] = [
                (kind, None) if isinstance(kind, str) else kind for kind in kinds]
            await store_events(conn, job, typed, self.view(job))
            if typed:
                await wakeups.announce(conn, job.id)
        if typed:
            self.notifier.wake(job.id)
        return job
