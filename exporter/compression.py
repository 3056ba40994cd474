"""iter_gzip: streaming gzip for `.gz` names and `Accept-Encoding: gzip`."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

GZIP_LEVEL = 6


async def iter_gzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Compress each chunk as it comes; a sync flush per chunk lets the client decode what it has so far.

    Closing this closes `chunks`. The gzip trailer is written only after the last chunk, so a transfer
    that ends early is also an invalid gzip file.
    """
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    try:
        async for chunk in chunks:
            yield compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)
        yield compressor.flush(zlib.Z_FINISH)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (RFC 9110 §12.5.3): an explicit gzip entry decides,
    else `*` does; q=0 means "not acceptable"."""
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        quality = params.strip().lower()
        try:
            value = float(quality.removeprefix("q=")) if quality.startswith("q=") else 1.0
        except ValueError:
            value = 0.0
        qualities.setdefault("gzip" if coding.strip().lower() == "x-gzip" else coding.strip().lower(), value)
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0
