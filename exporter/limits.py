"""Per-key fairness: at most max_concurrent downloads and jobs at once (429 with Retry-After and the IETF draft
RateLimit headers), and the downloads of a key that is revoked or expires stopped within seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.errors import TooManyRequests
from exporter.jobs import Jobs
from exporter.keys import Caller, Keys

log = logging.getLogger(__name__)

WATCH_SECONDS = 2.0  # how often running downloads' keys are checked for revocation and expiry
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class Hold:
    """One admitted download: `stopped` is set when its key stops being valid; `release` frees its place."""

    stopped: asyncio.Event
    release: Callable[[], None]


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

    async def admit(self, caller: Caller) -> Hold | None:
        """A place for one more download or job of this key (None for the anonymous caller, who has no limit);
        TooManyRequests when its downloads here and its unfinished jobs reach its max_concurrent."""
        if caller.key_id is None:
            return None
        most = caller.max_concurrent or self._default
        busy = self._active.get(caller.key_id, 0) + await self._jobs.unfinished(caller.key_id)
        if busy >= most:
            raise TooManyRequests(
                f"the key {caller.name!r} has {busy} downloads and jobs running, its limit; try again later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS),
                         "RateLimit-Policy": f'"concurrency";q={most}',
                         "RateLimit": f'"concurrency";r=0;t={RETRY_AFTER_SECONDS}'})
        key_id = caller.key_id
        self._active[key_id] = self._active.get(key_id, 0) + 1
        stopped = self._stopped.setdefault(key_id, asyncio.Event())
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._active[key_id] -= 1
            if not self._active[key_id]:
                del self._active[key_id]
                self._stopped.pop(key_id, None)

        return Hold(stopped, release)

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
