"""A job's events: stored in the same transaction as each change of the job, numbered by the job's row, and read
back as its event stream; and the queue positions every queued job is told about."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.jobs import wakeups
from exporter.jobs.views import progress_json
from exporter.models import Job, JobEvent

TERMINAL = ("succeeded", "failed", "cancelled", "expired")
MAX_EVENT_ID = 2**31 - 1  # jobs.last_event_id is an INTEGER
EVENT_ID = re.compile(r"[0-9]{1,10}")  # ASCII digits: str.isdigit() and int() also take '²' and '٣'


def parse_event_id(header: str | None) -> int | None:
    """A Last-Event-ID header's event number, or None (the header is then ignored, as a non-number always was) for
    anything that is not one we could have sent: not ASCII digits, or past MAX_EVENT_ID."""
    value = (header or "").strip()
    if not EVENT_ID.fullmatch(value) or int(value) > MAX_EVENT_ID:
        return None
    return int(value)


class JobEvents:
    """The job_events table; `view(job)` is the job's JSON, the data of `state` events."""

    def __init__(self, engine: AsyncEngine, notifier: wakeups.Notifier, view: Callable[[Job], dict[str, Any]]) -> None:
        self.engine = engine
        self.notifier = notifier
        self._view = view

    async def after(self, job_id: str, after: int) -> Sequence[Any]:
        """Stored events with id > after, in order: rows of (id, type, data)."""
        query = (select(JobEvent.id, JobEvent.type, JobEvent.data)
                 .where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id))
        async with self.engine.connect() as conn:
            return list(await conn.execute(query))

    async def iter_events(self, job: Job, after: int | None, stopping: Callable[[], bool] = lambda: False
                          ) -> AsyncIterator[tuple[int, str, str]]:
        """The job's event stream as (id, type, JSON text), ids strictly increasing: first a `state` snapshot of
        the job as read, then every stored event after `after` (or, without it, only those to come; for a
        finished job its terminal event), live as they are stored, until a terminal event has been sent, or
        until `stopping()` (checked at least each poll) says the server is shutting down."""
        if after is None:
            after = job.last_event_id - 1 if job.state in TERMINAL else job.last_event_id
        cursor = min(after, job.last_event_id)
        yield cursor, "state", orjson.dumps(self._view(job)).decode()
        while True:
            with self.notifier.watch(job.id) as woken:
                batch = await self.after(job.id, cursor)
                for event_id, kind, data in batch:
                    yield event_id, kind, data
                    cursor = event_id
                if (batch and batch[-1].type in TERMINAL) or stopping():
                    return
                if not batch:
                    await wakeups.wait(woken)

    async def announce_positions(self) -> None:
        """A progress event with its new queue position for every queued job. Rows another transaction holds are
        skipped (their position shows a little later), so this never waits for a lock."""
        async with self.engine.begin() as conn:
            order = list(await conn.scalars(
                select(Job.id).where(Job.state == "queued").order_by(Job.created_at, Job.id)))
            if not order:
                return
            free = select(Job.id).where(Job.state == "queued").with_for_update(skip_locked=True)
            updated = await conn.execute(update(Job).where(Job.id.in_(free))
                                         .values(last_event_id=Job.last_event_id + 1)
                                         .returning(Job.id, Job.last_event_id))
            position = {job_id: index + 1 for index, job_id in enumerate(order)}
            stamp = datetime.now(UTC)
            rows = [{"job_id": row.id, "id": row.last_event_id, "type": "progress", "created_at": stamp,
                     "data": orjson.dumps(progress_json(0, 0, 0.0, position.get(row.id))).decode()}
                    for row in updated]
            if rows:
                await conn.execute(insert(JobEvent), rows)
                for row in rows:
                    await wakeups.announce(conn, row["job_id"])
        for row in rows:
            self.notifier.wake(row["job_id"])


async def store_events(conn: AsyncConnection, job: Job, typed: list[tuple[str, dict[str, Any] | None]],
                        snapshot: dict[str, Any]) -> None:
    """Insert events numbered up to job.last_event_id; those without data carry the job's snapshot."""
    if not typed:
        return
    first = job.last_event_id - len(typed) + 1
    stamp = datetime.now(UTC)
    await conn.execute(insert(JobEvent), [
        {"job_id": job.id, "id": first + index, "type": kind, "created_at": stamp,
         "data": orjson.dumps(snapshot if data is None else data).decode()}
        for index, (kind, data) in enumerate(typed)
    ])
