"""iter_file_chunks: spans of a file read through aiofiles in fixed-size chunks, aborted if the file changes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from io import FileIO
from pathlib import Path
from typing import Any

import aiofiles.threadpool

from exporter.errors import FileChanged, FileUnreadable
from exporter.serving.ranges import Span

log = logging.getLogger(__name__)


async def iter_file_chunks(path: Path, spans: Sequence[Span | bytes], chunk_bytes: int, *,
                           expected: os.stat_result | None = None) -> AsyncIterator[bytes]:
    """Yield each Span of the file as chunks of exactly `chunk_bytes` (the last of each span may be shorter),
    and each bytes item (multipart framing) as it is, in order.

    The file is opened inside the generator and closed at once however it ends: exhausted, failed, closed
    with aclose() (as a response does when its client leaves), or cancelled. Raises FileChanged
    if the open file is not the one `expected` describes (another inode, size or modification time), or if a
    read comes back short or the file's size or modification time changes while it is read; each chunk is
    checked before it is yielded, so a truncated or rewritten file never yields a silently corrupt body. A
    file replaced by rename keeps being read whole from the open descriptor. Other OS errors raise
    FileUnreadable.
    """
    try:
        raw = await _open(path)
    except FileNotFoundError:
        raise FileChanged(f"{path.name} was removed before it could be read") from None
    except OSError as exc:
        raise FileUnreadable(f"{path.name} cannot be read: {exc.strerror}") from None
    file = aiofiles.threadpool.wrap(raw)  # reads and seeks run in the event loop's default executor
    try:
        fd = raw.fileno()
        opened = _fingerprint(os.fstat(fd))
        if expected is not None and opened != _fingerprint(expected):
            raise FileChanged(f"{path.name} changed before it could be read")
        for span in spans:
            if isinstance(span, bytes):
                yield span
                continue
            if span.length:
                await file.seek(span.start)
            for position in range(span.start, span.stop, chunk_bytes):
                wanted = min(chunk_bytes, span.stop - position)
                chunk = await _read(file, wanted, path)
                if len(chunk) != wanted or _fingerprint(os.fstat(fd)) != opened:
                    log.error("%s changed at byte %d while it was being sent; aborting", path, position)
                    raise FileChanged(f"{path.name} was truncated or rewritten while it was being sent")
                yield chunk
    finally:
        # Closed here, in the loop's thread and without an await, so that no cancellation can skip it. A read
        # still running in a worker thread ends on its own reference to the file; closing a file opened for
        # reading does not block.
        raw.close()


async def _open(path: Path) -> FileIO:
    """Open in a worker thread. A caller cancelled meanwhile does not wait, and the file is closed as soon as
    the open returns, so that no handle is left to the garbage collector."""
    opening = asyncio.get_running_loop().run_in_executor(None, _open_nonblocking, path)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _open_nonblocking(path: Path) -> FileIO:
    # O_NONBLOCK: a FIFO swapped in after the stat must not hang a thread in open(); the identity check refuses it.
    return open(path, "rb", buffering=0, opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))


def _close_opened(opening: asyncio.Future[FileIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _fingerprint(info: os.stat_result) -> tuple[int, int, int, int]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


async def _read(file: Any, size: int, path: Path) -> bytes:
    """Up to `size` bytes; fewer only at the end of the file (a raw read may legally return less)."""
    try:
        chunk: bytes = await file.read(size)
        while 0 < len(chunk) < size:
            more: bytes = await file.read(size - len(chunk))
            if not more:
                break
            chunk += more
    except OSError as exc:
        raise FileUnreadable(f"{path.name} cannot be read: {exc.strerror}") from None
    return chunk
