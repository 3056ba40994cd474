"""Settings from the environment and the TOML config file (datasets, source databases); built once, frozen."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/exporter.db"
DEFAULT_CONFIG = Path(__file__).with_name("default.toml")


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset as the operator declared it: exactly one of `table` and `sql`, read from `source`."""

    name: str
    key: str
    description: str = ""
    table: str | None = None
    sql: str | None = None
    filterable: tuple[str, ...] = ()
    source: str | None = None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    batch_rows: int = 500
    copy_fast_path: bool = True  # PostgreSQL COPY for exports it can render byte-identically
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Settings:
        """Build from the TOML file's shape plus top-level `database_url` and `batch_rows`; `environ`
        supplies the variables that sources name with `url_env`."""
        known = {"database_url", "batch_rows", "copy_fast_path", "datasets", "sources"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        sources = {name: _source_url(name, table, environ) for name, table in data.get("sources", {}).items()}
        datasets = {
            name: _dataset(name, table, sources) for name, table in data.get("datasets", {}).items()
        }
        try:
            batch_rows = int(data.get("batch_rows", cls.batch_rows))
        except (TypeError, ValueError):
            raise ConfigError(f"batch_rows must be a whole number, got {data['batch_rows']!r}") from None
        if batch_rows < 1:
            raise ConfigError("batch_rows must be at least 1")
        return cls(
            database_url=str(data.get("database_url", DEFAULT_DATABASE_URL)),
            batch_rows=batch_rows,
            copy_fast_path=_flag("copy_fast_path", data.get("copy_fast_path", True)),
            datasets=datasets,
            sources=sources,
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """EXPORTER_CONFIG names the TOML file (default: the packaged demo config); EXPORTER_* override it."""
        path = Path(environ.get("EXPORTER_CONFIG") or DEFAULT_CONFIG)
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for key in ("database_url", "batch_rows", "copy_fast_path"):
            value = environ.get(f"EXPORTER_{key.upper()}")
            if value:
                data[key] = value
        return cls.from_dict(data, environ)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _source_url(name: str, table: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    if "url_env" in table:
        url = environ.get(str(table["url_env"]))
        if not url:
            raise ConfigError(f"source {name}: environment variable {table['url_env']} is not set")
        return url
    if "url" not in table:
        raise ConfigError(f"source {name}: needs `url` or `url_env`")
    return str(table["url"])


def _dataset(name: str, table: Mapping[str, Any], sources: Mapping[str, str]) -> DatasetConfig:
    unknown = set(table) - {"description", "table", "sql", "key", "filterable", "source"}
    if unknown:
        raise ConfigError(f"dataset {name}: unknown keys {', '.join(sorted(unknown))}")
    if ("table" in table) == ("sql" in table):
        raise ConfigError(f"dataset {name}: declare exactly one of `table` and `sql`")
    if "key" not in table:
        raise ConfigError(f"dataset {name}: `key` is required (a unique column, for order and resuming)")
    filterable = table.get("filterable", [])
    if not isinstance(filterable, list | tuple) or not all(isinstance(n, str) for n in filterable):
        raise ConfigError(f"dataset {name}: `filterable` must be a list of column names")
    source = table.get("source")
    if source is not None and source not in sources:
        raise ConfigError(f"dataset {name}: unknown source {source!r}")
    return DatasetConfig(
        name=name,
        key=str(table["key"]),
        description=str(table.get("description", "")),
        table=table.get("table"),
        sql=table.get("sql"),
        filterable=tuple(filterable),
        source=source,
    )
