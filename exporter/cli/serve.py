"""`exporter serve`: uvicorn with a drain on SIGTERM, in one process or in `--workers N` processes on one port, each
with fixed heap thresholds (keep_freed_heap)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from exporter.config import Settings
from exporter.logs import configure_logging
from exporter.serving.sendtimeout import TransportInScope

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

APP = "exporter.cli.serve:app_from_environ"  # each worker process builds its app from the environment
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that could not start: restarting it would fail again
# glibc's mallopt(3) parameters (malloc.h) and the values keep_freed_heap sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024
HEAP_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # the most glibc's own sliding threshold reaches on 64-bit
# After the drain (or on a signal that stops at once), how long uvicorn still waits for connections and requests
# before it cancels them: without a bound it waited for every client to take the rest of its aborted download,
# 4.5 s past a 30 s drain in one test and forever for a client that stopped reading (issue 19).
CLOSE_SECONDS = 0.3
_app: FastAPI | None = None


def keep_freed_heap() -> None:
    """Have glibc take blocks below HEAP_MMAP_THRESHOLD_BYTES from the heap and keep up to
    HEAP_TRIM_THRESHOLD_BYTES of freed memory at its top, instead of its sliding defaults. A streamed download
    allocates and frees blocks of a few hundred KiB per chunk (the event loop's read, h11's buffer, the chunk
    sent). With the defaults, in a fresh process, the heap's top crept up by one such block per chunk, into fresh
    pages, and was given back to the kernel about every 8 MiB: relaying 2 GiB cost 515,000 page faults (one per
    4 KiB relayed) and 2.7 s of CPU time. With these, the heap stops moving: under 3,000 faults and 1.0 s (issue
    13). The cost is at most HEAP_TRIM_THRESHOLD_BYTES of freed memory that stays resident. Nothing to do on
    other C libraries."""
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    # Setting either also stops glibc from moving its thresholds itself, so both are set.
    libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES)


def app_from_environ() -> FastAPI:
    """The app as `exporter serve` runs it (uvicorn's factory, in each worker process)."""
    # Imported here: with --workers N the supervising parent imports this module but never builds the app, and the
    # app's imports (FastAPI, SQLAlchemy, pyarrow) cost it about 170 MB (issue 19). Each worker imports them.
    from exporter.app import create_app

    global _app
    keep_freed_heap()
    settings = Settings.from_environ()
    configure_logging(settings.log_format)
    _app = create_app(settings)
    return _app


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first SIGTERM or SIGINT drains before it stops (see _drain), and a stopped
    server exits 0."""

    draining = False

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        super().run(sockets)
        # The process exits next, and Python's finalization runs full garbage collections over everything the
        # app made: after a drain, 3 to 9 s on a loaded machine (issue 19). Frozen, those objects are left to the
        # operating system, which frees the memory at exit anyway.
        gc.freeze()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # As uvicorn's, but without raising the signal again once the graceful shutdown is done: uvicorn does, so
        # the process died by SIGTERM (exit status 143) although it had stopped cleanly.
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or _app is None or getattr(_app.state, "services", None) is None:
            super().handle_exit(sig, frame)  # a second signal, or before start-up finished: stop now
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(_app, sig)))

    async def _drain(self, app: FastAPI, sig: int) -> None:
        """Running jobs go back to the queue at once and event streams end (their clients reconnect to another
        replica); /readyz answers 503 and new downloads 503 shutting_down while the downloads in flight get
        EXPORTER_DRAIN_SECONDS; the rest are then stopped, and uvicorn shuts down."""
        from sse_starlette.sse import AppStatus

        services = app.state.services
        seconds = services.settings.drain_seconds
        log.info("draining for up to %.0f s", seconds)
        services.runner.stop_soon()
        AppStatus.should_exit = True
        try:
            await services.limits.drain(seconds)
            self._abort_unsent()
        finally:
            super().handle_exit(sig, None)

    def _abort_unsent(self) -> None:
        """Close now the connections that still hold unsent bytes of a stopped download (a closing transport
        waits for its client to take them, which a client that stopped reading never does): the client sees the
        connection drop, an incomplete transfer either way."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and transport.is_closing():
                transport.abort()


def serve(host: str, port: int, workers: int) -> int:
    # uvicorn's lines go through our handler (log_config=None); the access line is ours (logs.RequestIds).
    # X-Forwarded-* are honoured by the app, from EXPORTER_TRUSTED_PROXIES only; uvicorn's own handling would
    # trust them from 127.0.0.1, so any local client could choose the address the audit log records.
    # TransportInScope: the send timeout sees what each client has acknowledged (sendtimeout.py).
    config = uvicorn.Config(APP, factory=True, host=host, port=port, log_config=None, access_log=False,
                            # uvicorn annotates it int, and hands it to asyncio.timeout, which takes a float.
                            proxy_headers=False, http=TransportInScope,
                            timeout_graceful_shutdown=CLOSE_SECONDS)  # type: ignore[arg-type]
    if workers == 1:
        DrainingServer(config).run()
        return 0
    # prometheus-client's multiprocess mode: each worker writes its samples under this folder and /metrics, in
    # whichever worker answers, reports the sums. It is made here and removed when the workers have stopped.
    metrics_dir = tempfile.mkdtemp(prefix="exporter-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _supervise(config, config.bind_socket(), workers)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(config: uvicorn.Config, sock: socket.socket, workers: int) -> int:
    """Run `workers` processes on one listening socket, replacing any that dies; on SIGTERM or SIGINT, pass it on
    so that each drains, and wait for them."""
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_work, args=(config, sock))
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    log.info("serving with %d worker processes: %s", workers, ", ".join(str(p.pid) for p in processes))
    while not stop.wait(0.5):
        for index, process in enumerate(processes):
            if process.is_alive():
                continue
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker %s could not start; stopping", process.pid)
                stop.set()
                break
            log.warning("worker %s exited (%s); starting another", process.pid, process.exitcode)
            processes[index] = start()
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join()
    return 0


def _work(config: uvicorn.Config, sock: socket.socket) -> None:
    server = DrainingServer(config)
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
