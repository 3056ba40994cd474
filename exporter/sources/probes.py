"""Whether each database answers, found by a probe that runs in the background (a supervised loop), so /readyz
answers at once from its last round, however busy the databases and the event loop are."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

PROBE_SECONDS = 1.0  # between the end of one round and the start of the next
PROBE_TIMEOUT_SECONDS = 2.0  # a database that has not answered SELECT 1 by then counts as unreachable
# How old the answers may be: a round reflects the databases from its start, and the next round ends at most this
# long after that (a pause, then a round cut off at its timeout).
STALE_SECONDS = PROBE_SECONDS + 2 * PROBE_TIMEOUT_SECONDS


class DatabaseProbe:
    """Each database's last answer to `SELECT 1`, by name ("service" for the service's own database)."""

    def __init__(self, engines: Mapping[str | None, AsyncEngine]) -> None:
        self._engines = {name or "service": engine for name, engine in engines.items()}
        self._answering = dict.fromkeys(self._engines, False)

    def answering(self) -> dict[str, bool]:
        """As of the last round: at most STALE_SECONDS old while run() runs."""
        return dict(self._answering)

    async def probe(self) -> None:
        """One round: every database at once, each within PROBE_TIMEOUT_SECONDS."""
        names = list(self._engines)
        answers = await asyncio.gather(*(_answers(self._engines[name]) for name in names))
        self._answering = dict(zip(names, answers, strict=True))

    async def run(self) -> None:
        """A round every PROBE_SECONDS until cancelled."""
        while True:
            await self.probe()
            await asyncio.sleep(PROBE_SECONDS)


async def _answers(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
