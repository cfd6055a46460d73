"""Tables of the provisioning engine's state (``scimgrip.engine.state``), on the shared :data:`metadata`.

Kept apart from ``tables.py`` so the SCIM schema and the engine schema evolve independently; migration
``0002_engine`` creates exactly these (``tests/storage/test_contract.py`` compares them).

* ``engine_links`` is clustered on ``(job_id, object_type, source_id)`` (SQLite ``WITHOUT ROWID``) so the
  per-cycle bulk reads by source id and the streamed scans are range reads of the primary key.
* ``engine_logs`` has a surrogate id (LOG-1 ``id``) and indexes for the LOG-2 searches: by id (paging), by source
  id, target id, display name, and time (retention pruning, ``since``/``until``).
* ``engine_locks`` holds the per-job run locks (CYC-8): one row per held lock, with an expiry.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from scimgrip.storage.sql.tables import UtcDateTime, big_pk, ctext, metadata

engine_jobs = Table(
    "engine_jobs", metadata,
    Column("id", big_pk(), primary_key=True, autoincrement=True),
    Column("name", ctext(255), nullable=False),
    Column("config_text", Text(), nullable=False),
    Column("fingerprint", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created", UtcDateTime(), nullable=False),
    Column("updated", UtcDateTime(), nullable=False),
    Column("watermark", Text(), nullable=True),
    Column("last_cycle_id", String(64), nullable=True),
    Column("last_cycle_started", UtcDateTime(), nullable=True),
    Column("last_cycle_ended", UtcDateTime(), nullable=True),
    Column("last_successful_cycle", UtcDateTime(), nullable=True),
    Column("last_successful_cycle_with_exports", UtcDateTime(), nullable=True),
    Column("next_cycle_at", UtcDateTime(), nullable=True),
    Column("steady_state_first", UtcDateTime(), nullable=True),
    Column("steady_state_last", UtcDateTime(), nullable=True),
    Column("counters", Text(), nullable=False),
    Column("progress", Text(), nullable=False),
    Column("state", Text(), nullable=False),
    Column("quarantine_reason", String(64), nullable=True),
    Column("quarantine_since", UtcDateTime(), nullable=True),
    Column("quarantine_level", Integer(), nullable=False),
    Column("quarantine_email_reason", String(64), nullable=True),
    Column("quarantine_error", Text(), nullable=True),
    UniqueConstraint("name"),
)

engine_links = Table(
    "engine_links", metadata,
    Column("job_id", BigInteger(), ForeignKey("engine_jobs.id"), nullable=False),
    Column("object_type", ctext(16), nullable=False),
    Column("source_id", ctext(255), nullable=False),
    Column("target_id", ctext(255), nullable=True),
    Column("display_name", Text(), nullable=True),
    Column("exported", Text(), nullable=False),
    Column("source_hash", String(128), nullable=True),
    Column("in_scope", Boolean(create_constraint=False), nullable=False),
    Column("state", String(16), nullable=False),
    Column("updated", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("job_id", "object_type", "source_id"),
    Index(None, "job_id", "target_id"),
    sqlite_with_rowid=False,
)

engine_escrow = Table(
    "engine_escrow", metadata,
    Column("job_id", BigInteger(), ForeignKey("engine_jobs.id"), nullable=False),
    Column("object_type", ctext(16), nullable=False),
    Column("source_id", ctext(255), nullable=False),
    Column("is_reference", Boolean(create_constraint=False), nullable=False),
    Column("reason_code", String(128), nullable=False),
    Column("detail", Text(), nullable=True),
    Column("attempts", Integer(), nullable=False),
    Column("first_failed", UtcDateTime(), nullable=False),
    Column("last_failed", UtcDateTime(), nullable=False),
    Column("next_retry_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("job_id", "object_type", "source_id", "is_reference"),
    Index(None, "job_id", "next_retry_at"),
)

engine_refs = Table(
    "engine_refs", metadata,
    Column("job_id", BigInteger(), ForeignKey("engine_jobs.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("holder_source_id", ctext(255), nullable=False),
    Column("target_source_id", ctext(255), nullable=False),
    Column("created", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("job_id", "kind", "holder_source_id", "target_source_id"),
    Index(None, "job_id", "target_source_id"),
)

engine_staged = Table(
    "engine_staged", metadata,
    Column("job_id", BigInteger(), ForeignKey("engine_jobs.id"), nullable=False),
    Column("object_type", ctext(16), nullable=False),
    Column("source_id", ctext(255), nullable=False),
    Column("action", String(16), nullable=False),
    Column("staged_at", UtcDateTime(), nullable=False),
    Column("approved", Boolean(create_constraint=False), nullable=False),
    PrimaryKeyConstraint("job_id", "object_type", "source_id"),
)

engine_logs = Table(
    "engine_logs", metadata,
    Column("id", big_pk(), primary_key=True, autoincrement=True),
    Column("job_id", BigInteger(), ForeignKey("engine_jobs.id"), nullable=False),
    Column("cycle_id", ctext(64), nullable=False),
    Column("change_id", ctext(64), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("duration_ms", Float(), nullable=False),
    Column("object_type", ctext(16), nullable=False),
    Column("source_id", ctext(255), nullable=False),
    Column("source_display", Text(), nullable=True),
    Column("source_display_ci", ctext(), nullable=True),
    Column("target_id", ctext(255), nullable=True),
    Column("action", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(128), nullable=True),
    Column("detail", Text(), nullable=True),
    Column("steps", Text(), nullable=False),
    Column("modified", Text(), nullable=False),
    Column("calls", Text(), nullable=False),
    Index(None, "job_id", "id"),
    Index(None, "job_id", "source_id"),
    Index(None, "job_id", "target_id"),
    Index(None, "job_id", "source_display_ci"),
    Index(None, "job_id", "at"),
    Index(None, "job_id", "cycle_id"),
)

engine_locks = Table(
    "engine_locks", metadata,
    Column("name", ctext(255), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("acquired", UtcDateTime(), nullable=False),
    Column("expires", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("name"),
)

ENGINE_TABLES = (engine_jobs, engine_links, engine_escrow, engine_refs, engine_staged, engine_logs, engine_locks)

__all__ = ["ENGINE_TABLES", "engine_escrow", "engine_jobs", "engine_links", "engine_locks", "engine_logs",
           "engine_refs", "engine_staged"]
