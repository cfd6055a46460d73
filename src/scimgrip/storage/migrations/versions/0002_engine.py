"""Provisioning engine state: jobs, links, escrow, pending references, staged deletes, logs, run locks.

An independent branch from ``0001`` (migrations run ``upgrade heads``). Hand-written like ``0001`` and frozen;
``storage/sql/engine_tables.py`` defines the same tables and ``tests/storage/test_contract.py`` compares them.

Revision ID: 0002_engine
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_engine"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ctext(length: int | None = None) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _big_pk() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.types.TypeEngine[str]:
    return sa.String(27).with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


def _bool() -> sa.Boolean:
    return sa.Boolean(create_constraint=False)


def _job_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["job_id"], ["engine_jobs.id"], name=f"fk_{table}_job_id_engine_jobs")


def upgrade() -> None:
    op.create_table(
        "engine_jobs",
        sa.Column("id", _big_pk(), primary_key=True, autoincrement=True),
        sa.Column("name", _ctext(255), nullable=False),
        sa.Column("config_text", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.Column("updated", _time(), nullable=False),
        sa.Column("watermark", sa.Text(), nullable=True),
        sa.Column("last_cycle_id", sa.String(64), nullable=True),
        sa.Column("last_cycle_started", _time(), nullable=True),
        sa.Column("last_cycle_ended", _time(), nullable=True),
        sa.Column("last_successful_cycle", _time(), nullable=True),
        sa.Column("last_successful_cycle_with_exports", _time(), nullable=True),
        sa.Column("next_cycle_at", _time(), nullable=True),
        sa.Column("steady_state_first", _time(), nullable=True),
        sa.Column("steady_state_last", _time(), nullable=True),
        sa.Column("counters", sa.Text(), nullable=False),
        sa.Column("progress", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("quarantine_reason", sa.String(64), nullable=True),
        sa.Column("quarantine_since", _time(), nullable=True),
        sa.Column("quarantine_level", sa.Integer(), nullable=False),
        sa.Column("quarantine_email_reason", sa.String(64), nullable=True),
        sa.Column("quarantine_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_engine_jobs"),
        sa.UniqueConstraint("name", name="uq_engine_jobs_name"),
    )
    op.create_table(
        "engine_links",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("object_type", _ctext(16), nullable=False),
        sa.Column("source_id", _ctext(255), nullable=False),
        sa.Column("target_id", _ctext(255), nullable=True),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("exported", sa.Text(), nullable=False),
        sa.Column("source_hash", sa.String(128), nullable=True),
        sa.Column("in_scope", _bool(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated", _time(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "object_type", "source_id", name="pk_engine_links"),
        _job_fk("engine_links"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_engine_links_job_id_target_id", "engine_links", ["job_id", "target_id"])
    op.create_table(
        "engine_escrow",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("object_type", _ctext(16), nullable=False),
        sa.Column("source_id", _ctext(255), nullable=False),
        sa.Column("is_reference", _bool(), nullable=False),
        sa.Column("reason_code", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed", _time(), nullable=False),
        sa.Column("last_failed", _time(), nullable=False),
        sa.Column("next_retry_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "object_type", "source_id", "is_reference", name="pk_engine_escrow"),
        _job_fk("engine_escrow"),
    )
    op.create_index("ix_engine_escrow_job_id_next_retry_at", "engine_escrow", ["job_id", "next_retry_at"])
    op.create_table(
        "engine_refs",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("holder_source_id", _ctext(255), nullable=False),
        sa.Column("target_source_id", _ctext(255), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "kind", "holder_source_id", "target_source_id", name="pk_engine_refs"),
        _job_fk("engine_refs"),
    )
    op.create_index("ix_engine_refs_job_id_target_source_id", "engine_refs", ["job_id", "target_source_id"])
    op.create_table(
        "engine_staged",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("object_type", _ctext(16), nullable=False),
        sa.Column("source_id", _ctext(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("staged_at", _time(), nullable=False),
        sa.Column("approved", _bool(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "object_type", "source_id", name="pk_engine_staged"),
        _job_fk("engine_staged"),
    )
    op.create_table(
        "engine_logs",
        sa.Column("id", _big_pk(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("cycle_id", _ctext(64), nullable=False),
        sa.Column("change_id", _ctext(64), nullable=False),
        sa.Column("at", _time(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("object_type", _ctext(16), nullable=False),
        sa.Column("source_id", _ctext(255), nullable=False),
        sa.Column("source_display", sa.Text(), nullable=True),
        sa.Column("source_display_ci", _ctext(), nullable=True),
        sa.Column("target_id", _ctext(255), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("steps", sa.Text(), nullable=False),
        sa.Column("modified", sa.Text(), nullable=False),
        sa.Column("calls", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_engine_logs"),
        _job_fk("engine_logs"),
    )
    for cols in (["job_id", "id"], ["job_id", "source_id"], ["job_id", "target_id"],
                 ["job_id", "source_display_ci"], ["job_id", "at"], ["job_id", "cycle_id"]):
        op.create_index("ix_engine_logs_" + "_".join(cols), "engine_logs", cols)
    op.create_table(
        "engine_locks",
        sa.Column("name", _ctext(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("acquired", _time(), nullable=False),
        sa.Column("expires", _time(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_engine_locks"),
    )


def downgrade() -> None:
    for table in ("engine_locks", "engine_logs", "engine_staged", "engine_refs", "engine_escrow", "engine_links",
                  "engine_jobs"):
        op.drop_table(table)
