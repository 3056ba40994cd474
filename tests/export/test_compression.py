"""Accept-Encoding negotiation; iter_gzip and iter_zstd round trip, decode chunk by chunk, and fail when cut."""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import zstandard

from exporter.export.compression import accepts_gzip, choose_encoding, iter_gzip, iter_zstd


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip; q=0.5", True),
        ("gzip;q=0.001", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("identity", False),
        ("deflate, br", False),
        ("", False),
        ("*", True),
        ("*;q=0", False),
        ("x-gzip", True),
        ("GZIP", True),
        ("br, GZip;Q=1", True),
        ("gzip;q=0, *", False),
        pytest.param("*;q=1, gzip;q=0", False, id="star-then-explicit-gzip-refusal"),
    ],
)
def test_accepts_gzip_reads_the_accept_encoding_header(accept_encoding: str, expected: bool) -> None:
    assert accepts_gzip(accept_encoding) is expected


async def from_parts(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def gzip_chunks(parts: Sequence[bytes]) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in iter_gzip(from_parts(parts))]

    return asyncio.run(collect())


def payload(count: int) -> list[bytes]:
    """Chunks mixing text that compresses well with random bytes that do not, and one empty chunk."""
    rng = random.Random(count)
    parts = [f"{i},Grüße ✓,{'x' * (i % 97)}\n".encode() * rng.randint(1, 400) + rng.randbytes(rng.randint(0, 3000))
             for i in range(count)]
    if count > 2:
        parts[1] = b""
    return parts


CHUNK_COUNTS = [0, 1, 2, 3, 50]


@pytest.mark.parametrize("count", CHUNK_COUNTS)
def test_gzip_stream_decompresses_to_the_original_bytes(count: int) -> None:
    parts = payload(count)
    assert gzip.decompress(b"".join(gzip_chunks(parts))) == b"".join(parts)


@pytest.mark.parametrize("count", CHUNK_COUNTS)
def test_gzip_stream_lets_the_client_decode_each_chunk_as_it_arrives(count: int) -> None:
    parts = payload(count)
    chunks = gzip_chunks(parts)
    assert len(chunks) == count + 1  # one per input chunk, then the trailer
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for part, chunk in zip(parts, chunks, strict=False):
        assert decoder.decompress(chunk) == part
    assert decoder.decompress(chunks[-1]) == b""
    assert decoder.eof


# Without any data chunk, dropping the trailer leaves no bytes at all: an empty body, not a cut gzip file.
CUTS = [(count, cut) for count in CHUNK_COUNTS for cut in ("without-trailer-chunk", "last-byte", "last-8-bytes", "half")
        if (count, cut) != (0, "without-trailer-chunk")]


@pytest.mark.parametrize(("count", "cut"), CUTS)
def test_gzip_stream_cut_before_its_end_fails_to_decompress(count: int, cut: str) -> None:
    chunks = gzip_chunks(payload(count))
    whole = b"".join(chunks)
    truncated = {
        "without-trailer-chunk": b"".join(chunks[:-1]),
        "last-byte": whole[:-1],
        "last-8-bytes": whole[:-8],
        "half": whole[: len(whole) // 2],
    }[cut]
    with pytest.raises((EOFError, zlib.error)):
        gzip.decompress(truncated)


@pytest.mark.parametrize("compress", [iter_gzip, iter_zstd], ids=["gzip", "zstd"])
def test_closing_the_compressed_stream_early_closes_its_source(
    compress: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]
) -> None:
    events: list[str] = []

    async def source() -> AsyncIterator[bytes]:
        try:
            for i in range(100):
                events.append(f"sent {i}")
                yield b"row\n" * 10
        finally:
            events.append("source closed")

    async def read_one_then_leave() -> None:
        stream = compress(source())
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(read_one_then_leave())
    assert events == ["sent 0", "source closed"]


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("zstd", "zstd"),
        ("gzip, zstd", "gzip"),
        ("zstd, gzip", "gzip"),
        ("gzip, deflate, br, zstd", "gzip"),
        ("zstd;q=1, gzip;q=0.9", "zstd"),
        ("gzip;q=0.5, zstd;q=0.6", "zstd"),
        ("zstd;q=0.5, gzip;q=0.5", "gzip"),
        ("gzip;q=0, zstd", "zstd"),
        ("zstd;q=0, *", "gzip"),
        ("*", "gzip"),
        ("*;q=0.5, zstd", "zstd"),
        ("br", None),
        ("identity", None),
        ("", None),
        ("zstd;q=0, gzip;q=0", None),
        ("ZSTD", "zstd"),
    ],
)
def test_choose_encoding_prefers_the_higher_weight_and_gzip_on_a_tie(accept_encoding: str, expected: str | None
                                                                      ) -> None:
    assert choose_encoding(accept_encoding) == expected


def zstd_chunks(parts: Sequence[bytes]) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in iter_zstd(from_parts(parts))]

    return asyncio.run(collect())


@pytest.mark.parametrize("count", CHUNK_COUNTS)
def test_zstd_stream_decompresses_to_the_original_bytes_chunk_by_chunk(count: int) -> None:
    parts = payload(count)
    chunks = zstd_chunks(parts)
    assert len(chunks) == count + 1
    decoder = zstandard.ZstdDecompressor().decompressobj()
    for part, chunk in zip(parts, chunks, strict=False):
        assert decoder.decompress(chunk) == part
    assert decoder.decompress(chunks[-1]) == b""
    assert decoder.eof
    assert zstandard.ZstdDecompressor().decompressobj().decompress(b"".join(chunks)) == b"".join(parts)


@pytest.mark.parametrize(("count", "cut"), [(count, cut) for count in CHUNK_COUNTS for cut in ("last-byte", "half")])
def test_zstd_stream_cut_before_its_end_is_an_incomplete_frame(count: int, cut: str) -> None:
    whole = b"".join(zstd_chunks(payload(count)))
    truncated = whole[:-1] if cut == "last-byte" else whole[: len(whole) // 2]
    decoder = zstandard.ZstdDecompressor().decompressobj()
    try:
        decoder.decompress(truncated)
    except zstandard.ZstdError:
        return
    assert not decoder.eof


