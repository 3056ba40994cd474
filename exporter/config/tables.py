"""The config file's tables: datasets and their source databases, file roots and upstreams, each checked and frozen."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.config.values import flag, seconds, whole
from exporter.errors import ConfigError

ROOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # file roots and upstreams: safe in a URL path as they are
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token (RFC 9110 §5.6.2)
# Meaningful for one connection only, never relayed (RFC 9110 §7.6.1).
HOP_BY_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                                "upgrade", "proxy-authenticate", "proxy-authorization"})
# Hop-by-hop, or set by the client library for each request: an upstream can neither add nor forward them.
UNFORWARDABLE_HEADERS = HOP_BY_HOP_HEADERS | {"host", "content-length"}
DEFAULT_FORWARD_HEADERS = ("range", "if-range", "if-none-match", "if-modified-since", "accept")


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
    # Whether its answers may show inline (its own Content-Disposition kept); they are still sandboxed (CSP).
    inline: bool = False


def source_url(name: str, table: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    if "url_env" in table:
        url = environ.get(str(table["url_env"]))
        if not url:
            raise ConfigError(f"source {name}: environment variable {table['url_env']} is not set")
        return url
    if "url" not in table:
        raise ConfigError(f"source {name}: needs `url` or `url_env`")
    return str(table["url"])


def dataset(name: str, table: Mapping[str, Any], sources: Mapping[str, str]) -> DatasetConfig:
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
        formula_guard=flag(f"dataset {name}: formula_guard", table.get("formula_guard", False)),
    )


def file_roots(files: Any) -> dict[str, FileRootConfig]:
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
    hidden = flag(f"file root {name}: hidden", table.get("hidden", False))
    return FileRootConfig(name=name, path=path.resolve(strict=True), hidden=hidden)


def upstreams(upstreams: Any, environ: Mapping[str, str]) -> dict[str, UpstreamConfig]:
    """`[upstreams.NAME]` tables: base_url, headers, forward_headers, timeouts, max_concurrent_relays, inline."""
    if not isinstance(upstreams, Mapping) or not all(isinstance(t, Mapping) for t in upstreams.values()):
        raise ConfigError("[upstreams] must hold one table per upstream: [upstreams.NAME] with a `base_url`")
    return {name: _upstream(name, table, environ) for name, table in upstreams.items()}


def _upstream(name: str, table: Mapping[str, Any], environ: Mapping[str, str]) -> UpstreamConfig:
    if not ROOT_NAME.fullmatch(name):
        raise ConfigError(f"upstream {name!r}: names are letters, digits, '_', '.' and '-'")
    known = {"base_url", "headers", "forward_headers", "connect_timeout_seconds", "read_timeout_seconds",
             "max_concurrent_relays", "inline"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"upstream {name}: unknown keys {', '.join(sorted(unknown))}")
    if "base_url" not in table:
        raise ConfigError(f"upstream {name}: `base_url` is required")
    forward = table.get("forward_headers", list(DEFAULT_FORWARD_HEADERS))
    if not isinstance(forward, list | tuple) or not all(isinstance(h, str) for h in forward):
        raise ConfigError(f"upstream {name}: `forward_headers` must be a list of header names")
    if not isinstance(table.get("inline", False), bool):
        raise ConfigError(f"upstream {name}: `inline` must be true or false")
    where = f"upstream {name}"
    return UpstreamConfig(
        name=name,
        base_url=_base_url(name, table["base_url"]),
        headers=_added_headers(name, table.get("headers", {}), environ),
        forward_headers=tuple(_header_name(where, h).lower() for h in forward),
        connect_timeout_seconds=seconds(f"{where}: connect_timeout_seconds",
                                         table.get("connect_timeout_seconds", UpstreamConfig.connect_timeout_seconds)),
        read_timeout_seconds=seconds(f"{where}: read_timeout_seconds",
                                      table.get("read_timeout_seconds", UpstreamConfig.read_timeout_seconds)),
        max_concurrent_relays=whole(f"{where}: max_concurrent_relays",
                                     table.get("max_concurrent_relays", UpstreamConfig.max_concurrent_relays), 1),
        inline=table.get("inline", False),
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
