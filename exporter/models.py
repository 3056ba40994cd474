"""Typed tables: the service's own (tracked by migrations/) and the demo `orders` (created by seed-demo)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CHAR, JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, Numeric, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The service's own tables; `alembic upgrade head` creates them."""


class DemoBase(DeclarativeBase):
    """Demo tables; only `exporter seed-demo` creates them, so production databases never get them."""


class ExportLogEntry(Base):
    """One row per export, written when it ends however it ends."""

    __tablename__ = "export_log"
    __table_args__ = (Index("ix_export_log_started_at", "started_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    dataset: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(Text)  # completed | aborted (by the client) | failed
    path: Mapped[str | None] = mapped_column(Text)  # copy (PostgreSQL COPY) | adbc (ADBC into Arrow) | generic (cursor)
    rows: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    duration_seconds: Mapped[float] = mapped_column(Float)
    client_address: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


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
