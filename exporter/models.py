"""Typed tables: the service's own (tracked by migrations/) and the demo `orders` (created by seed-demo)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import (
    CHAR,
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The service's own tables; `alembic upgrade head` creates them."""


class DemoBase(DeclarativeBase):
    """Demo tables; only `exporter seed-demo` creates them, so production databases never get them."""


class UTCDateTime(TypeDecorator[datetime]):
    """timestamptz on PostgreSQL; on SQLite, which keeps no offset, naive UTC text read back as UTC. Values
    compare correctly in SQL on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ApiKey(Base):
    """An API key: the SHA-256 of its secret (never the token), its grants, its restrictions by dataset."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # the token's key id, in hex
    name: Mapped[str] = mapped_column(Text, unique=True)
    secret_hash: Mapped[str] = mapped_column(Text)
    grants: Mapped[list[str]] = mapped_column(JSON)
    restrictions: Mapped[dict[str, dict[str, object]]] = mapped_column(JSON)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ServiceSecret(Base):
    """Random secrets the replicas of one database share, made by the migrations (`link`: signs result links;
    `session`: signs browser sessions and their CSRF tokens)."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DownloadHold(Base):
    """A running download's place under its key's max_concurrent, for every process and replica to count. Its
    process renews `expires_at` while the download runs and deletes the row when it ends; a crashed process's
    holds lapse."""

    __tablename__ = "download_holds"
    __table_args__ = (Index("ix_download_holds_key_id", "key_id"),
                      Index("ix_download_holds_expires_at", "expires_at"))

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    key_id: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BrowserSession(Base):
    """A signed-in browser session, live until it expires or is signed out (the row is deleted)."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    key_id: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    """An export run in the background. `state` is queued, running, succeeded, failed, cancelled or expired;
    a running job belongs to `lease_owner` until `lease_expires_at`. `last_event_id` numbers its events."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created_at", "state", "created_at"),
                      Index("ix_jobs_created_at", "created_at"))

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    dataset: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text)
    params: Mapped[list[list[str]] | dict[str, str]] = mapped_column(JSON)  # (name, value) pairs; once an object
    state: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    result_size: Mapped[int | None] = mapped_column(BigInteger)
    result_sha256: Mapped[str | None] = mapped_column(Text)
    result_rows: Mapped[int | None] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(Text, unique=True)
    request_digest: Mapped[str] = mapped_column(Text)  # sha256 of the canonical request, for idempotency
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    owner_key: Mapped[str | None] = mapped_column(Text)  # the key that submitted it; None with auth off
    restriction: Mapped[dict[str, object] | None] = mapped_column(JSON)  # that key's, on this dataset


class JobEvent(Base):
    """One event of a job's stream, as sent: `id` increases strictly within the job; `data` is one line of
    JSON."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(Text, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(Text)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ExportLogEntry(Base):
    """One row per download (export, file, relay, job submission, job result), written when it ends however it
    ends, and one per refused request: the audit log."""

    __tablename__ = "export_log"
    __table_args__ = (Index("ix_export_log_started_at", "started_at"), Index("ix_export_log_key_name", "key_name"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    dataset: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(Text)  # completed | aborted (by the client) | failed | denied | limited
    path: Mapped[str | None] = mapped_column(Text)  # copy (PostgreSQL COPY) | adbc (ADBC into Arrow) | generic (cursor)
    rows: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    duration_seconds: Mapped[float] = mapped_column(Float)
    client_address: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(Text)  # export | file | relay | job | job_result
    key_name: Mapped[str | None] = mapped_column(Text)
    resource: Mapped[str | None] = mapped_column(Text)  # a file's or relayed path; a job's id
    request_id: Mapped[str | None] = mapped_column(Text)  # X-Request-ID, as on the request's log lines


class Order(DemoBase):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(CHAR(3))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    shipped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    country: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    is_gift: Mapped[bool] = mapped_column(Boolean)
