"""iter_file_chunks: sweeps over chunk sizes and spans, files that change under it, and closing."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from exporter.errors import FileChanged, FileUnreadable
from exporter.serving.filechunks import iter_file_chunks
from exporter.serving.ranges import Span

SIZES = [1, 2, 10, 1000]


def span_sets(size: int) -> list[list[Span]]:
    sets = [[Span(0, size)], [Span(0, 1)], [Span(size - 1, size)]]
    if size > 2:
        sets += [[Span(1, size - 1)], [Span(size // 2, size), Span(0, size // 2)], [Span(0, 1), Span(2, size)]]
    return sets


def chunk_sizes(size: int) -> list[int]:
    return sorted({1, 2, 7, max(size - 1, 1), size, size + 1, 64 * 1024})


def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    async def go() -> list[bytes]:
        return [chunk async for chunk in chunks]

    return asyncio.run(go())


def sample(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = random.Random(size).randbytes(size)
    path = tmp_path / f"sample-{size}.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("size", SIZES)
def test_chunks_are_exactly_chunk_bytes_but_the_last_of_each_span_and_join_to_the_slices(
    tmp_path: Path, size: int
) -> None:
    path, data = sample(tmp_path, size)
    for spans in span_sets(size):
        for chunk_bytes in chunk_sizes(size):
            frames = [f"<frame {i}>".encode() for i in range(len(spans) + 1)]
            parts: list[Span | bytes] = [frames[0]]
            for span, frame in zip(spans, frames[1:], strict=True):
                parts += [span, frame]
            chunks = collect(iter_file_chunks(path, parts, chunk_bytes, expected=path.stat()))
            # Frames come through as the very objects given; between them, one span's chunks.
            groups: list[list[bytes]] = []
            for chunk in chunks:
                if any(chunk is frame for frame in frames):
                    groups.append([])
                else:
                    groups[-1].append(chunk)
            assert len(groups) == len(frames)
            for span, group in zip(spans, groups, strict=False):
                assert b"".join(group) == data[span.start:span.stop], (spans, chunk_bytes)
                assert all(len(chunk) == chunk_bytes for chunk in group[:-1]), (spans, chunk_bytes)
                assert 0 < len(group[-1]) <= chunk_bytes
            assert groups[-1] == []


def test_an_empty_file_or_span_yields_no_chunks(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert collect(iter_file_chunks(path, [Span(0, 0)], 7)) == []
    path, _ = sample(tmp_path, 10)
    assert collect(iter_file_chunks(path, [b"a", Span(5, 5), b"b"], 7)) == [b"a", b"b"]


def test_a_file_that_is_not_the_one_stat_ed_fails_before_any_chunk(tmp_path: Path) -> None:
    path, _ = sample(tmp_path, 1000)
    stale = path.stat()
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"x" * 1000)
    replacement.replace(path)
    with pytest.raises(FileChanged, match="changed before it could be read"):
        collect(iter_file_chunks(path, [Span(0, 1000)], 100, expected=stale))


def test_a_file_removed_before_it_is_opened_counts_as_changed(tmp_path: Path) -> None:
    path, _ = sample(tmp_path, 10)
    stale = path.stat()
    path.unlink()
    with pytest.raises(FileChanged, match="removed"):
        collect(iter_file_chunks(path, [Span(0, 10)], 100, expected=stale))


def test_something_that_cannot_be_read_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(FileUnreadable, match="cannot be read"):
        collect(iter_file_chunks(tmp_path, [Span(0, 10)], 100))


def change(path: Path, action: str) -> None:
    if action == "truncate":
        os.truncate(path, 500)
    elif action == "rewrite":
        with open(path, "r+b") as file:  # same size, new bytes in place, as `cp new old` leaves it
            file.seek(900)
            file.write(b"\0" * 100)
    elif action == "append":
        with open(path, "ab") as file:
            file.write(b"more")
    elif action == "rename":
        replacement = path.with_name("replacement")
        replacement.write_bytes(b"\0" * 1000)
        replacement.replace(path)


def read_while_changing(path: Path, action: str) -> list[bytes]:
    """Read two chunks, change the file as `action` says, then read on until it ends or fails."""
    expected = path.stat()

    async def go() -> list[bytes]:
        chunks = iter_file_chunks(path, [Span(0, 1000)], 100, expected=expected)
        received = [await anext(chunks), await anext(chunks)]
        change(path, action)
        try:
            received += [chunk async for chunk in chunks]
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        return received

    return asyncio.run(go())


@pytest.mark.parametrize("action", ["truncate", "rewrite", "append"])
def test_a_file_changed_in_place_while_it_is_read_fails_instead_of_ending_short_or_mixed(
    tmp_path: Path, action: str
) -> None:
    path, _ = sample(tmp_path, 1000)
    with pytest.raises(FileChanged, match="while it was being sent"):
        read_while_changing(path, action)


def test_a_file_replaced_by_rename_while_it_is_read_is_sent_whole_from_the_open_descriptor(tmp_path: Path) -> None:
    path, data = sample(tmp_path, 1000)
    assert b"".join(read_while_changing(path, "rename")) == data


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("spans", [[Span(0, 1000)], [Span(0, 10), b"--", Span(20, 30)]])
def test_the_file_is_closed_when_the_consumer_stops_early_or_is_cancelled(
    tmp_path: Path, spans: Sequence[Span | bytes]
) -> None:
    path, _ = sample(tmp_path, 1000)

    async def stop_early() -> None:
        chunks = iter_file_chunks(path, spans, 3)
        await anext(chunks)
        await chunks.aclose()  # type: ignore[attr-defined]

    async def cancel_while_reading() -> None:
        async def consume() -> None:
            async for _ in iter_file_chunks(path, spans, 3):
                await asyncio.sleep(0)

        task = asyncio.create_task(consume())
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = open_fds()
    asyncio.run(stop_early())
    assert open_fds() == before
    asyncio.run(cancel_while_reading())
    assert open_fds() == before
