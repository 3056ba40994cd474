"""write_result: a job's bytes to its result file, whole or not at all, with the sha256 computed while writing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from io import BufferedWriter
from pathlib import Path

import anyio

# Chunks (about 64-300 KiB from COPY, one batch from the generic path) are gathered into writes of about this
# size. Each write is one hop to a worker thread, which waits to be scheduled and to take the GIL: with a hop
# per chunk, a 1M-row COPY job took 1.13-1.26x as long as the same export streamed; with 1 MiB, 0.99-1.04x.
WRITE_BYTES = 1024 * 1024


async def write_result(chunks: AsyncIterator[bytes], part: Path, final: Path) -> tuple[int, str]:
    """Write `chunks` to `part`, fsync it, rename it to `final` and fsync the folder, so that `final` is never
    seen half-written, even after a crash. Returns the size and the sha256 (hex).

    Hashing and writing run in a worker thread, WRITE_BYTES at a time, so neither blocks the event loop.
    `part` is removed however this ends early (an error, or cancellation); `chunks` is closed in every case.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        file = await anyio.to_thread.run_sync(_create, part)
        try:
            # Filled on the event loop's thread, whose heap is reused from job to job; a buffer joined in the
            # worker threads left a few MiB in each of their malloc arenas.
            pending = bytearray()
            async for chunk in chunks:
                pending += chunk
                if len(pending) >= WRITE_BYTES:
                    await anyio.to_thread.run_sync(_write, file, digest, pending)
                    size += len(pending)
                    pending.clear()
            await anyio.to_thread.run_sync(_write, file, digest, pending, True)
            size += len(pending)
        finally:
            file.close()
        os.replace(part, final)
        await anyio.to_thread.run_sync(_fsync_directory, final.parent)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.Path(part).unlink(missing_ok=True)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()  # type: ignore[attr-defined]
    return size, digest.hexdigest()


def _create(path: Path) -> BufferedWriter:
    return path.open("wb")


def _write(file: BufferedWriter, digest: hashlib._Hash, data: bytearray, last: bool = False) -> None:
    """Hash and write `data` (hashlib and write() release the GIL for it); the last call also fsyncs the file.
    The caller does not touch `data` until this returns."""
    digest.update(data)
    file.write(data)
    if last:
        file.flush()
        os.fsync(file.fileno())


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
