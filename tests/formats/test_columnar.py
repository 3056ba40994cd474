"""Parquet and Arrow IPC exports read back exactly, with exact types, by pyarrow, pandas, DuckDB and polars."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pandas
import polars
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from exporter.config import Settings
from tests.conftest import Database
from tests.export.test_copy import fill_all_types
from tests.export.test_exports import stored_orders
from tests.helpers import export_log, wait_for
from tests.servers import ChunkedReader, ServerThread

Serve = Callable[[Settings], ServerThread]

ORDER_TYPES = {
    "id": pa.int64(), "customer_id": pa.int32(), "status": pa.string(), "amount": pa.decimal128(12, 2),
    "currency": pa.string(), "created_at": pa.timestamp("us", tz="UTC"), "shipped_at": pa.timestamp("us", tz="UTC"),
    "country": pa.string(), "note": pa.string(), "is_gift": pa.bool_(),
}
AWKWARD_ORDERS = [
    "(900001, 1, 'paid', 9999999999.99, 'EUR', '2024-02-29 23:59:59.999999+00', NULL, 'DE', "
    "'line1\nline2\r\n\"quoted\", Grüße ✓', true)",
    "(900002, -2147483648, '', -9999999999.99, 'x,y', '1970-01-01 00:00:00+00', '2000-01-01 00:00:00.5+00', '', "
    "'', false)",
    "(900003, 2147483647, '=1+2', -0.01, '€', '0001-01-01 00:00:00+00', '9999-12-31 23:59:59+00', 'ÅÄÖ', NULL, "
    "false)",
]


def seed_awkward_orders(db: Database, rows: int) -> None:
    db.seed_demo(rows)
    db.execute(f"INSERT INTO orders VALUES {', '.join(AWKWARD_ORDERS)}")


def read_back(fmt: str, body: bytes, tmp_path: Path) -> dict[str, list[list[Any]]]:
    """The rows as each reader sees them, as lists of Python values (pandas' NaN/NaT as None)."""
    path = tmp_path / f"export.{fmt}"
    path.write_bytes(body)
    if fmt == "parquet":
        table = pq.read_table(path)
        frame = pandas.read_parquet(path)
        relation = duckdb.sql(f"SELECT * FROM read_parquet('{path}')")
        other = ("duckdb", [list(row) for row in relation.fetchall()])
    else:
        table = pyarrow.ipc.open_stream(body).read_all()
        frame = table.to_pandas()
        other = ("polars", [list(row) for row in polars.read_ipc_stream(io.BytesIO(body)).rows()])
    pandas_rows = [[None if _missing(v) else v for v in row] for row in frame.astype(object).values.tolist()]
    return {"pyarrow": [list(row.values()) for row in table.to_pylist()], "pandas": pandas_rows, other[0]: other[1]}


def _missing(value: Any) -> bool:
    return value is None or value is pandas.NaT or (isinstance(value, float) and math.isnan(value))


def _utc(value: Any) -> Any:
    if isinstance(value, pandas.Timestamp):
        value = value.to_pydatetime()
    return value.astimezone(UTC) if isinstance(value, datetime) else value


@pytest.fixture(params=["adbc", "generic"])
def path(request: pytest.FixtureRequest) -> str:
    """On PostgreSQL, Parquet and Arrow come through ADBC unless EXPORTER_ARROW_FAST_PATH is off; SQLite's are
    always generic."""
    return str(request.param)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_parquet_and_arrow_read_back_every_stored_value_with_exact_types(
    db: Database, serve: Serve, tmp_path: Path, fmt: str, path: str
) -> None:
    seed_awkward_orders(db, 1500)
    db.execute("DELETE FROM export_log")
    server = serve(db.settings(batch_rows=128, parquet_row_group_rows=500, arrow_fast_path=path == "adbc"))
    response = httpx.get(f"{server.url}/exports/orders.{fmt}")
    assert response.status_code == 200, response.text
    entry = wait_for(lambda: export_log(db, "orders"))[0]
    assert (entry["path"], entry["rows"]) == ("generic" if db.dialect == "sqlite" else path, 1503)
    expected = [list(row.values()) for row in stored_orders(db)]
    assert len(expected) == 1503
    for reader, rows in read_back(fmt, response.content, tmp_path).items():
        assert [[_utc(v) for v in row] for row in rows] == expected, reader
    if fmt == "parquet":
        metadata = pq.ParquetFile(io.BytesIO(response.content)).metadata
        assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [500, 500, 500, 3]
        assert metadata.row_group(0).column(0).compression == "ZSTD"
        schema = pq.read_schema(io.BytesIO(response.content))
    else:
        schema = pyarrow.ipc.open_stream(response.content).schema
    # SQLite's INTEGER holds 64 bits whatever the declared type, so every integer is int64 there.
    assert {field.name: field.type for field in schema} == {
        **ORDER_TYPES, **({"customer_id": pa.int64()} if db.dialect == "sqlite" else {})}


def test_arrow_stream_batches_can_be_read_as_they_arrive(db: Database, serve: Serve, path: str) -> None:
    db.seed_demo(300_000)
    server = serve(db.settings(batch_rows=1000, arrow_fast_path=path == "adbc"))
    with ChunkedReader(server.url, "/exports/orders.arrow") as reader:
        first = reader.next_chunk()
        assert first
        # The first chunk alone is a readable schema and batch, long before the last one is sent.
        stream = pyarrow.ipc.open_stream(first)
        rows = stream.read_next_batch().num_rows
        assert 0 < rows < 300_000
        assert rows == 1000 or (path == "adbc" and db.dialect == "postgresql")


@pytest.fixture
def all_types(pg: Database) -> Database:
    return fill_all_types(pg)


def database_values(pg: Database) -> list[list[Any]]:
    """all_types as the database holds it, in the types the typed formats use (see docs/formats.md)."""
    rows = pg.execute(
        "SELECT id, t, i, b, s, n::text, n2, r::text, d, bo, dt::text, ts, tstz, tm, ttz::text, iv::text, u::text,"
        " j::text, jb::text, arr::text, tarr::text, by, ch, vc FROM all_types ORDER BY id")
    infinite = (datetime.max, datetime.min)
    values = []
    for row in rows:
        values.append([
            None if v is None else
            float(v) if i == 7 else
            (None if v.endswith("infinity") else date.fromisoformat(v)) if i == 10 else
            None if isinstance(v, datetime) and v.replace(tzinfo=None) in infinite else
            v.replace(tzinfo=UTC) if i == 12 else v
            for i, v in enumerate(row)
        ])
    return values


def same(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_awkward_postgresql_values_read_back_as_the_database_holds_them(
    all_types: Database, serve: Serve, fmt: str, path: str
) -> None:
    server = serve(all_types.settings(datasets={"all_types": {"table": "all_types", "key": "id"}},
                                      arrow_fast_path=path == "adbc"))
    body = httpx.get(f"{server.url}/exports/all_types.{fmt}").content
    table = pq.read_table(io.BytesIO(body)) if fmt == "parquet" else pyarrow.ipc.open_stream(body).read_all()
    types = {field.name: str(field.type) for field in table.schema}
    assert types == {
        "id": "int64", "t": "string", "i": "int32", "b": "int64", "s": "int32", "n": "string",
        "n2": "decimal128(12, 2)", "r": "double", "d": "double", "bo": "bool", "dt": "date32[day]",
        "ts": "timestamp[us]", "tstz": "timestamp[us, tz=UTC]", "tm": "time64[us]", "ttz": "string",
        "iv": "string", "u": "string", "j": "string", "jb": "string", "arr": "string", "tarr": "string",
        "by": "binary", "ch": "string", "vc": "string",
    }
    exported = [list(row.values()) for row in table.to_pylist()]
    expected = database_values(all_types)
    assert len(exported) == len(expected) == 306
    for got, want in zip(exported, expected, strict=True):
        assert all(same(g, w) for g, w in zip(got, want, strict=True)), (got, want)
    assert exported[1][6] == Decimal("-0.01") and exported[1][10] is None and exported[1][12] is None
