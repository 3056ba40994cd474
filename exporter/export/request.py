"""An export request validated: the dataset, its query within the key's restriction, and the format's options;
what `GET /exports/{filename}?{params}`, a job and the pages' checks all produce first."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.access.grants import NO_RESTRICTION, Restriction
from exporter.config import Settings
from exporter.export.queries import ExportQuery, build_query
from exporter.formats import FORMATS, ExportFormat, FormatDefaults, Options, format_options, split_filename
from exporter.sources.datasets import Catalog, Dataset

EXPORT_FORMATS = tuple(FORMATS)  # what an export's name may end in, and a job's `format`


def export_media_type(fmt: str) -> str:
    """The Content-Type of an export file in format `fmt` (`csv.gz` is a gzip file, not gzip-encoded CSV)."""
    return FORMATS[fmt].media_type


@dataclass(frozen=True)
class Export:
    """A validated export request: what `GET /exports/{filename}?{params}` and a job both produce."""

    dataset: Dataset
    query: ExportQuery
    options: Options
    export_format: ExportFormat
    max_rows: int | None = None  # the key's limit: an export that passes it is aborted

    @property
    def format(self) -> str:
        """The format's name: csv, ndjson, csv.gz, ..., parquet, arrow, xlsx (a key of FORMATS)."""
        return self.export_format.name

    @property
    def compression(self) -> str | None:
        """The whole file's compression (`.gz`, `.zst` names), not a negotiated Content-Encoding."""
        return self.export_format.compression

    @property
    def filename(self) -> str:
        return f"{self.dataset.name}.{self.format}"


async def prepare_export(catalog: Catalog, filename: str, params: list[tuple[str, str]],
                         restriction: Restriction = NO_RESTRICTION, settings: Settings | None = None) -> Export:
    """Validate the name and every parameter, within a key's restriction on the dataset; raises the ExportError
    that names what is wrong. `settings` give the format defaults (the Parquet row group size)."""
    name, fmt = split_filename(filename)
    dataset = await catalog.get(name)
    query = build_query(dataset, params, dataset.engine.dialect.name, restriction)
    options = format_options(fmt, dict(params), format_defaults(dataset, settings or Settings()))
    return Export(dataset, query, options, FORMATS[fmt], restriction.max_rows)


def format_defaults(dataset: Dataset, settings: Settings) -> FormatDefaults:
    return FormatDefaults(formula_guard=dataset.config.formula_guard,
                          parquet_row_group_rows=settings.parquet_row_group_rows)
