"""The secret that signs browser sessions and their CSRF tokens, apart from the link secret so either can be
rotated alone

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    service_secrets = sa.table("service_secrets", sa.column("name", sa.Text), sa.column("value", sa.Text))
    op.bulk_insert(service_secrets, [{"name": "session", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.execute("DELETE FROM service_secrets WHERE name = 'session'")
