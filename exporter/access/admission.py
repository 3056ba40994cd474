"""Admission: whether a download, export or job may start now. Per-key fairness (at most max_concurrent downloads
and jobs at once; 429 with Retry-After and the IETF draft RateLimit headers), the downloads of a key that is revoked
or expires stopped within seconds, draining on shutdown (new downloads refused, those in flight given time, then
stopped), and each database's export slots, so one greedy client cannot starve the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import make_url

from exporter.access.grants import Caller
from exporter.access.keys import Keys
from exporter.config import Settings
from exporter.errors import Busy, ExportError, RevokedToken, ShuttingDown, TooManyRequests

log = logging.getLogger(__name__)

WATCH_SECONDS = 2.0  # how often running downloads' keys are checked for revocation and expiry
POSTGRESQL_EXPORT_SLOTS = 20
# SQLite reads run in this process, one thread each, and share its cores and the GIL: more at once only share them.
SQLITE_EXPORT_SLOTS = 4


def rate_limit_headers(most: int, remaining: int) -> dict[str, str]:
    """The IETF draft's RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers) for the per-key
    concurrency limit: `most` at once, `remaining` free now."""
    return {"RateLimit-Policy": f'"concurrency";q={most}',
            "RateLimit": f'"concurrency";r={remaining};t={TooManyRequests.retry_after_seconds}'}


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
    """Downloads in progress in this process, by key."""

    def __init__(self, keys: Keys, unfinished_jobs: Callable[[str], Awaitable[int]], default_max_concurrent: int
                 ) -> None:
        self._keys = keys
        self._unfinished_jobs = unfinished_jobs  # a key's queued and running jobs, which count against its limit
        self._default = default_max_concurrent
        self._active: dict[str, int] = {}
        self._stopped: dict[str, asyncio.Event] = {}
        self.draining = False
        self._aborted = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def admit(self, caller: Caller) -> Hold:
        """A place for one more download or job of this caller. Raises ShuttingDown while draining, and
        TooManyRequests when a key's downloads here and its unfinished jobs reach its max_concurrent."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; try again (another replica will answer)")
        if caller.key_id is None:
            return self._hold(None, asyncio.Event(), {})
        most = caller.max_concurrent or self._default
        busy = self._active.get(caller.key_id, 0) + await self._unfinished_jobs(caller.key_id)
        if busy >= most:
            raise TooManyRequests(
                f"the key {caller.name!r} has {busy} downloads and jobs running, its limit; try again later",
                headers=rate_limit_headers(most, 0))
        key_id = caller.key_id
        self._active[key_id] = self._active.get(key_id, 0) + 1
        # The headers a 503 busy of this download carries: its place is given back with the refusal.
        return self._hold(key_id, self._stopped.setdefault(key_id, asyncio.Event()),
                          rate_limit_headers(most, most - busy))

    def _hold(self, key_id: str | None, stopped: asyncio.Event, rate_limit: Mapping[str, str]) -> Hold:
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
            if key_id is None:
                return
            self._active[key_id] -= 1
            if not self._active[key_id]:
                del self._active[key_id]
                self._stopped.pop(key_id, None)

        return Hold(stopped, self._aborted, release, rate_limit)

    async def drain(self, seconds: float) -> None:
        """Refuse new downloads, give those in flight `seconds` to finish, then stop the rest (incomplete
        transfers) and wait a moment for them to close."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        if self._in_flight:
            log.warning("drain: stopping %d downloads still running after %.0f s", self._in_flight, seconds)
            self._aborted.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._idle.wait()

    async def watch(self) -> None:
        """Stop the downloads of keys that were revoked or expired; runs until cancelled."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if not self._active:
                continue
            try:
                unusable = await self._keys.unusable(list(self._active), datetime.now(UTC))
            except Exception:
                log.exception("checking the keys of running downloads failed")
                continue
            for key_id in unusable:
                if key_id in self._stopped:
                    self._stopped[key_id].set()


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
