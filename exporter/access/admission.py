"""Admitting downloads: per-key fairness (at most max_concurrent downloads and jobs at once; 429 with Retry-After
and the IETF draft RateLimit headers), the downloads of a key that is revoked or expires stopped within seconds,
and draining on shutdown (new downloads refused, those in flight given time, then stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from exporter.access.keys import Caller, Keys
from exporter.errors import ExportError, RevokedToken, ShuttingDown, TooManyRequests
from exporter.jobs.queue import Jobs

log = logging.getLogger(__name__)

WATCH_SECONDS = 2.0  # how often running downloads' keys are checked for revocation and expiry
RETRY_AFTER_SECONDS = 5


def rate_limit_headers(most: int, remaining: int) -> dict[str, str]:
    """The IETF draft's RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers) for the per-key
    concurrency limit: `most` at once, `remaining` free now."""
    return {"RateLimit-Policy": f'"concurrency";q={most}',
            "RateLimit": f'"concurrency";r={remaining};t={RETRY_AFTER_SECONDS}'}


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

    def __init__(self, keys: Keys, jobs: Jobs, default_max_concurrent: int) -> None:
        self._keys = keys
        self._jobs = jobs
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
            raise ShuttingDown("the server is shutting down; try again (another replica will answer)",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if caller.key_id is None:
            return self._hold(None, asyncio.Event(), {})
        most = caller.max_concurrent or self._default
        busy = self._active.get(caller.key_id, 0) + await self._jobs.unfinished(caller.key_id)
        if busy >= most:
            raise TooManyRequests(
                f"the key {caller.name!r} has {busy} downloads and jobs running, its limit; try again later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS), **rate_limit_headers(most, 0)})
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
