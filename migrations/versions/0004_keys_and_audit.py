"""API keys, job owners, the secret that signs result links, and the export log as the audit log

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("grants", sa.JSON, nullable=False),
        sa.Column("restrictions", sa.JSON, nullable=False),
        sa.Column("max_concurrent", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    secrets_table = op.create_table(
        "service_secrets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.bulk_insert(secrets_table, [{"name": "link", "value": secrets.token_hex(32)}])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner_key", sa.Text, nullable=True))
        batch.add_column(sa.Column("restriction", sa.JSON, nullable=True))
    with op.batch_alter_table("export_log") as batch:
        batch.add_column(sa.Column("kind", sa.Text, nullable=True))
        batch.add_column(sa.Column("key_name", sa.Text, nullable=True))
        batch.add_column(sa.Column("resource", sa.Text, nullable=True))
    op.create_index("ix_export_log_key_name", "export_log", ["key_name"])


def downgrade() -> None:
    op.drop_index("ix_export_log_key_name", "export_log")
    with op.batch_alter_table("export_log") as batch:
        batch.drop_column("resource")
        batch.drop_column("key_name")
        batch.drop_column("kind")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("restriction")
        batch.drop_column("owner_key")
    op.drop_table("service_secrets")
    op.drop_table("api_keys")
