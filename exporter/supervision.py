"""The process's background loops, kept running: a loop that raises is logged and started again after a backoff,
whether each one runs now is known (/readyz, /metrics), and they stop together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from types import TracebackType
from typing import Any

from exporter.metrics import LOOP_RESTARTS, LOOP_UP

log = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 5.0
STEADY_SECONDS = 30.0  # a loop that ran this long before it died is started again after FIRST_BACKOFF_SECONDS


class Supervisor:
    """Named background loops of one process. Create and use it inside the running event loop:

        async with Supervisor() as supervisor:
            supervisor.add("job-janitor", runner.janitor)

    Leaving the block stops every loop still running (stop())."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._up: dict[str, bool] = {}

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def add(self, name: str, factory: LoopFactory) -> None:
        """Start `factory()` now as the loop `name` (unique in the process: it is the metrics' label). A loop runs
        until it is cancelled; when it raises, or returns, it is logged and a fresh `factory()` starts after a
        backoff that grows from FIRST_BACKOFF_SECONDS to MAX_BACKOFF_SECONDS, and starts over once the loop has
        run STEADY_SECONDS. Cancellation (stop) is the only end: what the loop does on CancelledError (a job
        worker hands its job back) has finished when stop() returns."""
        if name in self._tasks:
            raise ValueError(f"a background loop named {name!r} runs already")
        self._set(name, False)
        self._tasks[name] = asyncio.create_task(self._keep(name, factory), name=f"loop {name}")

    def loops(self) -> dict[str, bool]:
        """Each loop's name and whether it runs now (False while it waits to be started again)."""
        return dict(self._up)

    def stop_soon(self, names: Collection[str] | None = None) -> None:
        """Cancel these loops (every loop without `names`) and return at once; they are never started again."""
        for name in self._tasks if names is None else names:
            if name in self._tasks:
                self._tasks[name].cancel()

    async def stop(self, names: Collection[str] | None = None) -> None:
        """Cancel these loops (every loop without `names`) and wait until each has ended. Safe to call again."""
        chosen = list(self._tasks if names is None else (name for name in names if name in self._tasks))
        self.stop_soon(chosen)
        await asyncio.gather(*(self._tasks[name] for name in chosen), return_exceptions=True)
        for name in chosen:
            del self._tasks[name], self._up[name]
            LOOP_UP.labels(name).set(0)

    async def _keep(self, name: str, factory: LoopFactory) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        failures = 0  # in a row: the first one's traceback is logged, the rest are one line each
        while True:
            started = time.monotonic()
            self._set(name, True)
            try:
                await factory()
                error: Exception | None = None
            except Exception as raised:
                error = raised
            finally:
                self._set(name, False)  # cancelled too: a stopped loop is not running
            if time.monotonic() - started >= STEADY_SECONDS:
                backoff, failures = FIRST_BACKOFF_SECONDS, 0
            failures += 1
            if error is None:
                log.error("background loop %s returned; starting it again in %.1f s", name, backoff)
            else:
                log.error("background loop %s failed (%s: %s); starting it again in %.1f s", name,
                          type(error).__name__, error, backoff, exc_info=error if failures == 1 else None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            LOOP_RESTARTS.labels(name).inc()

    def _set(self, name: str, up: bool) -> None:
        self._up[name] = up
        LOOP_UP.labels(name).set(1 if up else 0)
