"""Excel (XLSX): one sheet, a bold frozen header row and typed cells, written as a zip stream while the rows arrive.

The sheet's XML is written by hand, row batch by row batch, into a zip entry with a data descriptor (no seeking
back), so nothing is spooled: each batch leaves as soon as it is deflated. Cell values follow the kinds:
numbers are numbers where Excel holds them exactly (at most 15 significant digits), dates and timestamps are
date cells (UTC), booleans are booleans, and the rest is text, inline, never a formula.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, ClassVar

from exporter.formats.arrow import ChunkSink
from exporter.formats.values import any_text, float_text, normalizer, sqlite_timestamp, text_column, timestamp_text
from exporter.sources.datasets import Column

MAX_SHEET_ROWS = 1_048_576  # Excel's limit per sheet, the header row included
MAX_DATA_ROWS = MAX_SHEET_ROWS - 1
EXACT_DIGITS = 15  # what an Excel number (a double, shown to 15 digits) keeps exactly
ZIP_LEVEL = 1  # deflate level: measured several times faster than the default 6 for a file ~10% larger
EPOCH = datetime(1899, 12, 30)  # Excel's day 0 in the 1900 date system
FIRST_DATE = date(1900, 3, 1)  # before it Excel's serial numbers are off by its 1900 leap-year bug
STYLE_DATE, STYLE_TIMESTAMP, STYLE_HEADER, STYLE_TIME = 1, 2, 3, 4

# Characters XML 1.0 cannot hold are written as OOXML's _xHHHH_ escapes (ECMA-376 Part 1, §22.9.2.19), and a
# literal "_xHHHH_" in the text has its underscore escaped so it reads back as written. CR is a character
# reference, since an XML parser turns a literal CRLF into LF (XML 1.0 §2.11).
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|_(?=x[0-9A-Fa-f]{4}_)")
_XML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})

Cell = Callable[[str, Any], str]  # (cell reference, value) → the <c> element


def _escape(text: str) -> str:
    text = text.translate(_XML)
    if _UNSAFE.search(text):
        text = _UNSAFE.sub(lambda m: f"_x{ord(m.group()):04X}_", text)
    return text


def _text_cell(ref: str, value: Any) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{_escape(str(value))}</t></is></c>'


def _number_cell(ref: str, value: Any) -> str:
    return f'<c r="{ref}"><v>{value}</v></c>'


def _integer_cell(ref: str, value: Any) -> str:
    if -(10**EXACT_DIGITS) < value < 10**EXACT_DIGITS:
        return f'<c r="{ref}"><v>{value}</v></c>'
    return _text_cell(ref, value)  # an id of 16+ digits would lose its last digits as a number


def _decimal_cell(ref: str, value: Decimal) -> str:
    if value.is_finite() and len(value.as_tuple().digits) <= EXACT_DIGITS:
        return f'<c r="{ref}"><v>{value:f}</v></c>'
    return _text_cell(ref, format(value, "f") if value.is_finite() else str(value))  # NaN, Infinity as text


def _float_cell(ref: str, value: float) -> str:
    if math.isfinite(value):
        return f'<c r="{ref}"><v>{value!r}</v></c>'
    return _text_cell(ref, float_text(value))


def _boolean_cell(ref: str, value: Any) -> str:
    return f'<c r="{ref}" t="b"><v>{1 if value else 0}</v></c>'


def _timestamp_cell(ref: str, value: datetime) -> str:
    """A date cell in UTC; as the CSV's text where Excel has no date: before 1900-03-01, and ±infinity (which
    asyncpg hands back as naive datetime.max and .min)."""
    naive = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if naive.date() < FIRST_DATE or (value.tzinfo is None and value in (datetime.max, datetime.min)):
        return _text_cell(ref, timestamp_text(value))
    serial = (naive - EPOCH).total_seconds() / 86400
    return f'<c r="{ref}" s="{STYLE_TIMESTAMP}"><v>{serial!r}</v></c>'


def _date_cell(ref: str, value: Any) -> str:
    if isinstance(value, str):  # PostgreSQL's text of a date
        if value.endswith("infinity"):
            return _text_cell(ref, value)
        value = date.fromisoformat(value)
    if value < FIRST_DATE:
        return _text_cell(ref, value.isoformat())
    return f'<c r="{ref}" s="{STYLE_DATE}"><v>{(value - EPOCH.date()).days}</v></c>'


def _time_cell(ref: str, value: time) -> str:
    seconds = value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    return f'<c r="{ref}" s="{STYLE_TIME}"><v>{seconds / 86400!r}</v></c>'


def _sqlite_timestamp_cell(ref: str, value: Any) -> str:
    return _timestamp_cell(ref, sqlite_timestamp(value))


def _any_cell(ref: str, value: Any) -> str:
    """A value of an untyped column (a SQLite query's), by its Python type."""
    if isinstance(value, bool):
        return _boolean_cell(ref, value)
    if isinstance(value, int):
        return _integer_cell(ref, value)
    if isinstance(value, float):
        return _float_cell(ref, value)
    if isinstance(value, Decimal):
        return _decimal_cell(ref, value)
    if isinstance(value, datetime):
        return _timestamp_cell(ref, value)
    if isinstance(value, date):
        return _date_cell(ref, value)
    return _text_cell(ref, any_text(value))


def _cell_writer(col: Column, dialect: str) -> tuple[Cell, Callable[[Any], Any] | None]:
    """How one value of the column becomes a cell, and what turns the database's value into the one it takes."""
    kind = col.kind
    if col.as_text and kind not in ("date", "float"):
        return _text_cell, None
    if kind == "integer":
        return _integer_cell, None
    if kind == "decimal":
        return _decimal_cell, normalizer(col, dialect)
    if kind == "float":
        return _float_cell, float if col.as_text else None  # real comes as PostgreSQL's text
    if kind == "boolean":
        return _boolean_cell, None
    if kind == "date":
        return _date_cell, normalizer(col, dialect)
    if kind == "time":
        return _time_cell, None
    if kind in ("timestamp", "timestamptz"):
        return (_sqlite_timestamp_cell if dialect == "sqlite" else _timestamp_cell), None
    if kind == "other":
        return _any_cell, None
    return _text_cell, None


def column_letters(index: int) -> str:
    """0 → A, 25 → Z, 26 → AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


@dataclass(frozen=True)
class XlsxOptions:
    serialization: ClassVar[str] = "xlsx"


class XlsxSerializer:
    """The workbook as a zip stream: the fixed parts first, then the sheet's rows batch by batch, then the end of
    the sheet and the zip's central directory. A file cut short has no central directory; readers refuse it."""

    media_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

    def __init__(self, columns: Sequence[Column], dialect: str) -> None:
        self._names = [c.name for c in columns]
        self._letters = [column_letters(i) for i in range(len(columns))]
        writers = [_cell_writer(col, dialect) for col in columns]
        self._cells = [cell for cell, _ in writers]
        self._prepare = [prepare for _, prepare in writers]
        self._texts = [text_column(col, dialect) if cell is _text_cell else None
                       for col, (cell, _) in zip(columns, writers, strict=True)]
        self._row = 1
        self._sink = ChunkSink()
        self._zip = zipfile.ZipFile(self._sink, "w", zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL)
        self._sheet: Any = None

    def header(self) -> bytes:
        for name, content in _fixed_parts().items():
            self._zip.writestr(_entry(name), content)
        self._sheet = self._zip.open(_entry("xl/worksheets/sheet1.xml"), "w", force_zip64=True)
        head = "".join(f'<c r="{letter}1" s="{STYLE_HEADER}" t="inlineStr"><is><t>{_escape(name)}</t></is></c>'
                       for letter, name in zip(self._letters, self._names, strict=True))
        self._sheet.write((
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            '<sheetViews><sheetView workbookViewId="0">'
            '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
            '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/></sheetView></sheetViews>'
            f'<sheetData><row r="1">{head}</row>'
        ).encode())
        return self._sink.take()

    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes:
        if not batch:
            return b""
        first = self._row + 1
        numbers = range(first, first + len(batch))
        cells_by_column = []
        for column, letter, cell, prepare, text in zip(zip(*batch, strict=True), self._letters, self._cells,
                                                       self._prepare, self._texts, strict=True):
            values: Sequence[Any] = column
            if text is not None:
                values = text(values)
            if prepare is not None:
                values = [None if v is None else prepare(v) for v in values]
            cells_by_column.append(["" if v is None else cell(f"{letter}{n}", v)
                                    for n, v in zip(numbers, values, strict=True)])
        rows = [f'<row r="{n}">{"".join(cells)}</row>'
                for n, cells in zip(numbers, zip(*cells_by_column, strict=True), strict=True)]
        self._row += len(batch)
        self._sheet.write("".join(rows).encode())
        return self._sink.take()

    def footer(self) -> bytes:
        self._sheet.write(b"</sheetData></worksheet>")
        self._sheet.close()
        self._zip.close()
        return self._sink.take()

    def close(self) -> None:
        """After an export cut short: finish the zip into the sink and drop those bytes (none are sent), so the
        zip is not left open for the garbage collector, whose ZipFile.__del__ would raise."""
        if self._sheet is not None and not self._sheet.closed:
            self._sheet.close()
        self._zip.close()
        self._sink.take()


def _entry(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed date, so the same rows give the same bytes (a job's result and the download)."""
    entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry._compresslevel = ZIP_LEVEL  # type: ignore[attr-defined]  # ZipFile.open(entry) reads it (3.11; 3.13: compress_level)
    return entry


def _fixed_parts() -> dict[str, str]:
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rels = "http://schemas.openxmlformats.org/package/2006/relationships"
    office = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    declaration = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    return {
        "[Content_Types].xml": declaration + (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            '<Override PartName="/xl/styles.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
            '</Types>'),
        "_rels/.rels": declaration + (
            f'<Relationships xmlns="{rels}">'
            f'<Relationship Id="rId1" Type="{office}/officeDocument" Target="xl/workbook.xml"/>'
            '</Relationships>'),
        "xl/workbook.xml": declaration + (
            f'<workbook xmlns="{main}" xmlns:r="{office}">'
            '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": declaration + (
            f'<Relationships xmlns="{rels}">'
            f'<Relationship Id="rId1" Type="{office}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{office}/styles" Target="styles.xml"/>'
            '</Relationships>'),
        "xl/styles.xml": declaration + (
            f'<styleSheet xmlns="{main}">'
            '<numFmts count="3"><numFmt numFmtId="164" formatCode="yyyy\\-mm\\-dd"/>'
            '<numFmt numFmtId="165" formatCode="yyyy\\-mm\\-dd\\ hh:mm:ss"/>'
            '<numFmt numFmtId="166" formatCode="hh:mm:ss"/></numFmts>'
            '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
            '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
            '<fills count="2"><fill><patternFill patternType="none"/></fill>'
            '<fill><patternFill patternType="gray125"/></fill></fills>'
            '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
            '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
            '<cellXfs count="5"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
            '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
            '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
            '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
            '<xf numFmtId="166" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>'
            '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
            '</styleSheet>'),
    }
