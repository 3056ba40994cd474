"""Declared datasets with their columns (names and types read from the database), discovery JSON, and the catalog
of them over every source database (open_sources)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect, sql, types
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.access.admission import ExportSlots, export_slot_count
from exporter.config import DatasetConfig, Settings
from exporter.errors import DatasetUnavailable, UnknownDataset
from exporter.sources.engines import create_db_engine, database_errors

# What a value is, for parsing filters and for rendering; see formats/values.py.
KINDS = ("integer", "decimal", "float", "boolean", "text", "date", "time", "timestamp", "timestamptz",
         "interval", "uuid", "json", "bytes", "other")

_PG_KINDS = {
    "int2": "integer", "int4": "integer", "int8": "integer", "oid": "integer",
    "numeric": "decimal", "float4": "float", "float8": "float", "bool": "boolean",
    "text": "text", "varchar": "text", "bpchar": "text", "name": "text", "citext": "text",
    "date": "date", "time": "time", "timestamp": "timestamp", "timestamptz": "timestamptz",
    "interval": "interval", "uuid": "uuid", "json": "json", "jsonb": "json", "bytea": "bytes",
}


# Kinds selected as PostgreSQL's text (see Column.as_text): asyncpg hands `infinity` dates back as
# 9999-12-31, and intervals with months as days.
_PG_TEXT_KINDS = frozenset({"date", "interval", "other"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # the database's name for the type, for discovery
    kind: str
    nullable: bool
    scale: int | None = None  # numeric scale, needed where SQLite hands back floats
    precision: int | None = None  # numeric precision, for the typed formats' decimal types
    # Selected as PostgreSQL's text output on both export paths: types whose driver values do not map
    # one to one onto that text (dates incl. infinity, intervals, real, arrays, timetz, other types).
    as_text: bool = False


@dataclass(frozen=True)
class Dataset:
    config: DatasetConfig
    columns: Mapping[str, Column]
    engine: AsyncEngine
    slots: ExportSlots | None = None  # its database's export slots; None (tools, unit tests): no limit

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def key(self) -> Column:
        return self.columns[self.config.key]

    def describe(self, formats: Sequence[str], visible: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Discovery JSON; `formats` are the format names an export of it may end in; with `visible` (a key's
        column restriction) only those columns, in that order."""
        columns = list(self.columns.values()) if visible is None else [
            self.columns[name] for name in visible if name in self.columns]
        shown = {c.name for c in columns}
        return {
            "name": self.name,
            "description": self.config.description,
            "key": self.config.key if self.config.key in shown else None,  # a hidden key is not named either
            "columns": [{"name": c.name, "type": c.type, "nullable": c.nullable} for c in columns],
            "filterable": [name for name in self.config.filterable if name in shown],
            "formats": list(formats),
        }


class Catalog:
    """Datasets by name; each is reflected from its source database on first use and then cached."""

    def __init__(self, configs: Mapping[str, DatasetConfig], engines: Mapping[str | None, AsyncEngine],
                 slots: Mapping[str | None, ExportSlots] | None = None) -> None:
        self._configs = configs
        self._engines = engines
        self._slots = slots or {}
        self._cache: dict[str, Dataset] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._configs)

    @property
    def engines(self) -> Mapping[str | None, AsyncEngine]:
        """The source databases by name; None is the service's own."""
        return self._engines

    async def get(self, name: str) -> Dataset:
        if name in self._cache:
            return self._cache[name]
        config = self._configs.get(name)
        if config is None:
            raise UnknownDataset(f"no dataset named {name!r}; GET /datasets lists them", parameter="name")
        engine = self._engines[config.source]
        # Not an export slot: the pool's reserve serves this, so /datasets answers while exports are busy.
        with database_errors(f"dataset {name!r}"):
            async with engine.connect() as conn:
                columns = await _reflect(conn, config)
        _check(config, columns)
        dataset = Dataset(config, {c.name: c for c in columns}, engine, self._slots.get(config.source))
        self._cache[name] = dataset
        return dataset


def _check(config: DatasetConfig, columns: list[Column]) -> None:
    names = {c.name for c in columns}
    missing = [n for n in (config.key, *config.filterable) if n not in names]
    if missing:
        raise DatasetUnavailable(f"dataset {config.name!r}: configured columns missing from its source: {missing}")


async def _reflect(conn: AsyncConnection, config: DatasetConfig) -> list[Column]:
    if config.table is not None:
        schema, _, table = config.table.rpartition(".")
        found = await conn.run_sync(lambda sync: inspect(sync).has_table(table, schema=schema or None))
        if not found:
            raise DatasetUnavailable(f"dataset {config.name!r}: table {config.table!r} does not exist")
        reflected = await conn.run_sync(lambda sync: inspect(sync).get_columns(table, schema=schema or None))
        return [_from_sqlalchemy(c, conn.dialect) for c in reflected]
    assert config.sql is not None
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        statement = await raw.driver_connection.prepare(config.sql)  # type: ignore[union-attr]
        columns = []
        for attribute in statement.get_attributes():
            kind = _PG_KINDS.get(attribute.type.name, "other")
            as_text = kind in _PG_TEXT_KINDS or attribute.type.name in ("float4", "timetz")
            columns.append(Column(attribute.name, attribute.type.name, kind, nullable=True, as_text=as_text))
        return columns
    result = await conn.execute(sql.text(f"SELECT * FROM ({config.sql}) AS src LIMIT 0"))
    return [Column(name, "any", "other", nullable=True) for name in result.keys()]


def _from_sqlalchemy(reflected: Any, dialect: Dialect) -> Column:
    sa_type = reflected["type"]
    kind = _kind(sa_type, dialect.name)
    as_text = dialect.name == "postgresql" and (
        kind in _PG_TEXT_KINDS
        or isinstance(sa_type, postgresql.REAL)
        or (isinstance(sa_type, types.Time) and bool(sa_type.timezone))
    )
    return Column(
        name=reflected["name"],
        type=sa_type.compile(dialect=dialect).lower(),
        kind=kind,
        nullable=bool(reflected["nullable"]),
        scale=getattr(sa_type, "scale", None),
        precision=getattr(sa_type, "precision", None) if kind == "decimal" else None,
        as_text=as_text,
    )


# SQLAlchemy type → kind, first match wins: Boolean before Integer, Float before Numeric (its base class).
_SQLALCHEMY_KINDS: tuple[tuple[type[types.TypeEngine[Any]], str], ...] = (
    (types.Boolean, "boolean"),
    (types.Integer, "integer"),
    (types.Float, "float"),
    (types.Numeric, "decimal"),
    (types.DateTime, "timestamp"),
    (types.Date, "date"),
    (types.Time, "time"),
    (types.Interval, "interval"),
    (postgresql.INTERVAL, "interval"),
    (types.Uuid, "uuid"),
    (types.JSON, "json"),
    (types.LargeBinary, "bytes"),
    (types.String, "text"),
)


def _kind(sa_type: types.TypeEngine[Any], dialect: str) -> str:
    kind = next((kind for cls, kind in _SQLALCHEMY_KINDS if isinstance(sa_type, cls)), "other")
    # SQLite has no time zones; the service stores UTC there, as SQLAlchemy does for timezone=True.
    if kind == "timestamp" and (getattr(sa_type, "timezone", False) or dialect == "sqlite"):
        return "timestamptz"
    return kind


@asynccontextmanager
async def open_sources(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, Catalog]]:
    """The service's own engine and the catalog of datasets over every source; disposed on exit. Each database
    gives exports its export slots, and its pool holds EXPORTER_RESERVED_SLOTS connections more for everything
    else (the export log, the catalog, /readyz), so those never wait behind exports."""
    urls: dict[str | None, str] = {None: settings.database_url}
    urls.update(settings.sources)
    slots = {name: export_slot_count(url, settings) for name, url in urls.items()}
    sources = {name: create_db_engine(url, pool_connections=slots[name] + settings.reserved_slots)
               for name, url in urls.items()}
    engine = sources[None]
    try:
        yield engine, Catalog(settings.datasets, sources, {name: ExportSlots(n) for name, n in slots.items()})
    finally:
        for source in sources.values():
            await source.dispose()
