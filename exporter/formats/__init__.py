"""Export formats: one registry from a format's name (`csv`, `ndjson.gz`, `parquet`, ...) to how its bytes are made
and its media type, for GET /exports/{name}.{format} and for anything else that produces exports.

A format is a serialization (csv, ndjson, ...) plus, for the text ones, an optional whole-file compression.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.errors import UnknownFormat
from exporter.formats.arrow import ArrowOptions, ArrowStreamSerializer
from exporter.formats.csv import BOM, CsvOptions, CsvSerializer, csv_options, reject_csv_options
from exporter.formats.ndjson import NdjsonOptions, NdjsonSerializer
from exporter.formats.parquet import ParquetOptions, ParquetSerializer
from exporter.formats.xlsx import MAX_DATA_ROWS, XlsxOptions, XlsxSerializer
from exporter.sources.datasets import Column

__all__ = [
    "BOM",
    "FORMATS",
    "MAX_ROWS",
    "CsvOptions",
    "CsvSerializer",
    "ExportFormat",
    "FormatDefaults",
    "NdjsonOptions",
    "NdjsonSerializer",
    "Options",
    "Serializer",
    "create_serializer",
    "csv_options",
    "format_options",
    "media_type",
    "reject_csv_options",
    "split_filename",
]


class Serializer(Protocol):
    """header() once, encode(batch) per row batch, footer() once; each returns the bytes to send next. Pure: no I/O."""

    media_type: str

    def header(self) -> bytes: ...
    def encode(self, batch: Sequence[Sequence[Any]]) -> bytes: ...
    def footer(self) -> bytes: ...


Options = CsvOptions | NdjsonOptions | ParquetOptions | ArrowOptions | XlsxOptions


@dataclass(frozen=True)
class Serialization:
    media_type: str
    options: Callable[[Mapping[str, str], FormatDefaults], Options]
    create: Callable[[Sequence[Column], str, Any], Serializer]


@dataclass(frozen=True)
class FormatDefaults:
    """What the operator configured: the dataset's formula guard and the Parquet row group size."""

    formula_guard: bool = False
    parquet_row_group_rows: int = 131_072


def _ndjson_options(params: Mapping[str, str], defaults: FormatDefaults) -> NdjsonOptions:
    reject_csv_options(params)
    return NdjsonOptions()


def _parquet_options(params: Mapping[str, str], defaults: FormatDefaults) -> ParquetOptions:
    reject_csv_options(params)
    return ParquetOptions(row_group_rows=defaults.parquet_row_group_rows)


def _arrow_options(params: Mapping[str, str], defaults: FormatDefaults) -> ArrowOptions:
    reject_csv_options(params)
    return ArrowOptions()


def _xlsx_options(params: Mapping[str, str], defaults: FormatDefaults) -> XlsxOptions:
    reject_csv_options(params)
    return XlsxOptions()


SERIALIZATIONS: dict[str, Serialization] = {
    "csv": Serialization(CsvSerializer.media_type, lambda params, d: csv_options(params, formula_guard=d.formula_guard),
                         CsvSerializer),
    "ndjson": Serialization(NdjsonSerializer.media_type, _ndjson_options, lambda cols, dialect, _: NdjsonSerializer(
        cols, dialect)),
    "parquet": Serialization(ParquetSerializer.media_type, _parquet_options, ParquetSerializer),
    "arrow": Serialization(ArrowStreamSerializer.media_type, _arrow_options,
                           lambda cols, dialect, _: ArrowStreamSerializer(cols, dialect)),
    "xlsx": Serialization(XlsxSerializer.media_type, _xlsx_options,
                          lambda cols, dialect, _: XlsxSerializer(cols, dialect)),
}
# The most data rows an export in the serialization may have; more is refused before the first byte.
MAX_ROWS: dict[str, int] = {"xlsx": MAX_DATA_ROWS}
TEXT_SERIALIZATIONS = ("csv", "ndjson")  # those that take a Content-Encoding or a compressed file name


@dataclass(frozen=True)
class ExportFormat:
    """A format as named in a file name (`orders.csv.zst`) or a job: its serialization, the compression of the whole
    file (None, "gzip" or "zstd"), and the file's media type."""

    name: str
    serialization: str
    compression: str | None
    media_type: str

    @property
    def negotiates_encoding(self) -> bool:
        """Whether Accept-Encoding may add a Content-Encoding: text formats that are not compressed files."""
        return self.serialization in TEXT_SERIALIZATIONS and self.compression is None


_COMPRESSED_MEDIA_TYPES = {"gzip": ("gz", "application/gzip"), "zstd": ("zst", "application/zstd")}


def _formats() -> dict[str, ExportFormat]:
    found = {name: ExportFormat(name, name, None, s.media_type) for name, s in SERIALIZATIONS.items()}
    for name in TEXT_SERIALIZATIONS:
        for compression, (extension, media) in _COMPRESSED_MEDIA_TYPES.items():
            found[f"{name}.{extension}"] = ExportFormat(f"{name}.{extension}", name, compression, media)
    return found


FORMATS: dict[str, ExportFormat] = _formats()


def split_filename(filename: str) -> tuple[str, str]:
    """`orders.csv.gz` → ("orders", "csv.gz"): the dataset's name and the format's name (a key of FORMATS)."""
    for fmt in sorted(FORMATS, key=len, reverse=True):
        name = filename.removesuffix("." + fmt)
        if name != filename and name:
            return name, fmt
    names = ", ".join("." + fmt for fmt in FORMATS)
    raise UnknownFormat(f"{filename!r}: the name must end in one of {names}", parameter="format")


def format_options(fmt: str, params: Mapping[str, str], defaults: FormatDefaults | None = None) -> Options:
    """The options of an export in format `fmt` (a key of FORMATS) from its query parameters; errors name the
    parameter, and a parameter of another format is one."""
    serialization = FORMATS[fmt].serialization
    return SERIALIZATIONS[serialization].options(params, defaults or FormatDefaults())


def media_type(options: Options) -> str:
    return SERIALIZATIONS[options.serialization].media_type


def create_serializer(columns: Sequence[Column], dialect: str, options: Options) -> Serializer:
    return SERIALIZATIONS[options.serialization].create(columns, dialect, options)
