"""Settings from the environment and the TOML config file (datasets, source databases, file roots, upstreams); built
once, frozen."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/exporter.db"
DEFAULT_CONFIG = Path(__file__).with_name("default.toml")
DEFAULT_FILE_CHUNK_BYTES = 2 * 1024 * 1024  # measured: see README "Files"
MAX_FILE_CHUNK_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_COPY_PARALLEL = 4
MAX_COPY_PARALLEL = 64
DEFAULT_PARQUET_ROW_GROUP_ROWS = 131_072  # memory holds about one row group of a Parquet export
ROOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # file roots and upstreams: safe in a URL path as they are
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token (RFC 9110 §5.6.2)
# Meaningful for one connection only, never relayed (RFC 9110 §7.6.1).
HOP_BY_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                                "upgrade", "proxy-authenticate", "proxy-authorization"})
# Hop-by-hop, or set by the client library for each request: an upstream can neither add nor forward them.
UNFORWARDABLE_HEADERS = HOP_BY_HOP_HEADERS | {"host", "content-length"}
DEFAULT_FORWARD_HEADERS = ("range", "if-range", "if-none-match", "if-modified-since", "accept")
# Export jobs and their event streams; each also reads EXPORTER_<NAME> from the environment.
JOB_SETTINGS = ("jobs_dir", "job_workers", "job_lease_seconds", "job_ttl_hours", "job_max_queued",
                "job_progress_seconds", "sse_ping_seconds")
AUTH_SETTINGS = ("auth", "link_ttl_seconds", "key_max_concurrent", "log_format", "drain_seconds",
                 "session_hours")
# Export formats; each also reads EXPORTER_<NAME> from the environment.
FORMAT_SETTINGS = ("parquet_row_group_rows", "arrow_fast_path")
# Limits that protect the databases and the service from slow or greedy clients; each reads EXPORTER_<NAME> too.
LIMIT_SETTINGS = ("export_slots", "reserved_slots", "send_timeout_seconds", "statement_timeout_seconds")


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
    formula_guard: bool = False  # the CSV formula guard by default (formula_guard=false turns it off)


@dataclass(frozen=True)
class FileRootConfig:
    """A directory served under /files/{name}/. `path` is absolute with symlinks resolved (a relative path in the
    config is taken from the working directory); `hidden` allows names starting with a dot."""

    name: str
    path: Path
    hidden: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    """An upstream served under /proxy/{name}/. `base_url` is http or https without a trailing slash, query,
    fragment or credentials. `headers` are added to every upstream request, their values already read from the
    environment (kept out of repr: they are usually credentials). `forward_headers` are the caller's request
    headers passed on, in lower case."""

    name: str
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    forward_headers: tuple[str, ...] = DEFAULT_FORWARD_HEADERS
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0  # waiting for the answer, and for each read of its body
    max_concurrent_relays: int = 32


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    batch_rows: int = 500
    copy_fast_path: bool = True  # PostgreSQL COPY for exports it can render byte-identically
    copy_parallel: int = field(default_factory=lambda: default_copy_parallel())  # COPY parts per large export
    copy_parallel_min_rows: int = 100_000  # an export estimated to have fewer rows runs as one COPY
    arrow_fast_path: bool = True  # PostgreSQL Parquet and Arrow exports read through ADBC into Arrow
    parquet_row_group_rows: int = DEFAULT_PARQUET_ROW_GROUP_ROWS
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    file_roots: Mapping[str, FileRootConfig] = field(default_factory=dict)
    file_chunk_bytes: int = DEFAULT_FILE_CHUNK_BYTES  # every file chunk but a range's last has this size
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    jobs_dir: Path = Path("var/jobs")  # finished job results; shared by every replica that serves them
    job_workers: int = 2  # per `exporter serve` or `exporter worker` process
    job_lease_seconds: float = 30.0  # a job whose worker stops renewing this long is run again
    job_ttl_hours: float = 24.0  # a result file is deleted this long after its job finished
    job_max_queued: int = 100
    job_progress_seconds: float = 0.5  # the least time between two progress events of a job
    sse_ping_seconds: float = 15.0  # a `: ping` comment on event streams this often
    auth: str = "required"  # or "off": every request is anonymous and may do anything
    link_ttl_seconds: float = 900.0  # signed result links work this long
    key_max_concurrent: int = 4  # downloads and jobs at once per key, unless the key says otherwise
    log_format: str | None = None  # json | text; None: text on a terminal, JSON otherwise
    drain_seconds: float = 30.0  # on SIGTERM, how long downloads in flight may take before they are stopped
    export_slots: int | None = None  # exports at once per database; None: 20 on PostgreSQL, 4 on SQLite
    reserved_slots: int = 10  # pool connections per database that exports never take (log, jobs, catalog)
    send_timeout_seconds: float = 60.0  # a response whose client takes no data this long is aborted
    statement_timeout_seconds: float | None = None  # the longest wait for an export's first chunk; None: no limit
    session_hours: float = 12.0  # a browser session (sign-in cookie) lasts this long

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Settings:
        """Build from the TOML file's shape plus top-level `database_url`, `batch_rows` and `file_chunk_bytes`;
        `environ` supplies the variables that sources name with `url_env` and upstream headers with `env`. A file
        root that is not a directory, or an upstream header whose variable is unset, is a ConfigError."""
        known = {"database_url", "batch_rows", "copy_fast_path", "copy_parallel", "copy_parallel_min_rows",
                 "datasets", "sources", "files",
                 "file_chunk_bytes", "upstreams", *FORMAT_SETTINGS, *JOB_SETTINGS, *AUTH_SETTINGS, *LIMIT_SETTINGS}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        sources = {name: _source_url(name, table, environ) for name, table in data.get("sources", {}).items()}
        datasets = {
            name: _dataset(name, table, sources) for name, table in data.get("datasets", {}).items()
        }
        return cls(
            database_url=str(data.get("database_url", DEFAULT_DATABASE_URL)),
            batch_rows=_whole("batch_rows", data.get("batch_rows", cls.batch_rows), 1),
            copy_fast_path=_flag("copy_fast_path", data.get("copy_fast_path", True)),
            copy_parallel=_whole("copy_parallel", data.get("copy_parallel", default_copy_parallel()), 1,
                                 MAX_COPY_PARALLEL),
            copy_parallel_min_rows=_whole("copy_parallel_min_rows",
                                          data.get("copy_parallel_min_rows", cls.copy_parallel_min_rows), 0),
            arrow_fast_path=_flag("arrow_fast_path", data.get("arrow_fast_path", True)),
            datasets=datasets,
            sources=sources,
            file_roots=_file_roots(data.get("files", {})),
            file_chunk_bytes=_whole("file_chunk_bytes", data.get("file_chunk_bytes", cls.file_chunk_bytes), 1,
                                    MAX_FILE_CHUNK_BYTES),
            upstreams=_upstreams(data.get("upstreams", {}), environ),
            parquet_row_group_rows=_whole("parquet_row_group_rows",
                                          data.get("parquet_row_group_rows", cls.parquet_row_group_rows), 1),
            jobs_dir=Path(str(data.get("jobs_dir", cls.jobs_dir))),
            job_workers=_whole("job_workers", data.get("job_workers", cls.job_workers), 0),
            job_lease_seconds=_seconds("job_lease_seconds", data.get("job_lease_seconds", cls.job_lease_seconds)),
            job_ttl_hours=_seconds("job_ttl_hours", data.get("job_ttl_hours", cls.job_ttl_hours)),
            job_max_queued=_whole("job_max_queued", data.get("job_max_queued", cls.job_max_queued), 1),
            job_progress_seconds=_seconds("job_progress_seconds",
                                          data.get("job_progress_seconds", cls.job_progress_seconds)),
            sse_ping_seconds=_seconds("sse_ping_seconds", data.get("sse_ping_seconds", cls.sse_ping_seconds)),
            auth=_choice("auth", data.get("auth", cls.auth), ("required", "off")),
            link_ttl_seconds=_seconds("link_ttl_seconds", data.get("link_ttl_seconds", cls.link_ttl_seconds)),
            key_max_concurrent=_whole("key_max_concurrent", data.get("key_max_concurrent", cls.key_max_concurrent),
                                      1),
            log_format=_choice("log_format", data["log_format"], ("json", "text")) if data.get("log_format") else None,
            drain_seconds=_seconds("drain_seconds", data.get("drain_seconds", cls.drain_seconds)),
            export_slots=(None if data.get("export_slots") is None
                          else _whole("export_slots", data["export_slots"], 1)),
            reserved_slots=_whole("reserved_slots", data.get("reserved_slots", cls.reserved_slots), 1),
            send_timeout_seconds=_seconds("send_timeout_seconds",
                                          data.get("send_timeout_seconds", cls.send_timeout_seconds)),
            statement_timeout_seconds=_seconds_or_off("statement_timeout_seconds",
                                                      data.get("statement_timeout_seconds")),
            session_hours=_seconds("session_hours", data.get("session_hours", cls.session_hours)),
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """EXPORTER_CONFIG names the TOML file (default: the packaged demo config); EXPORTER_* override it."""
        path = Path(environ.get("EXPORTER_CONFIG") or DEFAULT_CONFIG)
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for key in ("database_url", "batch_rows", "copy_fast_path", "copy_parallel", "copy_parallel_min_rows",
                    "file_chunk_bytes", *FORMAT_SETTINGS, *JOB_SETTINGS, *AUTH_SETTINGS, *LIMIT_SETTINGS):
            value = environ.get(f"EXPORTER_{key.upper()}")
            if value:
                data[key] = value
        return cls.from_dict(data, environ)


def default_copy_parallel() -> int:
    """Two COPY parts per core of this machine, at most DEFAULT_MAX_COPY_PARALLEL: on 2 cores 4 parts beat 2, since
    the first part is paced by its client while the others fill their spools (README "Parallel COPY")."""
    return max(1, min(2 * (os.cpu_count() or 1), DEFAULT_MAX_COPY_PARALLEL))


def _whole(name: str, value: Any, least: int, most: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < least:
        raise ConfigError(f"{name} must be at least {least}")
    if most is not None and number > most:
        raise ConfigError(f"{name} must be at most {most}")
    return number


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if str(value) not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


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
    unknown = set(table) - {"description", "table", "sql", "key", "filterable", "source", "formula_guard"}
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
        formula_guard=_flag(f"dataset {name}: formula_guard", table.get("formula_guard", False)),
    )


def _file_roots(files: Any) -> dict[str, FileRootConfig]:
    """`[files.roots]`: name = "dir", or name = { path = "dir", hidden = true }."""
    if not isinstance(files, Mapping) or set(files) - {"roots"}:
        raise ConfigError("[files] takes only a `roots` table")
    roots = files.get("roots", {})
    if not isinstance(roots, Mapping):
        raise ConfigError("[files.roots] must map names to directories")
    return {name: _file_root(name, value) for name, value in roots.items()}


def _file_root(name: str, value: Any) -> FileRootConfig:
    if not ROOT_NAME.fullmatch(name):
        raise ConfigError(f"file root {name!r}: names are letters, digits, '_', '.' and '-'")
    table = {"path": value} if isinstance(value, str) else value
    if not isinstance(table, Mapping) or "path" not in table:
        raise ConfigError(f"file root {name}: give a directory, or a table with `path`")
    unknown = set(table) - {"path", "hidden"}
    if unknown:
        raise ConfigError(f"file root {name}: unknown keys {', '.join(sorted(unknown))}")
    path = Path(str(table["path"]))
    if not path.is_dir():
        raise ConfigError(f"file root {name}: {path} is not a directory")
    hidden = _flag(f"file root {name}: hidden", table.get("hidden", False))
    return FileRootConfig(name=name, path=path.resolve(strict=True), hidden=hidden)


def _upstreams(upstreams: Any, environ: Mapping[str, str]) -> dict[str, UpstreamConfig]:
    """`[upstreams.NAME]` tables: base_url, headers, forward_headers, timeouts, max_concurrent_relays."""
    if not isinstance(upstreams, Mapping) or not all(isinstance(t, Mapping) for t in upstreams.values()):
        raise ConfigError("[upstreams] must hold one table per upstream: [upstreams.NAME] with a `base_url`")
    return {name: _upstream(name, table, environ) for name, table in upstreams.items()}


def _upstream(name: str, table: Mapping[str, Any], environ: Mapping[str, str]) -> UpstreamConfig:
    if not ROOT_NAME.fullmatch(name):
        raise ConfigError(f"upstream {name!r}: names are letters, digits, '_', '.' and '-'")
    known = {"base_url", "headers", "forward_headers", "connect_timeout_seconds", "read_timeout_seconds",
             "max_concurrent_relays"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"upstream {name}: unknown keys {', '.join(sorted(unknown))}")
    if "base_url" not in table:
        raise ConfigError(f"upstream {name}: `base_url` is required")
    forward = table.get("forward_headers", list(DEFAULT_FORWARD_HEADERS))
    if not isinstance(forward, list | tuple) or not all(isinstance(h, str) for h in forward):
        raise ConfigError(f"upstream {name}: `forward_headers` must be a list of header names")
    where = f"upstream {name}"
    return UpstreamConfig(
        name=name,
        base_url=_base_url(name, table["base_url"]),
        headers=_added_headers(name, table.get("headers", {}), environ),
        forward_headers=tuple(_header_name(where, h).lower() for h in forward),
        connect_timeout_seconds=_seconds(f"{where}: connect_timeout_seconds",
                                         table.get("connect_timeout_seconds", UpstreamConfig.connect_timeout_seconds)),
        read_timeout_seconds=_seconds(f"{where}: read_timeout_seconds",
                                      table.get("read_timeout_seconds", UpstreamConfig.read_timeout_seconds)),
        max_concurrent_relays=_whole(f"{where}: max_concurrent_relays",
                                     table.get("max_concurrent_relays", UpstreamConfig.max_concurrent_relays), 1),
    )


def _base_url(name: str, value: Any) -> str:
    """http(s)://host[:port][/path] with the path's trailing slash removed; no credentials, query or fragment,
    which a relayed path could not be joined to safely (credentials belong in `headers`)."""
    try:
        parts = urlsplit(str(value))
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"upstream {name}: base_url {value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream {name}: base_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.query or parts.fragment or "?" in str(value) or "#" in str(value):
        raise ConfigError(f"upstream {name}: base_url may not carry credentials, a query or a fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _added_headers(name: str, headers: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """`headers = { Name = "value", Authorization = { env = "VAR" } }`; values are checked, never printed."""
    if not isinstance(headers, Mapping):
        raise ConfigError(f"upstream {name}: `headers` must be a table of header names and values")
    added = {}
    for header, value in headers.items():
        where = f"upstream {name}: header {header}"
        _header_name(f"upstream {name}", header)
        if isinstance(value, Mapping):
            if set(value) != {"env"}:
                raise ConfigError(f"{where}: give a string, or a table with only `env`")
            text = environ.get(str(value["env"]))
            if not text:
                raise ConfigError(f"{where}: environment variable {value['env']} is not set")
        elif isinstance(value, str):
            text = value
        else:
            raise ConfigError(f"{where}: give a string, or a table with only `env`")
        if not all(c == "\t" or " " <= c <= "~" for c in text):
            raise ConfigError(f"{where}: the value must be printable ASCII (no line breaks)")
        added[header] = text
    return added


def _header_name(where: str, header: str) -> str:
    if not HEADER_NAME.fullmatch(header):
        raise ConfigError(f"{where}: {header!r} is not a header name")
    if header.lower() in UNFORWARDABLE_HEADERS:
        raise ConfigError(f"{where}: {header} is hop-by-hop or set by the connection, and cannot be configured")
    return header


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name} must be more than 0")
    return seconds


def _seconds_or_off(name: str, value: Any) -> float | None:
    """A number of seconds, or None for no limit: unset, 0 or `off`."""
    if value is None or str(value).strip().lower() in ("0", "0.0", "off"):
        return None
    return _seconds(name, value)
