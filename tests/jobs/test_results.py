"""write_result: sweeps over chunk sizes around WRITE_BYTES, and no partial file after an error or a cancel."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporter.jobs.results import WRITE_BYTES, write_result

SIZES = [0, 1, WRITE_BYTES - 1, WRITE_BYTES, WRITE_BYTES + 1, 3 * WRITE_BYTES + 7]


class Chunks:
    """`data` in chunks of `chunk_bytes`, failing with `error` after `fail_after` chunks; knows if it was closed."""

    def __init__(self, data: bytes, chunk_bytes: int, fail_after: int | None = None,
                 error: BaseException | None = None) -> None:
        self.data, self.chunk_bytes, self.fail_after, self.error = data, chunk_bytes, fail_after, error
        self.closed = False

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for index, start in enumerate(range(0, len(self.data), self.chunk_bytes)):
                if index == self.fail_after:
                    raise self.error or RuntimeError("the export failed")
                yield self.data[start:start + self.chunk_bytes]
                await asyncio.sleep(0)
        finally:
            self.closed = True


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("chunk_bytes", [1000, 64 * 1024, WRITE_BYTES, WRITE_BYTES + 1])
def test_result_file_holds_the_chunks_and_its_size_and_sha256(tmp_path: Path, size: int, chunk_bytes: int) -> None:
    data = random.Random(size).randbytes(size)
    source = Chunks(data, chunk_bytes)
    final = tmp_path / "job.csv"
    written = asyncio.run(write_result(source(), tmp_path / "job.1.part", final))
    assert written == (size, hashlib.sha256(data).hexdigest())
    assert final.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.csv"]
    assert source.closed


@pytest.mark.parametrize("fail_after", [0, 1, 20])
def test_failed_export_leaves_no_file_and_raises_its_error(tmp_path: Path, fail_after: int) -> None:
    source = Chunks(b"x" * (3 * WRITE_BYTES), 64 * 1024, fail_after)
    with pytest.raises(RuntimeError, match="the export failed"):
        asyncio.run(write_result(source(), tmp_path / "job.1.part", tmp_path / "job.csv"))
    assert list(tmp_path.iterdir()) == []
    assert source.closed


def test_cancelled_write_leaves_no_file(tmp_path: Path) -> None:
    async def cancel_midway() -> None:
        past_two_writes = asyncio.Event()

        async def endless() -> AsyncIterator[bytes]:
            sent = 0
            while True:
                yield b"y" * 64 * 1024
                sent += 64 * 1024
                if sent > 2 * WRITE_BYTES:
                    past_two_writes.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(write_result(endless(), tmp_path / "job.1.part", tmp_path / "job.csv"))
        await past_two_writes.wait()
        assert (tmp_path / "job.1.part").stat().st_size >= WRITE_BYTES
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(cancel_midway(), 30))
    assert list(tmp_path.iterdir()) == []
