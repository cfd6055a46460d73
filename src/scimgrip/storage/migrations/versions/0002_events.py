"""Events (issue 7): outbox, per-tenant sequences, app API keys, webhook endpoints, cursors, deliveries, attempts.

Hand-written like 0001 and an independent branch from it (applied with ``upgrade heads``);
``tests/storage/test_contract.py`` checks the result equals ``storage/sql/tables.py``.

Revision ID: 0002_events
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_events"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ctext(length: int | None = None) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _big_pk() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.types.TypeEngine[str]:
    return sa.String(27).with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(16), nullable=False),
        sa.Column("resource_id", _ctext(64), nullable=False),
        sa.Column("occurred", _time(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name="pk_events"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "event_sequences",
        sa.Column("tenant_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("pruned_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_event_sequences"),
    )
    op.create_table(
        "app_api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("key_hash", sa.String(128), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.Column("revoked", _time(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_app_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_app_api_keys_key_hash"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_expires", _time(), nullable=True),
        sa.Column("created", _time(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoints"),
    )
    op.create_index("ix_webhook_endpoints_tenant_id", "webhook_endpoints", ["tenant_id"])
    op.create_table(
        "webhook_cursors",
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_id", "tenant_id", name="pk_webhook_cursors"),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE",
                                name="fk_webhook_cursors_endpoint_id_webhook_endpoints"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _big_pk(), primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("resource_id", _ctext(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", _time(), nullable=False),
        sa.Column("lease_until", _time(), nullable=True),
        sa.Column("created", _time(), nullable=False),
        sa.Column("delivered", _time(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE",
                                name="fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
        sa.UniqueConstraint("endpoint_id", "tenant_id", "seq",
                            name="uq_webhook_deliveries_endpoint_id_tenant_id_seq"),
    )
    op.create_index("ix_webhook_deliveries_status_next_attempt", "webhook_deliveries", ["status", "next_attempt"])
    op.create_index("ix_webhook_deliveries_endpoint_id_tenant_id_resource_id_seq", "webhook_deliveries",
                    ["endpoint_id", "tenant_id", "resource_id", "seq"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", _big_pk(), primary_key=True, autoincrement=True),
        sa.Column("delivery_id", _big_pk(), nullable=False),
        sa.Column("at", _time(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"], ondelete="CASCADE",
                                name="fk_webhook_attempts_delivery_id_webhook_deliveries"),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id"])


def downgrade() -> None:
    for table in ("webhook_attempts", "webhook_deliveries", "webhook_cursors", "webhook_endpoints", "app_api_keys",
                  "event_sequences", "events"):
        op.drop_table(table)
