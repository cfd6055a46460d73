"""Web layer: console accounts (operators, customers' IT admins), setup links, sessions, pending SSO logins.

An independent branch from ``0001`` (migrations run ``upgrade heads``). Hand-written and frozen;
``storage/sql/web_tables.py`` defines the same tables and ``tests/storage/test_contract.py`` compares them.

Revision ID: 0002_web
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_web"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ctext(length: int | None = None) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _time() -> sa.types.TypeEngine[str]:
    return sa.String(27).with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "console_accounts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("email_ci", _ctext(320), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("created", _time(), nullable=False),
        sa.Column("last_login", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_console_accounts"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name="fk_console_accounts_tenant_id_tenants"),
        sa.UniqueConstraint("scope", "email_ci", name="uq_console_accounts_scope_email_ci"),
    )
    op.create_index("ix_console_accounts_tenant_id", "console_accounts", ["tenant_id"])
    op.create_table(
        "console_setup_links",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created", _time(), nullable=False),
        sa.Column("expires", _time(), nullable=False),
        sa.Column("used", _time(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_console_setup_links"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name="fk_console_setup_links_tenant_id_tenants"),
    )
    op.create_index("ix_console_setup_links_tenant_id", "console_setup_links", ["tenant_id"])
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=True),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", _ctext(64), nullable=True),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.Column("last_seen", _time(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name="pk_web_sessions"),
        sa.ForeignKeyConstraint(["account_id"], ["console_accounts.id"], ondelete="CASCADE",
                                name="fk_web_sessions_account_id_console_accounts"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name="fk_web_sessions_tenant_id_tenants"),
    )
    op.create_index("ix_web_sessions_tenant_id_user_id", "web_sessions", ["tenant_id", "user_id"])
    op.create_table(
        "web_pending_logins",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("expires", _time(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name="pk_web_pending_logins"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name="fk_web_pending_logins_tenant_id_tenants"),
    )


def downgrade() -> None:
    op.drop_table("web_pending_logins")
    op.drop_table("web_sessions")
    op.drop_index("ix_console_setup_links_tenant_id", "console_setup_links")
    op.drop_table("console_setup_links")
    op.drop_index("ix_console_accounts_tenant_id", "console_accounts")
    op.drop_table("console_accounts")
