"""A job's result file: written whole or not at all, with the sha256 computed while writing (write_result); found
again for a download only while the job's state says it is there (result_target)."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BufferedWriter
from pathlib import Path
from typing import Any, TypeVar

import anyio

from exporter.config import FileRootConfig
from exporter.errors import JobCancelled, JobExpired, JobFailed, JobNotFinished, StorageFull, StorageUnavailable
from exporter.jobs.views import filename
from exporter.models import Job
from exporter.serving.files import REVALIDATE, Target

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """A finished result file: its final path, size, sha256 (hex) and rows."""

    path: Path
    size: int
    sha256: str
    rows: int


def result_path(jobs_dir: Path, job: Job) -> Path:
    return jobs_dir / f"{job.id}.{job.format}"


def part_path(jobs_dir: Path, job: Job) -> Path:
    """Where an attempt writes before the rename: its name says which attempt, for the janitor."""
    return jobs_dir / f"{job.id}.{job.attempt}.part"


async def result_target(jobs_dir: Path, job: Job) -> tuple[Target, dict[str, str]]:
    """The result file of a succeeded job that has not expired, and the headers that describe it (its sha256 as
    Repr-Digest, its rows); else the error that says why not (JobNotFinished, JobFailed, JobCancelled,
    JobExpired)."""
    if job.state in ("queued", "running"):
        raise JobNotFinished(f"job {job.id} is {job.state}; its result is not ready")
    if job.state == "failed":
        raise JobFailed(f"job {job.id} failed: {job.error_message}")
    if job.state == "cancelled":
        raise JobCancelled(f"job {job.id} was cancelled")
    if job.state == "expired" or (job.expires_at is not None and job.expires_at <= datetime.now(UTC)):
        raise JobExpired(f"the result of job {job.id} has expired")
    path = result_path(jobs_dir, job)
    try:
        info = await anyio.Path(path).stat()
    except FileNotFoundError:
        raise JobExpired(f"the result of job {job.id} has expired") from None
    digest = base64.b64encode(bytes.fromhex(job.result_sha256 or "")).decode()
    headers = {**REVALIDATE, "Repr-Digest": f"sha-256=:{digest}:", "X-Export-Rows": str(job.result_rows)}
    return Target(FileRootConfig("jobs", path.parent), filename(job), path, info), headers


# Chunks (about 64-300 KiB from COPY, one batch from the generic path) are gathered into writes of about this
# size. Each write is one hop to a worker thread, which waits to be scheduled and to take the GIL: with a hop
# per chunk, a 1M-row COPY job took 1.13-1.26x as long as the same export streamed; with 1 MiB, 0.99-1.04x.
WRITE_BYTES = 1024 * 1024


async def write_result(chunks: AsyncIterator[bytes], part: Path, final: Path) -> tuple[int, str]:
    """Write `chunks` to `part`, fsync it, rename it to `final` and fsync the folder, so that `final` is never
    seen half-written, even after a crash. Returns the size and the sha256 (hex).

    Hashing and writing run in a worker thread, WRITE_BYTES at a time, so neither blocks the event loop.
    A failure of the storage (not of `chunks`) raises StorageFull (ENOSPC, EDQUOT) or StorageUnavailable.
    However this ends early (an error, or cancellation), neither `part` nor `final` is left behind; `chunks` is
    closed in every case.
    """
    digest = hashlib.sha256()
    size = 0
    renamed = False
    try:
        file = await _on_disk(_create, part)
        try:
            # Filled on the event loop's thread, whose heap is reused from job to job; a buffer joined in the
            # worker threads left a few MiB in each of their malloc arenas.
            pending = bytearray()
            async for chunk in chunks:
                pending += chunk
                if len(pending) >= WRITE_BYTES:
                    await _on_disk(_write, file, digest, pending)
                    size += len(pending)
                    pending.clear()
            await _on_disk(_write, file, digest, pending, True)
            size += len(pending)
        finally:
            # After a failed write the buffer may still hold bytes that fail again here; that error would hide
            # the first one. On success the last _write flushed everything already.
            with contextlib.suppress(OSError):
                file.close()
        await _on_disk(os.replace, part, final)
        renamed = True
        await _on_disk(_fsync_directory, final.parent)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.Path(part).unlink(missing_ok=True)
            if renamed:  # the rename may not be durable: the job fails, so its file goes too
                await anyio.Path(final).unlink(missing_ok=True)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()  # type: ignore[attr-defined]
    return size, digest.hexdigest()


async def _on_disk(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a worker thread, its OSError told as the storage's error (see storage_error)."""
    try:
        return await anyio.to_thread.run_sync(function, *args)
    except OSError as error:
        raise storage_error(error) from error


def storage_error(error: OSError) -> StorageFull | StorageUnavailable:
    """The job's error for a failed write of its result. The message never names the server's paths."""
    reason = os.strerror(error.errno) if error.errno else type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"the job's result could not be written: the results storage is full ({reason}); "
                           "try again once space is free")
    return StorageUnavailable(f"the job's result could not be written: the results storage failed ({reason})")


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
