"""The CSV reads back exactly with the readers analysts use: Python's csv, pandas and DuckDB."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
import pandas

from exporter.config import Settings
from tests.conftest import Database
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]


def test_pandas_and_duckdb_read_the_csv_as_pythons_csv_module_does(
    db: Database, serve: Serve, tmp_path: Path
) -> None:
    db.seed_demo(3000)
    server = serve(db.settings())
    path = tmp_path / "orders.csv"
    path.write_bytes(httpx.get(f"{server.url}/exports/orders.csv").content)
    # Python's csv reads the file back to the stored values (tests/export/test_exports.py); the other
    # readers must see the same text in every field, embedded line breaks and quotes included.
    with path.open(encoding="utf-8", newline="") as file:
        expected = list(csv.reader(file))
    header, rows = expected[0], expected[1:]

    frame = pandas.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    assert list(frame.columns) == header
    assert frame.values.tolist() == rows

    relation = duckdb.sql(f"SELECT * FROM read_csv('{path}', header = true, all_varchar = true)")
    assert relation.columns == header
    assert [["" if v is None else v for v in row] for row in relation.fetchall()] == rows
    assert any("\r\n" in field for row in rows for field in row)
