"""Rate limiting: the shared counters of ``storage/sql/ratelimit.py`` (per-tenant token buckets, failed
authentications per client).

An independent branch from ``0001`` (migrations run ``upgrade heads``). Hand-written and frozen;
``storage/sql/ratelimit_tables.py`` defines the same table and ``tests/storage/test_contract.py`` compares them.

Revision ID: 0002_ratelimit
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_ratelimit"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("bucket", sa.String(128), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name="pk_rate_limits"),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
