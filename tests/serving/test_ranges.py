"""parse_range over a table of Range headers, and range_body's whole, single and multipart bodies."""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from exporter.errors import RangeNotSatisfiable
from exporter.serving.ranges import MAX_RANGES, RangeBody, Span, parse_range, range_body

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "spans"),
    [
        ("bytes=0-99", [(0, 100)]),
        ("bytes=0-0", [(0, 1)]),
        ("bytes=999-999", [(999, 1000)]),
        ("bytes=100-", [(100, 1000)]),
        ("bytes=-100", [(900, 1000)]),
        ("bytes=-1", [(999, 1000)]),
        ("bytes=-5000", [(0, 1000)]),
        ("bytes=900-5000", [(900, 1000)]),
        ("bytes=0-99999999999999999999999999", [(0, 1000)]),
        ("bytes=-99999999999999999999999999", [(0, 1000)]),
        ("bytes=000010-000019", [(10, 20)]),
        ("bytes=0-1,5-6", [(0, 2), (5, 7)]),
        ("bytes=5-6,0-1", [(5, 7), (0, 2)]),
        ("bytes=0-1,-2", [(0, 2), (998, 1000)]),
        ("bytes=0-1,2-3", [(0, 2), (2, 4)]),
        ("bytes=0-1,5000-6000", [(0, 2)]),
        ("bytes= 0-1", [(0, 2)]),
        ("bytes=0-1 , 5-6\t", [(0, 2), (5, 7)]),
        ("bytes=0-1,,5-6,", [(0, 2), (5, 7)]),
        ("Bytes=0-1", [(0, 2)]),
        ("BYTES=0-1", [(0, 2)]),
        pytest.param("bytes=0-499,400-599", [(0, 600)], id="overlap-coalesced"),
        pytest.param("bytes=500-599,0-99,50-149", [(0, 150), (500, 600)], id="overlap-sorted-union"),
        pytest.param("bytes=0-,0-,0-", [(0, 1000)], id="repeats-sent-once"),
        pytest.param("bytes=-100,950-", [(900, 1000)], id="suffix-overlap"),
        pytest.param(",".join(f"{i * 2}-{i * 2}" for i in range(MAX_RANGES)).join(["bytes=", ""]),
                     [(i * 2, i * 2 + 1) for i in range(MAX_RANGES)], id="max-ranges"),
    ],
)
def test_range_headers_give_spans_in_the_order_asked_clamped_to_the_file(
    header: str, spans: list[tuple[int, int]]
) -> None:
    assert parse_range(header, SIZE) == [Span(*span) for span in spans]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "items=0-1",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes=-",
        "bytes=5-2",
        "bytes=0-1,5-2",
        "bytes=a-b",
        "bytes=1",
        "bytes=0-1-2",
        "bytes=+1-2",
        "bytes=0x10-20",
        "bytes=0 - 1",
        "bytes = 0-1",
        "bytes=1.5-2",
        "bytes=½-1",
        "bytes=٣-٤",  # Arabic-Indic digits: str.isdigit() says yes, HTTP says no
        ",".join(f"{i * 2}-{i * 2}" for i in range(MAX_RANGES + 1)).join(["bytes=", ""]),
    ],
)
def test_malformed_or_foreign_range_headers_are_ignored(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=99999999999999999999-", 1000),
        ("bytes=-0", 1000),
        ("bytes=-0,1000-", 1000),
        ("bytes=0-0", 0),
        ("bytes=0-", 0),
        ("bytes=-0", 0),
    ],
)
def test_ranges_that_miss_the_file_are_not_satisfiable_and_carry_its_length(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, size)
    assert raised.value.status == 416
    assert raised.value.headers == {"Content-Range": f"bytes */{size}"}


def test_a_suffix_range_on_an_empty_file_is_ignored_since_no_content_range_can_say_empty() -> None:
    assert parse_range("bytes=-5", 0) is None


def test_no_range_is_the_whole_file_with_status_200() -> None:
    body = range_body(None, SIZE, "text/csv")
    assert body == RangeBody(200, {"Content-Type": "text/csv", "Content-Length": "1000"}, [Span(0, 1000)])


def test_one_range_is_a_206_with_content_range() -> None:
    body = range_body([Span(10, 20)], SIZE, "text/csv")
    assert body == RangeBody(206, {"Content-Type": "text/csv", "Content-Length": "10",
                                   "Content-Range": "bytes 10-19/1000"}, [Span(10, 20)])


def test_several_ranges_are_a_multipart_body_whose_length_is_known_up_front() -> None:
    data = bytes(range(256)) * 4
    spans = [Span(0, 3), Span(500, 510), Span(998, 1000)]
    body = range_body(spans, len(data), "application/pdf", boundary="XYZ")
    assert body.status == 206
    assert body.headers["Content-Type"] == "multipart/byteranges; boundary=XYZ"
    wire = b"".join(part if isinstance(part, bytes) else data[part.start:part.stop] for part in body.parts)
    assert int(body.headers["Content-Length"]) == len(wire)
    assert wire == (
        b"--XYZ\r\nContent-Type: application/pdf\r\nContent-Range: bytes 0-2/1024\r\n\r\n" + data[0:3] +
        b"\r\n--XYZ\r\nContent-Type: application/pdf\r\nContent-Range: bytes 500-509/1024\r\n\r\n" + data[500:510] +
        b"\r\n--XYZ\r\nContent-Type: application/pdf\r\nContent-Range: bytes 998-999/1024\r\n\r\n" + data[998:1000] +
        b"\r\n--XYZ--\r\n"
    )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {body.headers['Content-Type']}\r\n\r\n".encode() + wire)
    parts = [(part["Content-Range"], part.get_payload(decode=True)) for part in message.iter_parts()]
    assert parts == [("bytes 0-2/1024", data[0:3]), ("bytes 500-509/1024", data[500:510]),
                     ("bytes 998-999/1024", data[998:1000])]


def test_multipart_boundaries_are_random() -> None:
    first, second = (range_body([Span(0, 1), Span(2, 3)], 10, "text/plain").headers["Content-Type"]
                     for _ in range(2))
    assert first != second
