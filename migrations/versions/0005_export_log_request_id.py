"""export log: the request id, to follow one download from its log lines to its row

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_log") as batch:
        batch.add_column(sa.Column("request_id", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_log") as batch:
        batch.drop_column("request_id")
