"""Arrow: each kind's Arrow type, row batches as record batches, and the Arrow IPC stream format.

The Parquet writer (parquet.py) uses the same types. Values that a type cannot hold are NULL, by a documented
choice: numeric NaN and ±Infinity, and ±infinity dates and timestamps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from exporter.formats.values import ColumnConvert, normalizer, sqlite_timestamp, text_column
from exporter.sources.datasets import Column

MAX_DECIMAL128_DIGITS = 38  # wider numerics are strings: DuckDB and pandas read no decimal256 as decimals
_PG_INT32 = frozenset({"integer", "smallint", "int4", "int2"})
_INFINITE = (datetime.max, datetime.min)  # how asyncpg hands back ±infinity timestamps (naive, also timestamptz)


def _finite_timestamps(values: Sequence[Any]) -> list[Any]:
    return [None if v is None or (v.tzinfo is None and v in _INFINITE) else v for v in values]


def _sqlite_timestamps(values: Sequence[Any]) -> list[Any]:
    return [None if v is None else sqlite_timestamp(v) for v in values]


def _dates(values: Sequence[Any]) -> list[Any]:
    """Dates from date values or their text (PostgreSQL's text, for `infinity`, which date32 cannot hold)."""
    return [v if v is None or v.__class__ is date else _date_or_none(v) for v in values]


def _date_or_none(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    text = str(value)
    return None if text.endswith("infinity") else date.fromisoformat(text[:10])


def _floats(values: Sequence[Any]) -> list[Any]:
    """Floats from floats or from PostgreSQL's text of a real (`Infinity`, `NaN` included)."""
    return [v if v is None or v.__class__ is float else float(v) for v in values]


def _booleans(values: Sequence[Any]) -> list[Any]:
    return [None if v is None else bool(v) for v in values]


def _decimals(precision: int, scale: int, normalize: Any) -> ColumnConvert:
    """Exact decimals through their text, which Arrow parses in C (three times as fast as from Decimal)."""
    decimal = pa.decimal128(precision, scale)

    def convert(values: Sequence[Any]) -> Any:
        numbers = values if normalize is None else [None if v is None else normalize(v) for v in values]
        texts = [None if v is None else str(v) for v in numbers]
        try:
            return pc.cast(pa.array(texts, pa.string()), decimal)
        except pa.ArrowInvalid:  # NaN or ±Infinity among them: NULL
            finite = [None if t is None or t.lstrip("-") in ("NaN", "Infinity", "sNaN") else t for t in texts]
            return pc.cast(pa.array(finite, pa.string()), decimal)

    return convert


def arrow_column(col: Column, dialect: str) -> tuple[pa.DataType, ColumnConvert | None]:
    """A column's Arrow type, and how a batch of its values becomes what pa.array takes for that type (or an
    Arrow array itself); None where the values already are."""
    kind = col.kind
    if kind == "integer" and not col.as_text:
        return (pa.int32() if dialect == "postgresql" and col.type in _PG_INT32 else pa.int64()), None
    if kind == "decimal" and col.precision and col.precision <= MAX_DECIMAL128_DIGITS and not col.as_text:
        return pa.decimal128(col.precision, col.scale or 0), _decimals(col.precision, col.scale or 0,
                                                                      normalizer(col, dialect))
    if kind == "float":
        return pa.float64(), _floats
    if kind == "boolean":
        return pa.bool_(), (_booleans if dialect == "sqlite" else None)
    if kind == "date":
        return pa.date32(), _dates
    if kind == "time" and not col.as_text:
        return pa.time64("us"), None
    if kind == "timestamptz":
        return pa.timestamp("us", tz="UTC"), (_sqlite_timestamps if dialect == "sqlite" else _finite_timestamps)
    if kind == "timestamp":
        return pa.timestamp("us"), _finite_timestamps
    if kind == "bytes":
        return pa.binary(), None
    # Text, JSON (as its text), uuid, interval, unconstrained numeric and other types: the CSV export's text.
    return pa.string(), text_column(col, dialect)


class RecordBatches:
    """Row batches → Arrow record batches of one schema (column names and types from arrow_column)."""

    def __init__(self, columns: Sequence[Column], dialect: str) -> None:
        typed = [arrow_column(col, dialect) for col in columns]
        self.schema = pa.schema([pa.field(col.name, arrow_type, nullable=True)
                                 for col, (arrow_type, _) in zip(columns, typed, strict=True)])
        self._converters = [convert for _, convert in typed]

    def record_batch(self, batch: Sequence[Sequence[Any]]) -> pa.RecordBatch:
        columns = list(zip(*batch, strict=True)) if batch else [() for _ in self._converters]
        arrays = []
        for values, convert, field in zip(columns, self._converters, self.schema, strict=True):
            converted = values if convert is None else convert(values)
            arrays.append(converted if isinstance(converted, pa.Array) else pa.array(converted, field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


class ChunkSink:
    """A write-only file for pyarrow's writers that keeps what was written until take() hands it out. tell()
    counts every byte ever written, as the Parquet footer's offsets need."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: Any) -> int:
        part = bytes(data)
        self._parts.append(part)
        self._written += len(part)
        return len(part)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


@dataclass(frozen=True)
class ArrowOptions:
    serialization: ClassVar[str] = "arrow"


class ArrowStreamSerializer:
    """The Arrow IPC stream format: the schema, one record batch per row batch, then the end-of-stream marker.
    A reader (pyarrow.ipc.open_stream, polars) can read each batch as it arrives."""

    media_type = "application/vnd.apache.arrow.stream"

    def __init__(self, columns: Sequence[Column], dialect: str) -> None:
        self._batches = RecordBatches(columns, dialect)
        self._sink = ChunkSink()
        self._writer = pa.ipc.new_stream(pa.PythonFile(self._sink, mode="w"), self._batches.schema)

    @property
    def schema(self) -> pa.Schema:
        return self._batches.schema

    def header(self) -> bytes:
        return self._sink.take()

    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes:
        if not batch:
            return b""
        return self.encode_arrow(self._batches.record_batch(batch))

    def encode_arrow(self, batch: pa.RecordBatch) -> bytes:
        """A record batch of `schema` (from the ADBC path) instead of rows."""
        self._writer.write_batch(batch)
        return self._sink.take()

    def footer(self) -> bytes:
        self._writer.close()
        return self._sink.take()
