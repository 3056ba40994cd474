"""The format registry and the new serializers as pure stages: golden values, sweeps over batch sizes."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq
import pytest

from exporter.formats import FORMATS, FormatDefaults, Serializer, create_serializer, format_options, media_type
from exporter.formats.xlsx import column_letters
from exporter.sources.datasets import Column


def col(name: str, kind: str, **extra: Any) -> Column:
    return Column(name, kind, kind, nullable=True, **extra)


def body(serializer: Serializer, batches: Sequence[Sequence[Sequence[Any]]]) -> bytes:
    return serializer.header() + b"".join(serializer.encode(batch) for batch in batches) + serializer.footer()


def test_every_format_has_a_media_type_and_its_options_build_a_serializer() -> None:
    assert set(FORMATS) == {"csv", "ndjson", "csv.gz", "ndjson.gz", "csv.zst", "ndjson.zst", "parquet", "arrow",
                            "xlsx"}
    assert FORMATS["parquet"].media_type == "application/vnd.apache.parquet"
    assert FORMATS["arrow"].media_type == "application/vnd.apache.arrow.stream"
    assert FORMATS["csv.zst"].media_type == "application/zstd"
    assert [name for name, fmt in FORMATS.items() if fmt.negotiates_encoding] == ["csv", "ndjson"]
    for name, fmt in FORMATS.items():
        options = format_options(name, {})
        assert options.serialization == fmt.serialization
        assert create_serializer([col("id", "integer")], "sqlite", options).media_type == media_type(options)


@pytest.mark.parametrize("batch_rows", [1, 7, 10, 11, 500])
def test_parquet_row_groups_hold_exactly_the_configured_rows_whatever_the_batches(batch_rows: int) -> None:
    rows = [(i, f"r{i}") for i in range(95)]
    batches = [rows[i:i + batch_rows] for i in range(0, len(rows), batch_rows)]
    options = format_options("parquet", {}, FormatDefaults(parquet_row_group_rows=10))
    data = body(create_serializer([col("id", "integer"), col("t", "text")], "sqlite", options), batches)
    file = pq.ParquetFile(io.BytesIO(data))
    assert [file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)] == [10] * 9 + [5]
    assert file.read().to_pylist() == [{"id": i, "t": t} for i, t in rows]


def test_csv_formula_guard_quotes_text_values_of_untyped_columns_but_never_numbers() -> None:
    options = format_options("csv", {"formula_guard": "true"})
    serializer = create_serializer([col("v", "other"), col("n", "integer")], "sqlite", options)
    assert body(serializer, [[(-5, -5), ("-5", 1), ("=A1", 2), (None, 3), ("ok", 4)]]) == (
        b"v,n\n-5,-5\n'-5,1\n'=A1,2\n,3\nok,4\n")


@pytest.mark.parametrize(("index", "letters"), [(0, "A"), (25, "Z"), (26, "AA"), (701, "ZZ"), (702, "AAA")])
def test_xlsx_column_letters(index: int, letters: str) -> None:
    assert column_letters(index) == letters


def test_xlsx_text_keeps_markup_control_characters_and_escape_lookalikes_as_text() -> None:
    serializer = create_serializer([col("t", "text")], "postgresql", format_options("xlsx", {}))
    data = body(serializer, [[("<b>&amp;</b>",), ("a\rb\x01c",), ("_x0041_",)]])
    sheet = zipfile.ZipFile(io.BytesIO(data)).read("xl/worksheets/sheet1.xml").decode()
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in sheet
    assert "a&#13;b_x0001_c" in sheet
    assert "_x005F_x0041_" in sheet
