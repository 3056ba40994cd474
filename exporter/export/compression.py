"""Streaming gzip and zstd for compressed file names (`.gz`, `.zst`) and Accept-Encoding; the compression runs in
a worker thread (off_loop), never on the event loop."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import zstandard

from exporter.eventloop import off_loop

GZIP_LEVEL = 6
ZSTD_LEVEL = 3  # zstd's default: faster than gzip -6 and smaller


async def iter_gzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Compress each chunk as it comes; a sync flush per chunk lets the client decode what it has so far.

    Closing this closes `chunks`. The gzip trailer is written only after the last chunk, so a transfer
    that ends early is also an invalid gzip file.
    """
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    try:
        async for chunk in chunks:
            yield await off_loop(_gzip_block, compressor, chunk)
        yield await off_loop(compressor.flush, zlib.Z_FINISH)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def iter_zstd(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """One zstd frame, with a block flushed per chunk so the client can decode what it has so far.

    Closing this closes `chunks`. The frame's end (and checksum) is written only after the last chunk, so a
    transfer that ends early is also an incomplete zstd frame, which decoders reject.
    """
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
    try:
        async for chunk in chunks:
            yield await off_loop(_zstd_block, compressor, chunk)
        yield await off_loop(compressor.flush, zstandard.COMPRESSOBJ_FLUSH_FINISH)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _gzip_block(compressor: zlib._Compress, chunk: bytes) -> bytes:
    return compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _zstd_block(compressor: zstandard.ZstdCompressionObj, chunk: bytes) -> bytes:
    return compressor.compress(chunk) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


COMPRESSORS = {"gzip": iter_gzip, "zstd": iter_zstd}


def _qualities(accept_encoding: str) -> dict[str, float]:
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        quality = params.strip().lower()
        try:
            value = float(quality.removeprefix("q=")) if quality.startswith("q=") else 1.0
        except ValueError:
            value = 0.0
        qualities.setdefault("gzip" if coding.strip().lower() == "x-gzip" else coding.strip().lower(), value)
    return qualities


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (RFC 9110 §12.5.3): an explicit gzip entry decides,
    else `*` does; q=0 means "not acceptable"."""
    qualities = _qualities(accept_encoding)
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0


def choose_encoding(accept_encoding: str) -> str | None:
    """The content coding to send: the acceptable one of gzip and zstd with the higher weight, gzip when they
    are equal (every client that takes zstd also takes gzip; the reverse is not so); None for identity.
    An explicit entry decides for its coding, else `*` does (RFC 9110 §12.5.3)."""
    qualities = _qualities(accept_encoding)
    weights = {coding: qualities.get(coding, qualities.get("*", 0.0)) for coding in ("gzip", "zstd")}
    best = max(weights, key=lambda coding: weights[coding])  # max keeps the first, gzip, on a tie
    return best if weights[best] > 0 else None
