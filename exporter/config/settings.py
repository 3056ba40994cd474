"""Settings from the environment and the TOML config file (datasets, source databases, file roots, upstreams); built
once, frozen."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.config.tables import (
    DatasetConfig,
    FileRootConfig,
    UpstreamConfig,
    dataset,
    file_roots,
    source_url,
    upstreams,
)
from exporter.config.values import choice, flag, networks, seconds, seconds_or_off, whole
from exporter.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/exporter.db"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "default.toml"
DEFAULT_FILE_CHUNK_BYTES = 2 * 1024 * 1024  # measured: see docs/files.md "Choosing the chunk size"
MAX_FILE_CHUNK_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_COPY_PARALLEL = 4
MAX_COPY_PARALLEL = 64
DEFAULT_PARQUET_ROW_GROUP_ROWS = 131_072  # memory holds about one row group of a Parquet export
# Export jobs and their event streams; each also reads EXPORTER_<NAME> from the environment.
JOB_SETTINGS = ("jobs_dir", "job_workers", "job_lease_seconds", "job_ttl_hours", "job_max_queued",
                "job_progress_seconds", "sse_ping_seconds")
AUTH_SETTINGS = ("auth", "link_ttl_seconds", "key_max_concurrent", "log_format", "drain_seconds",
                 "session_hours", "failed_auth_limit", "failed_auth_window_seconds", "failed_auth_delay_seconds")
# Export formats; each also reads EXPORTER_<NAME> from the environment.
FORMAT_SETTINGS = ("parquet_row_group_rows", "arrow_fast_path")
# Limits that protect the databases and the service from slow or greedy clients; each reads EXPORTER_<NAME> too.
LIMIT_SETTINGS = ("export_slots", "reserved_slots", "send_timeout_seconds", "statement_timeout_seconds",
                  "export_log_backlog_rows")
# What the service accepts of a request before routing: its body's size, and whose X-Forwarded-* headers count.
REQUEST_SETTINGS = ("max_body_bytes", "trusted_proxies")
DEFAULT_MAX_BODY_BYTES = 64 * 1024




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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # a longer request body is refused with 413 body_too_large
    trusted_proxies: tuple[str, ...] = ()  # addresses and CIDRs whose X-Forwarded-For/-Proto count; none by default
    failed_auth_limit: int = 20  # failed authentications per client address and window; beyond them, 429
    failed_auth_window_seconds: float = 60.0  # the window those are counted in, from its first failure
    failed_auth_delay_seconds: float = 1.0  # the wait before each failure's answer past half the limit
    export_log_backlog_rows: int = 10_000  # export log rows kept in memory while the database is away

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Settings:
        """Build from the TOML file's shape plus top-level `database_url`, `batch_rows` and `file_chunk_bytes`;
        `environ` supplies the variables that sources name with `url_env` and upstream headers with `env`. A file
        root that is not a directory, or an upstream header whose variable is unset, is a ConfigError."""
        known = {"database_url", "batch_rows", "copy_fast_path", "copy_parallel", "copy_parallel_min_rows",
                 "datasets", "sources", "files",
                 "file_chunk_bytes", "upstreams", *FORMAT_SETTINGS, *JOB_SETTINGS, *AUTH_SETTINGS, *LIMIT_SETTINGS,
                 *REQUEST_SETTINGS}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        sources = {name: source_url(name, table, environ) for name, table in data.get("sources", {}).items()}
        datasets = {
            name: dataset(name, table, sources) for name, table in data.get("datasets", {}).items()
        }
        return cls(
            database_url=str(data.get("database_url", DEFAULT_DATABASE_URL)),
            batch_rows=whole("batch_rows", data.get("batch_rows", cls.batch_rows), 1),
            copy_fast_path=flag("copy_fast_path", data.get("copy_fast_path", True)),
            copy_parallel=whole("copy_parallel", data.get("copy_parallel", default_copy_parallel()), 1,
                                 MAX_COPY_PARALLEL),
            copy_parallel_min_rows=whole("copy_parallel_min_rows",
                                          data.get("copy_parallel_min_rows", cls.copy_parallel_min_rows), 0),
            arrow_fast_path=flag("arrow_fast_path", data.get("arrow_fast_path", True)),
            datasets=datasets,
            sources=sources,
            file_roots=file_roots(data.get("files", {})),
            file_chunk_bytes=whole("file_chunk_bytes", data.get("file_chunk_bytes", cls.file_chunk_bytes), 1,
                                    MAX_FILE_CHUNK_BYTES),
            upstreams=upstreams(data.get("upstreams", {}), environ),
            parquet_row_group_rows=whole("parquet_row_group_rows",
                                          data.get("parquet_row_group_rows", cls.parquet_row_group_rows), 1),
            jobs_dir=Path(str(data.get("jobs_dir", cls.jobs_dir))),
            job_workers=whole("job_workers", data.get("job_workers", cls.job_workers), 0),
            job_lease_seconds=seconds("job_lease_seconds", data.get("job_lease_seconds", cls.job_lease_seconds)),
            job_ttl_hours=seconds("job_ttl_hours", data.get("job_ttl_hours", cls.job_ttl_hours)),
            job_max_queued=whole("job_max_queued", data.get("job_max_queued", cls.job_max_queued), 1),
            job_progress_seconds=seconds("job_progress_seconds",
                                          data.get("job_progress_seconds", cls.job_progress_seconds)),
            sse_ping_seconds=seconds("sse_ping_seconds", data.get("sse_ping_seconds", cls.sse_ping_seconds)),
            auth=choice("auth", data.get("auth", cls.auth), ("required", "off")),
            link_ttl_seconds=seconds("link_ttl_seconds", data.get("link_ttl_seconds", cls.link_ttl_seconds)),
            key_max_concurrent=whole("key_max_concurrent", data.get("key_max_concurrent", cls.key_max_concurrent),
                                      1),
            log_format=choice("log_format", data["log_format"], ("json", "text")) if data.get("log_format") else None,
            drain_seconds=seconds("drain_seconds", data.get("drain_seconds", cls.drain_seconds)),
            export_slots=(None if data.get("export_slots") is None
                          else whole("export_slots", data["export_slots"], 1)),
            reserved_slots=whole("reserved_slots", data.get("reserved_slots", cls.reserved_slots), 1),
            send_timeout_seconds=seconds("send_timeout_seconds",
                                          data.get("send_timeout_seconds", cls.send_timeout_seconds)),
            statement_timeout_seconds=seconds_or_off("statement_timeout_seconds",
                                                      data.get("statement_timeout_seconds")),
            session_hours=seconds("session_hours", data.get("session_hours", cls.session_hours)),
            max_body_bytes=whole("max_body_bytes", data.get("max_body_bytes", cls.max_body_bytes), 1),
            trusted_proxies=networks("trusted_proxies", data.get("trusted_proxies", cls.trusted_proxies)),
            failed_auth_limit=whole("failed_auth_limit", data.get("failed_auth_limit", cls.failed_auth_limit), 1),
            failed_auth_window_seconds=seconds("failed_auth_window_seconds", data.get(
                "failed_auth_window_seconds", cls.failed_auth_window_seconds)),
            failed_auth_delay_seconds=seconds("failed_auth_delay_seconds", data.get(
                "failed_auth_delay_seconds", cls.failed_auth_delay_seconds)),
            export_log_backlog_rows=whole("export_log_backlog_rows",
                                          data.get("export_log_backlog_rows", cls.export_log_backlog_rows), 0),
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
                    "file_chunk_bytes", *FORMAT_SETTINGS, *JOB_SETTINGS, *AUTH_SETTINGS, *LIMIT_SETTINGS,
                    *REQUEST_SETTINGS):
            value = environ.get(f"EXPORTER_{key.upper()}")
            if value:
                data[key] = value
        return cls.from_dict(data, environ)


def default_copy_parallel() -> int:
    """Two COPY parts per core of this machine, at most DEFAULT_MAX_COPY_PARALLEL: on 2 cores 4 parts beat 2, since
    the first part is paced by its client while the others fill their spools (docs/internals.md "Parallel COPY")."""
    return max(1, min(2 * (os.cpu_count() or 1), DEFAULT_MAX_COPY_PARALLEL))
