"""Keeping the event loop free to answer: off_loop runs CPU-bound work (encoding, compression) in a few worker
threads, and watch_lag measures how late the loop runs (exporter_event_loop_lag_seconds)."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from exporter.metrics import EVENT_LOOP_LAG

T = TypeVar("T")
Args = TypeVarTuple("Args")

# CPU-bound work at once, per process: one per core. Parquet, zstd and zlib release the GIL, so that many really
# run in parallel; more would only share the same cores and hold more row groups in memory. Measured with 20
# Parquet exports on 2 cores (issue 19): encoding on the loop's thread kept /healthz waiting up to 280 ms and a
# 503 busy up to 4.1 s.
CPU_THREADS = max(2, os.cpu_count() or 1)
LAG_INTERVAL_SECONDS = 0.1
LAG_WINDOW_SECONDS = 10.0  # the gauge shows the worst lag of this long, so a scrape every 15 s sees most spikes

_limiter: RunVar[anyio.CapacityLimiter] = RunVar("exporter_cpu_limiter")  # one per event loop


async def off_loop(function: Callable[[*Args], T], *args: *Args) -> T:
    """`function(*args)` in a worker thread, at most CPU_THREADS at once (the others wait their turn, first come
    first served). Cancelling the caller waits for the call to finish, so `function`'s object (a serializer, a
    compressor) is never used by two threads at once, nor closed while the thread still uses it."""
    try:
        limiter = _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(CPU_THREADS)
        _limiter.set(limiter)
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter)


async def watch_lag(interval_seconds: float = LAG_INTERVAL_SECONDS,
                    window_seconds: float = LAG_WINDOW_SECONDS) -> None:
    """Sleep `interval_seconds` again and again, and set exporter_event_loop_lag_seconds to the worst delay past
    it in the last `window_seconds`: how long a ready callback (a /healthz request) waited for the loop. Runs
    until cancelled."""
    loop = asyncio.get_running_loop()
    recent: deque[tuple[float, float]] = deque()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_seconds)
        now = loop.time()
        recent.append((now, max(0.0, now - started - interval_seconds)))
        while recent[0][0] < now - window_seconds:
            recent.popleft()
        EVENT_LOOP_LAG.set(max(lag for _, lag in recent))
