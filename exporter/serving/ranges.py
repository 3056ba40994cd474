"""Byte ranges (RFC 9110 §14): parse_range(header, size) → spans, and the body a response sends for them,
whole, one range, or multipart/byteranges."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

from exporter.errors import RangeNotSatisfiable

# More ranges than this and the header is ignored: the whole file is never more than the file (RFC 9110 §14.2
# lets a server ignore a Range with many small ranges).
MAX_RANGES = 100
# Positions longer than 18 digits are past any real file; they stay this number instead of a huge int.
BEYOND_ANY_FILE = 10**18
RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")  # not \d, which matches any Unicode digit


class Span(NamedTuple):
    """The bytes start..stop-1 of a file."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def parse_range(header: str | None, size: int) -> list[Span] | None:
    """The spans a Range header asks of a `size`-byte file, in the order asked, clamped to the file's end.

    None means "ignore the header and send the whole file": no header, another unit than bytes, a malformed
    range-set, an invalid range (last-pos before first-pos), more than MAX_RANGES ranges, or a suffix range on
    an empty file (it selects the whole empty file, which a Content-Range cannot express). Ranges that start
    past the end are dropped; if none is left this raises RangeNotSatisfiable, carrying `Content-Range:
    bytes */size`. Overlapping ranges are replaced by their sorted union, so no byte is sent twice (§14.2
    allows coalescing). Whitespace around each range is tolerated, as nginx does.
    """
    if header is None:
        return None
    unit, equals, range_set = header.partition("=")
    if not equals or unit.lower() != "bytes":  # range units are case-insensitive (§14.1)
        return None
    # Empty list elements are allowed (§5.6.1.2): "bytes=0-1,,5-6".
    specs = [spec.strip(" \t") for spec in range_set.split(",") if spec.strip(" \t")]
    if not specs or len(specs) > MAX_RANGES:
        return None
    spans: list[Span] = []
    suffix_asked = False
    for spec in specs:
        match = RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match.groups()
        if first:
            start = _position(first)
            if last and _position(last) < start:
                return None  # last-pos before first-pos: invalid, so the whole header is ignored (§14.1.1)
            spans.append(Span(start, min(_position(last) + 1, size) if last else size))
        elif last:
            suffix = _position(last)
            suffix_asked = suffix_asked or suffix > 0
            spans.append(Span(max(size - suffix, 0), size))  # a suffix longer than the file is the whole file
        else:
            return None
    satisfiable = [span for span in spans if span.start < span.stop]
    if not satisfiable:
        if size == 0 and suffix_asked:
            return None
        # 416 carries the current length so the client can retry (RFC 9110 §15.5.17)
        raise RangeNotSatisfiable(f"no range in {header[:100]!r} overlaps the file's {size} bytes",
                                  headers={"Content-Range": f"bytes */{size}"})
    return _coalesced(satisfiable)


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else BEYOND_ANY_FILE


def _coalesced(spans: list[Span]) -> list[Span]:
    ordered = sorted(spans)
    if all(a.stop <= b.start for a, b in pairwise(ordered)):
        return spans
    union = [ordered[0]]
    for span in ordered[1:]:
        if span.start <= union[-1].stop:
            union[-1] = Span(union[-1].start, max(union[-1].stop, span.stop))
        else:
            union.append(span)
    return union


@dataclass(frozen=True)
class RangeBody:
    """A response body over a file: its status, the headers describing it, and its parts in order (spans to
    read from the file, and multipart framing as bytes)."""

    status: int
    headers: dict[str, str]
    parts: list[Span | bytes]


def range_body(spans: Sequence[Span] | None, size: int, content_type: str, boundary: str | None = None) -> RangeBody:
    """200 with the whole file for None, 206 with Content-Range for one span, 206 multipart/byteranges (§14.6)
    for several. Content-Length is always known up front, framing included."""
    if spans is None:
        return RangeBody(200, {"Content-Type": content_type, "Content-Length": str(size)}, [Span(0, size)])
    if len(spans) == 1:
        span = spans[0]
        headers = {"Content-Type": content_type, "Content-Length": str(span.length),
                   "Content-Range": span.content_range(size)}
        return RangeBody(206, headers, [span])
    boundary = boundary or secrets.token_hex(16)
    parts: list[Span | bytes] = []
    for index, span in enumerate(spans):
        separator = "\r\n" if index else ""
        head = (f"{separator}--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: {span.content_range(size)}\r\n\r\n")
        parts += [head.encode("latin-1"), span]
    parts.append(f"\r\n--{boundary}--\r\n".encode("latin-1"))
    length = sum(len(part) if isinstance(part, bytes) else part.length for part in parts)
    headers = {"Content-Type": f"multipart/byteranges; boundary={boundary}", "Content-Length": str(length)}
    return RangeBody(206, headers, parts)
