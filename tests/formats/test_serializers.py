"""Serializers: golden bytes for awkward rows and every kind of value, CSV options, and batch-size sweeps."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from exporter.errors import InvalidParameter, UnknownFormat
from exporter.formats import (
    FORMATS,
    CsvOptions,
    CsvSerializer,
    NdjsonSerializer,
    Serializer,
    create_serializer,
    csv_options,
    format_options,
    reject_csv_options,
    split_filename,
)
from exporter.sources.datasets import Column

BOM = "\ufeff".encode()
NEW_YORK_WINTER = timezone(timedelta(hours=-5))
INDIA = timezone(timedelta(hours=5, minutes=30))


def col(name: str, kind: str, scale: int | None = None) -> Column:
    return Column(name, kind, kind, nullable=True, scale=scale)


def stream(serializer: Serializer, batches: Sequence[Sequence[Sequence[Any]]]) -> bytes:
    """The whole response body, as the export route sends it."""
    return serializer.header() + b"".join(serializer.encode(batch) for batch in batches) + serializer.footer()


def batched(rows: Sequence[Sequence[Any]], size: int) -> list[Sequence[Sequence[Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def reject_constant(token: str) -> Any:
    raise AssertionError(f"NDJSON must not contain the non-JSON token {token}")


def ndjson_objects(body: bytes) -> list[dict[str, Any]]:
    """Strict NDJSON: one object per LF-terminated line, numbers with every digit, no NaN or Infinity."""
    text = body.decode()
    assert text == "" or text.endswith("\n")
    return [json.loads(line, parse_float=Decimal, parse_constant=reject_constant) for line in text.splitlines()]


# The awkward rows: quotes, delimiters, line breaks, non-ASCII, a formula, "" next to NULL, the COPY
# end marker, backslashes, and numerics and timestamps that only survive if nothing goes through float.
AWKWARD_COLUMNS = [
    col("id", "integer"),
    col("note", "text"),
    col("amount", "decimal"),
    col("ratio", "float"),
    col("created_at", "timestamptz"),
    col("is_gift", "boolean"),
]
AWKWARD_ROWS: list[tuple[Any, ...]] = [
    (1, 'say "hi", then leave', Decimal("12.50"), 0.1, datetime(2024, 3, 10, 8, 30, tzinfo=NEW_YORK_WINTER), True),
    (2, "", Decimal("0E-8"), -2.5, datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=INDIA), False),
    (3, None, None, None, None, None),
    (4, "line1\nline2\r\nline3", Decimal("1E+2"), 1e-7, datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), True),
    (
        5,
        'Grüße, "fragile"\nleave at door ✓',
        Decimal("123456789012345678901234567890.123456789"),
        1.5,
        datetime(2024, 2, 29, 12, 0, tzinfo=NEW_YORK_WINTER),
        False,
    ),
    (6, "=1+2", Decimal("-0.01"), 0.0, datetime(2024, 6, 1, tzinfo=UTC), True),
    (7, "\\.", Decimal("0.1000000000000000055511151231257827"), 2.0, datetime(2024, 6, 2, tzinfo=UTC), False),
    (8, "C:\\temp\\", Decimal("1"), -0.5, datetime(2024, 6, 3, tzinfo=UTC), True),
]

AWKWARD_CSV = (
    "id,note,amount,ratio,created_at,is_gift\n"
    '1,"say ""hi"", then leave",12.50,0.1,2024-03-10T13:30:00+00:00,true\n'
    '2,"",0.00000000,-2.5,2023-12-31T18:30:00.000001+00:00,false\n'
    "3,,,,,\n"
    '4,"line1\nline2\r\nline3",100,1e-07,2024-12-31T23:59:59.999999+00:00,true\n'
    '5,"Grüße, ""fragile""\nleave at door ✓",123456789012345678901234567890.123456789,1.5,'
    "2024-02-29T17:00:00+00:00,false\n"
    "6,=1+2,-0.01,0,2024-06-01T00:00:00+00:00,true\n"
    '7,\\.,0.1000000000000000055511151231257827,2,2024-06-02T00:00:00+00:00,false\n'
    "8,C:\\temp\\,1,-0.5,2024-06-03T00:00:00+00:00,true\n"
).encode()

AWKWARD_NDJSON = (
    '{"id":1,"note":"say \\"hi\\", then leave","amount":12.50,"ratio":0.1,'
    '"created_at":"2024-03-10T13:30:00+00:00","is_gift":true}\n'
    '{"id":2,"note":"","amount":0.00000000,"ratio":-2.5,'
    '"created_at":"2023-12-31T18:30:00.000001+00:00","is_gift":false}\n'
    '{"id":3,"note":null,"amount":null,"ratio":null,"created_at":null,"is_gift":null}\n'
    '{"id":4,"note":"line1\\nline2\\r\\nline3","amount":100,"ratio":1e-07,'
    '"created_at":"2024-12-31T23:59:59.999999+00:00","is_gift":true}\n'
    '{"id":5,"note":"Grüße, \\"fragile\\"\\nleave at door ✓","amount":123456789012345678901234567890.123456789,'
    '"ratio":1.5,"created_at":"2024-02-29T17:00:00+00:00","is_gift":false}\n'
    '{"id":6,"note":"=1+2","amount":-0.01,"ratio":0,"created_at":"2024-06-01T00:00:00+00:00","is_gift":true}\n'
    '{"id":7,"note":"\\\\.","amount":0.1000000000000000055511151231257827,"ratio":2,'
    '"created_at":"2024-06-02T00:00:00+00:00","is_gift":false}\n'
    '{"id":8,"note":"C:\\\\temp\\\\","amount":1,"ratio":-0.5,"created_at":"2024-06-03T00:00:00+00:00","is_gift":true}\n'
).encode()

N = len(AWKWARD_ROWS)
BATCH_SIZES = [1, 2, 3, N - 1, N, N + 1]


def test_csv_writes_awkward_rows_as_golden_bytes() -> None:
    serializer = CsvSerializer(AWKWARD_COLUMNS, "postgresql", CsvOptions())
    assert stream(serializer, [AWKWARD_ROWS]) == AWKWARD_CSV


def test_ndjson_writes_awkward_rows_as_golden_bytes() -> None:
    serializer = NdjsonSerializer(AWKWARD_COLUMNS, "postgresql")
    assert stream(serializer, [AWKWARD_ROWS]) == AWKWARD_NDJSON


# kind, value as the PostgreSQL driver hands it back, the CSV field, the NDJSON value
VALUES: list[tuple[str, Any, str, str]] = [
    ("integer", -5, "-5", "-5"),
    ("integer", 9223372036854775807, "9223372036854775807", "9223372036854775807"),
    ("decimal", Decimal("12.50"), "12.50", "12.50"),
    ("decimal", Decimal("1E+2"), "100", "100"),
    ("decimal", Decimal("0E-8"), "0.00000000", "0.00000000"),
    ("decimal", Decimal("1E-9"), "0.000000001", "0.000000001"),
    ("decimal", Decimal("-1.230"), "-1.230", "-1.230"),
    ("decimal", Decimal("98765432109876543210.0123456789"), "98765432109876543210.0123456789",
     "98765432109876543210.0123456789"),
    ("decimal", Decimal("NaN"), "NaN", "null"),
    ("float", 1.5, "1.5", "1.5"),
    ("float", float("nan"), "NaN", "null"),
    ("float", float("inf"), "Infinity", "null"),
    ("float", float("-inf"), "-Infinity", "null"),
    ("boolean", True, "true", "true"),
    ("boolean", False, "false", "false"),
    ("timestamptz", datetime(2024, 3, 10, 8, 30, tzinfo=NEW_YORK_WINTER), "2024-03-10T13:30:00+00:00",
     '"2024-03-10T13:30:00+00:00"'),
    ("timestamptz", datetime(2024, 1, 1, 5, 29, 59, 123456, tzinfo=INDIA), "2023-12-31T23:59:59.123456+00:00",
     '"2023-12-31T23:59:59.123456+00:00"'),
    ("timestamp", datetime(2024, 3, 10, 8, 30), "2024-03-10T08:30:00", '"2024-03-10T08:30:00"'),
    ("timestamp", datetime(2024, 3, 10, 8, 30, 0, 120000), "2024-03-10T08:30:00.12",
     '"2024-03-10T08:30:00.12"'),
    ("date", date(2024, 2, 29), "2024-02-29", '"2024-02-29"'),
    ("time", time(23, 59, 59, 999999), "23:59:59.999999", '"23:59:59.999999"'),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678",
     '"12345678-1234-5678-1234-567812345678"'),
    ("bytes", b"\x00\xffab", "\\x00ff6162", '"\\\\x00ff6162"'),
    ("json", '{"a": [1, 2.50], "b": "x,y"}', '"{""a"": [1, 2.50], ""b"": ""x,y""}"', '{"a": [1, 2.50], "b": "x,y"}'),
    ("other", Decimal("1E+2"), "100", "100"),
    ("other", datetime(2024, 3, 10, 8, 30, tzinfo=NEW_YORK_WINTER), "2024-03-10T13:30:00+00:00",
     '"2024-03-10T13:30:00+00:00"'),
]


@pytest.mark.parametrize(("kind", "value", "csv_field", "json_value"), VALUES)
def test_csv_writes_each_kind_of_value_in_its_canonical_form(kind: str, value: Any, csv_field: str,
                                                            json_value: str) -> None:
    serializer = CsvSerializer([col("v", kind)], "postgresql", CsvOptions(header=False))
    assert serializer.encode([(value,)]) == f"{csv_field}\n".encode()


@pytest.mark.parametrize(("kind", "value", "csv_field", "json_value"), VALUES)
def test_ndjson_writes_each_kind_of_value_in_its_canonical_form(kind: str, value: Any, csv_field: str,
                                                               json_value: str) -> None:
    serializer = NdjsonSerializer([col("v", kind)], "postgresql")
    body = serializer.encode([(value,)])
    assert body == f'{{"v":{json_value}}}\n'.encode()
    ndjson_objects(body)


def test_ndjson_never_writes_nan_or_infinity_tokens() -> None:
    rows = [(float(special), Decimal(special)) for special in ("NaN", "Infinity", "-Infinity")]
    body = NdjsonSerializer([col("f", "float"), col("d", "decimal")], "postgresql").encode(rows)
    assert body == b'{"f":null,"d":null}\n' * len(rows)
    assert ndjson_objects(body) == [{"f": None, "d": None}] * len(rows)


def test_ndjson_keeps_one_line_per_row_when_a_json_value_contains_line_breaks() -> None:
    body = NdjsonSerializer([col("doc", "json")], "postgresql").encode([('{\n  "a": 1\n}',)])
    assert body.count(b"\n") == 1
    assert ndjson_objects(body) == [{"doc": {"a": 1}}]


def test_csv_quotes_a_value_containing_a_lone_carriage_return() -> None:
    serializer = CsvSerializer([col("id", "integer"), col("note", "text")], "postgresql", CsvOptions(header=False))
    body = serializer.encode([(1, "old mac\rline"), (2, "x")])
    assert body == b'1,"old mac\rline"\n2,x\n'
    assert list(csv.reader(io.StringIO(body.decode(), newline=""))) == [["1", "old mac\rline"], ["2", "x"]]


def test_csv_tells_an_empty_string_from_null() -> None:
    serializer = CsvSerializer([col("a", "text"), col("b", "text")], "postgresql", CsvOptions(header=False))
    assert serializer.encode([("", None), (None, ""), (None, None), ("", "")]) == b'"",\n,""\n,\n"",""\n'


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('say "hi"', '"say ""hi"""'),
        ("a,b", '"a,b"'),
        ("a\nb", '"a\nb"'),
        ("a\r\nb", '"a\r\nb"'),
        ("=1+2", "=1+2"),
        ("Grüße ✓", "Grüße ✓"),
        ("C:\\x\\", "C:\\x\\"),
        ("\\.", "\\."),  # COPY's end marker needs quotes only alone on a line (see the one-column test)
        ("\\.x", "\\.x"),
        (" padded ", " padded "),
    ],
)
def test_csv_quotes_alike_in_rows_with_and_without_an_empty_string(text: str, field: str) -> None:
    # A row holding "" (or the null text) is written by hand rather than by csv.writer.
    serializer = CsvSerializer([col("a", "text"), col("b", "text")], "postgresql", CsvOptions(header=False))
    assert serializer.encode([(text, "x"), (text, "")]) == f'{field},x\n{field},""\n'.encode()


def test_csv_writes_a_lone_null_as_quoted_empty_so_no_row_reads_as_a_blank_line() -> None:
    # A deliberate choice: readers (csv, pandas) skip blank lines, which would lose the row.
    serializer = CsvSerializer([col("note", "text")], "postgresql", CsvOptions(header=False))
    assert serializer.encode([("",), (None,)]) == b'""\n""\n'


# kind, scale, value as PostgreSQL hands it back, the same value as SQLite hands it back, CSV field, NDJSON value
DIALECT_PAIRS: list[Any] = [
    ("decimal", 2, Decimal("12.50"), 12.5, "12.50", "12.50"),
    ("decimal", 2, Decimal("12.00"), 12, "12.00", "12.00"),
    ("decimal", 2, Decimal("0.30"), 0.1 + 0.2, "0.30", "0.30"),
    ("decimal", 2, Decimal("-1234567890123.45"), -1234567890123.45, "-1234567890123.45", "-1234567890123.45"),
    ("decimal", 0, Decimal("7"), 7, "7", "7"),
    ("timestamptz", None, datetime(2024, 1, 1, 10, tzinfo=UTC), "2024-01-01 10:00:00.000000",
     "2024-01-01T10:00:00+00:00", '"2024-01-01T10:00:00+00:00"'),
    ("timestamptz", None, datetime(2024, 1, 1, 10, 0, 0, 5, tzinfo=UTC), "2024-01-01 10:00:00.000005",
     "2024-01-01T10:00:00.000005+00:00", '"2024-01-01T10:00:00.000005+00:00"'),
    ("date", None, date(2024, 2, 29), "2024-02-29", "2024-02-29", '"2024-02-29"'),
    ("boolean", None, False, 0, "false", "false"),
    ("boolean", None, True, 1, "true", "true"),
    pytest.param(
        "decimal", 2, Decimal("1000000000000000000000000000000.00"), 1e30,
        "1000000000000000000000000000000.00", "1000000000000000000000000000000.00",
        id="decimal-beyond-28-digits",
    ),
    pytest.param(
        "timestamptz", None, datetime(2024, 1, 1, 10, tzinfo=UTC), "2024-01-01 12:00:00+02:00",
        "2024-01-01T10:00:00+00:00", '"2024-01-01T10:00:00+00:00"',
        id="timestamptz-text-with-offset",
    ),
]


@pytest.mark.parametrize(("kind", "scale", "pg_value", "sqlite_value", "csv_field", "json_value"), DIALECT_PAIRS)
def test_sqlite_values_render_exactly_as_postgresql_values(kind: str, scale: int | None, pg_value: Any,
                                                           sqlite_value: Any, csv_field: str,
                                                           json_value: str) -> None:
    column = [col("v", kind, scale)]
    for dialect, value in (("postgresql", pg_value), ("sqlite", sqlite_value)):
        csv_body = CsvSerializer(column, dialect, CsvOptions(header=False)).encode([(value,)])
        ndjson_body = NdjsonSerializer(column, dialect).encode([(value,)])
        assert (dialect, csv_body) == (dialect, f"{csv_field}\n".encode())
        assert (dialect, ndjson_body) == (dialect, f'{{"v":{json_value}}}\n'.encode())


def test_csv_without_header_starts_with_the_first_row() -> None:
    serializer = CsvSerializer([col("id", "integer")], "postgresql", CsvOptions(header=False))
    assert stream(serializer, [[(1,), (2,)]]) == b"1\n2\n"


@pytest.mark.parametrize(
    ("delimiter", "expected"),
    [
        (";", b'id;note\n1;"a;b"\n2;a,b\n3;x\ty\n4;""\n'),
        ("\t", b'id\tnote\n1\ta;b\n2\ta,b\n3\t"x\ty"\n4\t""\n'),
        (",", b'id,note\n1,a;b\n2,"a,b"\n3,x\ty\n4,""\n'),
    ],
)
def test_csv_quotes_values_containing_the_chosen_delimiter(delimiter: str, expected: bytes) -> None:
    serializer = CsvSerializer([col("id", "integer"), col("note", "text")], "postgresql",
                               CsvOptions(delimiter=delimiter))
    assert stream(serializer, [[(1, "a;b"), (2, "a,b"), (3, "x\ty"), (4, "")]]) == expected


def test_csv_writes_null_as_the_null_text_and_quotes_text_equal_to_it() -> None:
    serializer = CsvSerializer([col("id", "integer"), col("note", "text")], "postgresql",
                               CsvOptions(header=False, null="NULL"))
    rows = [(1, None), (2, "NULL"), (3, ""), (None, "null"), (5, "\\.")]
    assert serializer.encode(rows) == b'1,NULL\n2,"NULL"\n3,\nNULL,null\n5,\\.\n'


def test_csv_quotes_the_copy_end_marker_alone_on_a_line() -> None:
    # `\.` alone on a line ends COPY data; PostgreSQL quotes it there, and so does the generic path.
    serializer = CsvSerializer([col("note", "text")], "postgresql", CsvOptions(header=False, null="NULL"))
    assert serializer.encode([("\\.",), ("\\.x",), (None,)]) == b'"\\."\n\\.x\nNULL\n'


def test_csv_quotes_an_integer_equal_to_the_null_text() -> None:
    serializer = CsvSerializer([col("id", "integer"), col("qty", "integer")], "postgresql",
                               CsvOptions(header=False, null="0"))
    assert serializer.encode([(1, 0), (2, None), (3, 10)]) == b'1,"0"\n2,0\n3,10\n'


@pytest.mark.parametrize("header", [True, False])
def test_csv_bom_comes_once_at_the_very_start(header: bool) -> None:
    serializer = CsvSerializer([col("note", "text")], "postgresql", CsvOptions(header=header, bom=True))
    body = stream(serializer, batched([("Grüße",), ("✓",), ("x",)], 1))
    expected_header = b"note\n" if header else b""
    assert body == BOM + expected_header + "Grüße\n✓\nx\n".encode()
    assert body.count(BOM) == 1


def parse_bool(text: str) -> bool:
    assert text in ("true", "false")
    return text == "true"


def unchanged(value: Any) -> Any:
    return value


# how each awkward column reads back: from its CSV field, and from its (already decoded) NDJSON value
CSV_READ_BACK: list[Callable[[str], Any]] = [int, str, Decimal, float, datetime.fromisoformat, parse_bool]
NDJSON_READ_BACK: list[Callable[[Any], Any]] = [unchanged, unchanged, unchanged, float, datetime.fromisoformat,
                                                unchanged]


CSV_OPTION_SETS: list[Mapping[str, str]] = [
    {},
    {"delimiter": ";"},
    {"delimiter": "\t", "header": "false"},
    {"null": "NULL", "bom": "true"},
]


@pytest.mark.parametrize("size", BATCH_SIZES)
@pytest.mark.parametrize("params", CSV_OPTION_SETS, ids=lambda p: ",".join(f"{k}={v!r}" for k, v in p.items()))
def test_csv_stream_is_the_same_whatever_the_batch_size(params: Mapping[str, str], size: int) -> None:
    options = format_options("csv", params)
    whole = stream(create_serializer(AWKWARD_COLUMNS, "postgresql", options), [AWKWARD_ROWS])
    batches = stream(create_serializer(AWKWARD_COLUMNS, "postgresql", options), batched(AWKWARD_ROWS, size))
    assert batches == whole
    if not params:
        assert batches == AWKWARD_CSV

    assert options is not None
    text = batches.decode().removeprefix("\ufeff")
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=options.delimiter))
    if options.header:
        assert records.pop(0) == [c.name for c in AWKWARD_COLUMNS]
    read = [
        [parse(field) if field != options.null else None for parse, field in zip(CSV_READ_BACK, record, strict=True)]
        for record in records
    ]
    # With the default null text a reader sees NULL and "" alike; the golden bytes show they differ.
    assert read == [[None if v == "" and not options.null else v for v in row] for row in AWKWARD_ROWS]


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_ndjson_stream_is_the_same_whatever_the_batch_size(size: int) -> None:
    body = stream(NdjsonSerializer(AWKWARD_COLUMNS, "postgresql"), batched(AWKWARD_ROWS, size))
    assert body == AWKWARD_NDJSON

    objects = ndjson_objects(body)
    assert [list(o) for o in objects] == [[c.name for c in AWKWARD_COLUMNS]] * N
    read = [
        [None if v is None else parse(v) for parse, v in zip(NDJSON_READ_BACK, o.values(), strict=True)]
        for o in objects
    ]
    assert read == [list(row) for row in AWKWARD_ROWS]


def test_empty_batches_add_nothing() -> None:
    for serializer in (CsvSerializer(AWKWARD_COLUMNS, "postgresql", CsvOptions()),
                       NdjsonSerializer(AWKWARD_COLUMNS, "postgresql")):
        assert serializer.encode([]) == b""
        assert serializer.footer() == b""


def test_csv_options_default_to_header_comma_empty_null_and_no_bom() -> None:
    assert csv_options({}) == CsvOptions(header=True, delimiter=",", null="", bom=False)


def test_csv_options_read_every_parameter() -> None:
    params = {"header": "false", "delimiter": "\t", "null": "NULL", "bom": "true", "limit": "5"}
    assert csv_options(params) == CsvOptions(header=False, delimiter="\t", null="NULL", bom=True)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"delimiter": ";;"}, "delimiter"),
        ({"delimiter": ""}, "delimiter"),
        ({"delimiter": '"'}, "delimiter"),
        ({"delimiter": "\n"}, "delimiter"),
        ({"delimiter": "\r"}, "delimiter"),
        ({"header": "maybe"}, "header"),
        ({"header": "True"}, "header"),
        ({"bom": "1"}, "bom"),
        ({"null": "a,b"}, "null"),
        ({"delimiter": ";", "null": "a;b"}, "null"),
        ({"null": '"'}, "null"),
        ({"null": "\n"}, "null"),
    ],
)
def test_csv_options_reject_bad_values_naming_the_parameter(params: dict[str, str], parameter: str) -> None:
    with pytest.raises(InvalidParameter) as raised:
        csv_options(params)
    assert raised.value.parameter == parameter


@pytest.mark.parametrize("parameter", ["header", "delimiter", "null", "bom"])
def test_ndjson_rejects_each_csv_option(parameter: str) -> None:
    with pytest.raises(InvalidParameter) as raised:
        reject_csv_options({parameter: "x", "limit": "5"})
    assert raised.value.parameter == parameter
    with pytest.raises(InvalidParameter):
        format_options("ndjson", {parameter: "x"})


def test_ndjson_accepts_query_parameters_that_are_not_csv_options() -> None:
    reject_csv_options({"columns": "id", "limit": "5", "order": "-id", "after": "3"})


def test_create_serializer_builds_csv_with_its_options_and_ndjson() -> None:
    csv_serializer = create_serializer([col("id", "integer")], "postgresql", format_options("csv", {"header": "false"}))
    ndjson_serializer = create_serializer([col("id", "integer")], "postgresql", format_options("ndjson", {}))
    assert (csv_serializer.media_type, stream(csv_serializer, [[(1,)]])) == ("text/csv; charset=utf-8", b"1\n")
    assert (ndjson_serializer.media_type, stream(ndjson_serializer, [[(1,)]])) == (
        "application/x-ndjson", b'{"id":1}\n')


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("orders.csv", ("orders", "csv")),
        ("orders.ndjson", ("orders", "ndjson")),
        ("orders.csv.gz", ("orders", "csv.gz")),
        ("orders.ndjson.gz", ("orders", "ndjson.gz")),
        ("orders.csv.zst", ("orders", "csv.zst")),
        ("orders.ndjson.zst", ("orders", "ndjson.zst")),
        ("a.b.csv", ("a.b", "csv")),
        ("a.b.ndjson.gz", ("a.b", "ndjson.gz")),
    ],
)
def test_split_filename_finds_dataset_and_format(filename: str, expected: tuple[str, str]) -> None:
    assert split_filename(filename) == expected
    assert FORMATS[expected[1]].name == expected[1]


@pytest.mark.parametrize("filename", ["orders", "orders.xls", "orders.gz", "orders.csv.zip",
                                      "orders.CSV", "orders.csv.gz.gz", ".csv", "orders.parquet.gz"])
def test_split_filename_rejects_unknown_formats(filename: str) -> None:
    with pytest.raises(UnknownFormat) as raised:
        split_filename(filename)
    assert raised.value.parameter == "format"
