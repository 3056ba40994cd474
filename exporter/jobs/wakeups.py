"""Wake-ups for what waits on jobs: event streams wait for a job's next event, workers for a queued job.

Within a process, whoever commits a change wakes the waiters directly. Across replicas on PostgreSQL the change
is announced with NOTIFY at commit, and one LISTEN connection per process passes it on. Every waiter also polls,
so a missed notification (a dropped LISTEN connection, a database outage, SQLite's replicas) costs only a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

CHANNEL = "exporter_jobs"
QUEUE = "*"  # the key woken when a job is queued; job ids never equal it
POLL_SECONDS = 1.0  # how long a waiter sleeps when nothing wakes it
CONNECT_TIMEOUT_SECONDS = 10.0


class Notifier:
    """Wakes this process's waiters on a key (a job id, or QUEUE)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        """An event set by every wake(key) while the block runs. Enter it before reading what you wait for, so a
        change committed between the read and the wait is not missed."""
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters[key]
            waiters.discard(event)
            if not waiters:
                del self._waiters[key]

    def wake(self, key: str) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    async def listen(self, database_url: str) -> None:
        """Pass PostgreSQL notifications on CHANNEL to wake() until the connection is lost, then raise
        ConnectionResetError; a failed connect raises too. Run it as a supervised loop (supervision.py), which
        connects it again after a backoff; the waiters poll meanwhile."""
        url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(url, server_settings={"application_name": "exporter-jobs"},
                                     timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            await self._listen_on(conn)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=2))
        raise ConnectionResetError("job notifications: the connection to the database was lost")

    async def _listen_on(self, conn: asyncpg.Connection) -> None:
        """Until the connection is lost."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._on_notification)
        self.wake(QUEUE)  # anything queued while we were not listening
        await lost.wait()

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.wake(payload)


async def announce(conn: AsyncConnection, key: str) -> None:
    """NOTIFY the other replicas at commit of `conn`'s transaction (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_notify(CHANNEL, key)))


async def wait(event: asyncio.Event, seconds: float = POLL_SECONDS) -> None:
    """Until `event` is set or `seconds` pass; clears it for the next round."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    event.clear()
