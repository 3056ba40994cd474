"""XLSX exports: typed cells, a bold frozen header, LibreOffice reads them back, and the row limit."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openpyxl

from exporter.config import Settings
from tests.conftest import Database
from tests.export.test_exports import stored_orders
from tests.formats.test_columnar import seed_awkward_orders
from tests.servers import ServerThread

Serve = Callable[[Settings], ServerThread]


def expected_cells(row: dict[str, Any]) -> list[Any]:
    """A stored order as openpyxl reads its cells: numbers, naive UTC datetimes to the millisecond, booleans, text."""
    cells = []
    for value in row.values():
        if isinstance(value, Decimal):
            value = float(value)
        elif isinstance(value, datetime) and value.year < 1901:  # no Excel date: the CSV's text
            value = value.isoformat()
        elif isinstance(value, datetime):  # an Excel date cell keeps the millisecond
            value = value.astimezone(UTC).replace(tzinfo=None)
            value = value.replace(microsecond=0) + timedelta(milliseconds=round(value.microsecond / 1000))
        cells.append(value)
    return cells


def test_xlsx_export_has_a_bold_frozen_header_and_typed_cells(db: Database, serve: Serve) -> None:
    seed_awkward_orders(db, 300)
    server = serve(db.settings(batch_rows=64))
    response = httpx.get(f"{server.url}/exports/orders.xlsx")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
    assert sheet is not None
    assert sheet.freeze_panes == "A2"
    header = [cell.value for cell in sheet[1]]
    assert header == list(stored_orders(db)[0])
    assert all(cell.font.bold for cell in sheet[1])
    rows = [list(row) for row in sheet.iter_rows(min_row=2, values_only=True)]
    assert rows == [expected_cells(row) for row in stored_orders(db)]
    assert sheet["F2"].number_format == "yyyy\\-mm\\-dd\\ hh:mm:ss"
    assert sheet.cell(row=2, column=10).data_type == "b"


def libreoffice_csv(xlsx: bytes, tmp_path: Path) -> list[list[str]]:
    """The workbook converted to CSV (UTF-8) by LibreOffice headless, parsed."""
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    assert soffice, "LibreOffice (Debian's libreoffice-calc) is required; make test installs it"
    source = tmp_path / "export.xlsx"
    source.write_bytes(xlsx)
    subprocess.run([soffice, f"-env:UserInstallation=file://{tmp_path}/profile", "--headless", "--convert-to",
                    "csv:Text - txt - csv (StarCalc):44,34,76,1", "--outdir", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=120)
    with (tmp_path / "export.csv").open(encoding="utf-8", newline="") as file:
        return list(csv.reader(file))


def as_shown(value: Any) -> str:
    """A stored order's value as LibreOffice shows its cell: General numbers, the date format, TRUE/FALSE."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime) and value.year < 1901:
        return value.isoformat()
    if isinstance(value, datetime):  # held to the millisecond, shown to the second (cut, not rounded)
        value = value.astimezone(UTC)
        value = value.replace(microsecond=0) + timedelta(milliseconds=round(value.microsecond / 1000))
        return value.strftime("%Y-%m-%d %H:%M:%S")
    # LibreOffice keeps a cell's line breaks as LF: a CRLF in the cell (the XLSX holds it, see the test above)
    # comes out of its CSV as LF.
    return str(value).replace("\r\n", "\n")


def test_libreoffice_opens_the_xlsx_and_converts_it_back_to_the_exported_values(
    db: Database, serve: Serve, tmp_path: Path
) -> None:
    seed_awkward_orders(db, 200)
    server = serve(db.settings())
    rows = libreoffice_csv(httpx.get(f"{server.url}/exports/orders.xlsx").content, tmp_path)
    stored = stored_orders(db)
    assert rows[0] == list(stored[0])
    assert rows[1:] == [[as_shown(v) for v in row.values()] for row in stored]


def test_an_xlsx_export_beyond_the_sheet_limit_is_refused_before_the_first_byte(db: Database, serve: Serve) -> None:
    series = ("SELECT g AS id FROM generate_series(1, 1048576) AS s(g)" if db.dialect == "postgresql" else
              "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 1048576) SELECT g AS id FROM s")
    server = serve(db.settings(datasets={"many": {"sql": series, "key": "id"}}))
    refused = httpx.get(f"{server.url}/exports/many.xlsx")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "too_many_rows_for_xlsx"
    assert "1,048,576 rows" in error["message"] and ".csv" in error["message"]
    at_limit = httpx.get(f"{server.url}/exports/many.xlsx", params={"limit": "1048576"})
    assert at_limit.status_code == 400
    # The same filters are counted: limited to what a sheet holds, the export goes ahead.
    small = httpx.get(f"{server.url}/exports/many.xlsx", params={"limit": "3"})
    assert small.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(small.content)).active
    assert sheet is not None
    assert [row[0] for row in sheet.iter_rows(values_only=True)] == ["id", 1, 2, 3]
