"""Admission holds (each running download's place under its key's limit, shared by every process and replica) and
browser sessions (live until signed out or expired, so a sign-out ends a session on every replica)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "download_holds",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_download_holds_key_id", "download_holds", ["key_id"])
    op.create_index("ix_download_holds_expires_at", "download_holds", ["expires_at"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_expires_at", "sessions")
    op.drop_table("sessions")
    op.drop_index("ix_download_holds_expires_at", "download_holds")
    op.drop_index("ix_download_holds_key_id", "download_holds")
    op.drop_table("download_holds")
