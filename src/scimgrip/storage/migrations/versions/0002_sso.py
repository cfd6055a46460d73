"""Single sign-on: the single-use keys of ``storage/sql/sso_store.py`` (SAML assertion IDs, OIDC states).

An independent branch from ``0001`` (migrations run ``upgrade heads``). Hand-written and frozen;
``storage/sql/sso_tables.py`` defines the same table and ``tests/storage/test_contract.py`` compares them.

Revision ID: 0002_sso
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sso"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sso_replay",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_sso_replay"),
    )
    op.create_index("ix_sso_replay_expires_at", "sso_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sso_replay_expires_at", table_name="sso_replay")
    op.drop_table("sso_replay")
