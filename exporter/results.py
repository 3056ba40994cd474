"""write_result: a job's bytes to its result file, whole or not at all, with the sha256 computed while writing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiofiles
import anyio


async def write_result(chunks: AsyncIterator[bytes], part: Path, final: Path) -> tuple[int, str]:
    """Write `chunks` to `part`, fsync it, rename it to `final` and fsync the folder, so that `final` is never
    seen half-written, even after a crash. Returns the size and the sha256 (hex).

    `part` is removed however this ends early (an error, or cancellation); `chunks` is closed in every case.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        async with aiofiles.open(part, "wb") as file:
            async for chunk in chunks:
                digest.update(chunk)
                await file.write(chunk)
                size += len(chunk)
            await file.flush()
            await anyio.to_thread.run_sync(os.fsync, file.fileno())
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


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
