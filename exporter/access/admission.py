"""Admission: whether a download, export or job may start now. Per-key fairness (at most max_concurrent downloads
and jobs at once, counted in the service's database so that it holds across processes and replicas; 429 with
Retry-After and the IETF draft RateLimit headers), the downloads of a key that is revoked
or expires stopped within seconds, draining on shutdown (new downloads refused, those in flight given time, then
stopped), and each database's export slots, so one greedy client cannot starve the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.access.grants import Caller
from exporter.access.keys import Keys
from exporter.config import Settings
from exporter.errors import Busy, ExportError, RevokedToken, ShuttingDown, TooManyRequests
from exporter.models import ApiKey, DownloadHold, Job
from exporter.outages import is_outage, outage_reason

log = logging.getLogger(__name__)

WATCH_SECONDS = 2.0  # how often running downloads' keys are checked for revocation and expiry
POSTGRESQL_EXPORT_SLOTS = 20
# SQLite reads run in this process, one thread each, and share its cores and the GIL: more at once only share them.
SQLITE_EXPORT_SLOTS = 4
# A download's hold lapses this long after its process last renewed it (every WATCH_SECONDS): a crashed process's
# places come back within this time.
HOLD_LEASE_SECONDS = 30.0
# After the drain, how long the downloads still running get to stop: cancel their query, give back their
# connection, write their export log row (milliseconds, normally). The process must exit within the drain plus
# 1 s (issue 19), and this is the larger part of that second.
STOP_GRACE_SECONDS = 0.5


def rate_limit_headers(most: int, remaining: int) -> dict[str, str]:
    """The IETF draft's RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers) for the per-key
    concurrency limit: `most` at once, `remaining` free now."""
    return {"RateLimit-Policy": f'"concurrency";q={most}',
            "RateLimit": f'"concurrency";r={remaining};t={TooManyRequests.retry_after_seconds}'}


@dataclass(frozen=True)
class KeyLimit:
    """One key's limit: at most `most` downloads and unfinished jobs at once."""

    key_id: str
    name: str
    most: int

    async def take(self, conn: AsyncConnection, hold_id: str | None = None) -> int:
        """In `conn`'s transaction, as one atomic step: lock the key's admissions until the transaction ends, count
        its places in use (live download holds and queued or running jobs, of every process and replica), raise
        TooManyRequests when they reach `most`, else record download hold `hold_id` (a job's own row, inserted in
        the same transaction, counts itself). Returns the places that were in use."""
        stamp = datetime.now(UTC)
        if conn.dialect.name == "postgresql":
            await conn.execute(select(ApiKey.id).where(ApiKey.id == self.key_id).with_for_update())
        else:
            # SQLite: a write as the transaction's first statement takes the database's write lock before anything
            # is read (waiting out the busy timeout), so no other writer can count between our count and insert.
            await conn.execute(update(ApiKey).where(ApiKey.id == self.key_id)
                               .values(max_concurrent=ApiKey.max_concurrent))
        holds = (select(func.count()).select_from(DownloadHold)
                 .where(DownloadHold.key_id == self.key_id, DownloadHold.expires_at > stamp).scalar_subquery())
        jobs = (select(func.count()).select_from(Job)
                .where(Job.owner_key == self.key_id, Job.state.in_(("queued", "running"))).scalar_subquery())
        busy = int(await conn.scalar(select(holds + jobs)) or 0)
        if busy >= self.most:
            raise TooManyRequests(
                f"the key {self.name!r} has {busy} downloads and jobs running, its limit; try again later",
                headers=rate_limit_headers(self.most, 0))
        if hold_id is not None:
            await conn.execute(insert(DownloadHold).values(
                id=hold_id, key_id=self.key_id, expires_at=stamp + timedelta(seconds=HOLD_LEASE_SECONDS)))
        return busy


@dataclass(frozen=True)
class Hold:
    """One admitted download: `stopped` is set when its key stops being valid, `aborted` when the drain is over;
    `release` frees its place."""

    stopped: asyncio.Event
    aborted: asyncio.Event
    release: Callable[[], None]
    rate_limit: Mapping[str, str] = field(default_factory=dict)  # its key's RateLimit headers, for a 503 busy

    async def stop_reason(self) -> ExportError:
        """Wait until the download must stop; the error that says why."""
        waits = [asyncio.ensure_future(self.stopped.wait()), asyncio.ensure_future(self.aborted.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if self.stopped.is_set():
            return RevokedToken("the key was revoked or expired during the download")
        return ShuttingDown("the server is shutting down; download again")


@contextmanager
def released_on_error(hold: Hold | None) -> Iterator[None]:
    """Give the place back if the response is not made (its stream releases it otherwise)."""
    try:
        yield
    except BaseException:
        if hold is not None:
            hold.release()
        raise


class Limits:
    """Downloads in progress in this process, by key, and their holds in the database (see KeyLimit)."""

    def __init__(self, keys: Keys, engine: AsyncEngine, default_max_concurrent: int) -> None:
        self._keys = keys
        self._engine = engine  # the service's own database: api_keys, download_holds, jobs
        self._default = default_max_concurrent
        self._active: dict[str, int] = {}
        self._away = False  # the database was away at the watch's last try: logged once per outage
        self._holds: set[str] = set()  # the ids of this process's download holds, renewed by watch()
        self._releasing: set[asyncio.Task[None]] = set()
        self._stopped: dict[str, asyncio.Event] = {}
        self.draining = False
        self._aborted = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def admit(self, caller: Caller) -> Hold:
        """A place for one more download of this caller. Raises ShuttingDown while draining, and TooManyRequests
        when the key's downloads (in every process and replica) and unfinished jobs reach its max_concurrent."""
        limit = self.limit_of(caller)
        if limit is None:
            return self._hold(None, None, asyncio.Event(), {})
        # Places this process gave back are out of the table before it counts (a client's next request after its
        # download ended must not find the place still taken).
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        hold_id = secrets.token_hex(16)
        async with self._engine.begin() as conn:
            busy = await limit.take(conn, hold_id)
        key_id = limit.key_id
        self._active[key_id] = self._active.get(key_id, 0) + 1
        self._holds.add(hold_id)
        # The headers a 503 busy of this download carries: its place is given back with the refusal.
        return self._hold(key_id, hold_id, self._stopped.setdefault(key_id, asyncio.Event()),
                          rate_limit_headers(limit.most, limit.most - busy))

    def limit_of(self, caller: Caller) -> KeyLimit | None:
        """The caller's limit (None with auth off); raises ShuttingDown while draining."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; try again (another replica will answer)")
        if caller.key_id is None:
            return None
        return KeyLimit(caller.key_id, caller.name or caller.key_id, caller.max_concurrent or self._default)

    def _hold(self, key_id: str | None, hold_id: str | None, stopped: asyncio.Event,
              rate_limit: Mapping[str, str]) -> Hold:
        self._in_flight += 1
        self._idle.clear()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            if key_id is None or hold_id is None:
                return
            self._holds.discard(hold_id)
            task = asyncio.get_running_loop().create_task(self._delete_hold(hold_id))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            self._active[key_id] -= 1
            if not self._active[key_id]:
                del self._active[key_id]
                self._stopped.pop(key_id, None)

        return Hold(stopped, self._aborted, release, rate_limit)

    async def _delete_hold(self, hold_id: str) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(DownloadHold).where(DownloadHold.id == hold_id))
        except Exception:
            log.exception("giving back a download's place failed; it lapses in %.0f s", HOLD_LEASE_SECONDS)

    async def close(self) -> None:
        """Wait for the places given back to be deleted (at shutdown, after the drain)."""
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

    async def _renew_holds(self) -> None:
        """Extend this process's holds, and delete everyone's lapsed ones (a crashed process's)."""
        stamp = datetime.now(UTC)
        async with self._engine.begin() as conn:
            if self._holds:
                await conn.execute(update(DownloadHold).where(DownloadHold.id.in_(list(self._holds)))
                                   .values(expires_at=stamp + timedelta(seconds=HOLD_LEASE_SECONDS)))
            await conn.execute(delete(DownloadHold).where(DownloadHold.expires_at <= stamp))

    async def drain(self, seconds: float) -> None:
        """Refuse new downloads, give those in flight `seconds` to finish, then stop the rest (incomplete
        transfers) and wait up to STOP_GRACE_SECONDS for them to close."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        if self._in_flight:
            log.warning("drain: stopping %d downloads still running after %.0f s", self._in_flight, seconds)
            self._aborted.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE_SECONDS):
                    await self._idle.wait()

    async def watch(self) -> None:
        """Stop the downloads of keys that were revoked or expired; runs until cancelled. While the database is
        away, that is logged once per outage, not with a traceback every round."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                await self._renew_holds()
            except Exception as error:
                self._failed(error, "renewing the holds of running downloads failed")
            else:
                self._away = False
            if not self._active:
                continue
            try:
                unusable = await self._keys.unusable(list(self._active), datetime.now(UTC))
            except Exception as error:
                self._failed(error, "checking the keys of running downloads failed")
                continue
            for key_id in unusable:
                if key_id in self._stopped:
                    self._stopped[key_id].set()

    def _failed(self, error: Exception, what: str) -> None:
        if not is_outage(error):
            log.exception(what)
        elif not self._away:
            self._away = True
            log.warning("%s: the database is unavailable (%s); trying again every %.0f s", what,
                        outage_reason(error), WATCH_SECONDS)


def export_slot_count(url: str, settings: Settings) -> int:
    """How many exports the database at `url` runs at once: EXPORTER_EXPORT_SLOTS, or the dialect's default."""
    if settings.export_slots is not None:
        return settings.export_slots
    return SQLITE_EXPORT_SLOTS if make_url(url).get_backend_name() == "sqlite" else POSTGRESQL_EXPORT_SLOTS


class ExportSlots:
    """The pool connections of one database that exports may hold; the pool keeps its reserve beyond them."""

    def __init__(self, slots: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self._slots = slots
        self._free = slots

    @asynccontextmanager
    async def hold(self, wait: bool) -> AsyncIterator[None]:
        """Hold a slot for the block. Without `wait`, raise Busy at once when none is free, or when a job is
        already waiting for one (it goes first)."""
        if not wait and self._semaphore.locked():
            raise Busy("every export slot of this dataset's database is in use; try again shortly")
        async with self._semaphore:
            self._free -= 1
            try:
                yield
            finally:
                self._free += 1

    async def take_spare(self, wanted: int) -> int:
        """Take up to `wanted` more slots for an export's parallel parts, at once and only while more than half
        of all slots stay free, so that under load exports run serially rather than turn others away. Returns
        how many were taken; give each back with give_back()."""
        taken = 0
        while taken < wanted and self._free - 1 >= self._slots // 2 and not self._semaphore.locked():
            await self._semaphore.acquire()  # returns at once: it is not locked
            self._free -= 1
            taken += 1
        return taken

    def give_back(self, count: int) -> None:
        for _ in range(count):
            self._free += 1
            self._semaphore.release()
