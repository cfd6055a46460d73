"""The SQL schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Why these shapes:

* Searchable attributes live in real columns (``user_name_ci``, ``display_name_ci``, …) pre-lowered in Python so
  plain B-tree indexes answer case-insensitive filters; ``lower(col)`` in SQL would defeat them.
* Multi-valued values (emails, phoneNumbers, …) are rows in ``resource_values`` and memberships are rows in
  ``group_members``, so ``emails[type eq "work"].value eq "x"`` and member add/remove are index operations and a
  100k-member group is never loaded or rewritten.
* Text columns use the ``"C"`` collation on PostgreSQL so ordering and ``gt``/``lt`` are by code point, as on
  SQLite (BINARY) and in the in-memory evaluator, and so ``LIKE 'x%'`` can use the index.
* Time is :class:`UtcDateTime`: ``timestamptz`` on PostgreSQL, a fixed-width UTC ISO string on SQLite, so that
  string comparison there is chronological and values round-trip to the microsecond.
* The naming convention uses ``%(column_0_N_name)s``: ``%(column_0_name)s`` gives two composite constraints
  the same name, which PostgreSQL rejects (stack-notes §5).

``migrations/versions/0001_initial.py`` creates the same schema by hand; a test compares the two.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def ctext(length: int | None = None) -> TypeEngine[str]:
    """A string column compared by code point on both dialects (``COLLATE "C"`` on PostgreSQL)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


def big_pk() -> TypeEngine[int]:
    """BIGINT on PostgreSQL; INTEGER on SQLite so that the column is the rowid alias."""
    return BigInteger().with_variant(Integer(), "sqlite")


DATETIME_WIDTH = 27  # "YYYY-MM-DDTHH:MM:SS.ffffffZ"


def format_utc(value: dt.datetime) -> str:
    """Fixed-width UTC text: lexicographic order is chronological order."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    v = value.astimezone(dt.UTC)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond:06d}Z")


def parse_utc(text: str) -> dt.datetime:
    t = text[:-1] + "+00:00" if text.endswith("Z") else text
    d = dt.datetime.fromisoformat(t)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.astimezone(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes in Python; ``timestamptz`` on PostgreSQL, fixed-width text elsewhere."""

    impl = String(DATETIME_WIDTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(String(DATETIME_WIDTH))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        if dialect.name == "postgresql":
            return value.astimezone(dt.UTC)
        return format_utc(value)

    def process_literal_param(self, value: dt.datetime | None, dialect: Dialect) -> str:
        if value is None:
            return "NULL"
        return "'" + format_utc(value) + "'"

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return parse_utc(value)
        when: dt.datetime = value
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC)


tenants = Table(
    "tenants", metadata,
    Column("id", big_pk(), primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("name_ci", ctext(255), nullable=False),
    Column("created", UtcDateTime(), nullable=False),
    Column("settings", Text(), nullable=False),
    UniqueConstraint("name_ci"),
)

tokens = Table(
    "tokens", metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", BigInteger(), ForeignKey("tenants.id"), nullable=False),
    Column("token_hash", String(128), nullable=False),
    Column("created", UtcDateTime(), nullable=False),
    Column("expires", UtcDateTime(), nullable=True),
    Column("revoked", UtcDateTime(), nullable=True),
    Column("last_used", UtcDateTime(), nullable=True),
    Column("description", Text(), nullable=False),
    UniqueConstraint("token_hash"),
    Index(None, "tenant_id"),
)

resources = Table(
    "resources", metadata,
    Column("pk", big_pk(), primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger(), ForeignKey("tenants.id"), nullable=False),
    Column("resource_type", ctext(16), nullable=False),
    Column("id", ctext(64), nullable=False),
    Column("user_name", Text(), nullable=True),
    Column("user_name_ci", ctext(), nullable=True),
    Column("external_id", ctext(), nullable=True),
    Column("display_name", Text(), nullable=True),
    Column("display_name_ci", ctext(), nullable=True),
    Column("active", Boolean(create_constraint=False), nullable=True),
    Column("created", UtcDateTime(), nullable=False),
    Column("last_modified", UtcDateTime(), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("doc", Text(), nullable=False),
    UniqueConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "user_name_ci"),
    Index(None, "tenant_id", "resource_type", "external_id"),
    Index(None, "tenant_id", "resource_type", "display_name_ci"),
    Index(None, "tenant_id", "resource_type", "pk"),
)

resource_values = Table(
    "resource_values", metadata,
    Column("resource_pk", big_pk(), ForeignKey("resources.pk", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", BigInteger(), nullable=False),
    Column("attr", ctext(64), nullable=False),          # lower-cased attribute name: "emails", "phonenumbers"
    Column("type_ci", ctext(), nullable=True),
    Column("value", ctext(), nullable=True),
    Column("value_ci", ctext(), nullable=True),
    Index(None, "tenant_id", "attr", "value_ci"),
    Index(None, "resource_pk"),
)

group_members = Table(
    "group_members", metadata,
    Column("tenant_id", BigInteger(), nullable=False),
    Column("group_id", ctext(64), nullable=False),
    Column("member_id", ctext(64), nullable=False),
    Column("member_type", String(16), nullable=False),
    PrimaryKeyConstraint("tenant_id", "group_id", "member_id"),
    ForeignKeyConstraint(["tenant_id", "group_id"], ["resources.tenant_id", "resources.id"], ondelete="CASCADE"),
    ForeignKeyConstraint(["tenant_id", "member_id"], ["resources.tenant_id", "resources.id"], ondelete="CASCADE"),
    Index(None, "tenant_id", "member_id"),
    sqlite_with_rowid=False,   # clustered on the primary key; the member index then covers group_id too
)

request_log = Table(
    "request_log", metadata,
    Column("id", big_pk(), primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger(), nullable=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("method", String(16), nullable=False),
    Column("path", Text(), nullable=False),
    Column("status", Integer(), nullable=False),
    Column("duration_ms", Float(), nullable=False),
    Column("outcome", Text(), nullable=True),
    Column("detail", Text(), nullable=True),
    Column("request_body", Text(), nullable=True),
    Column("response_body", Text(), nullable=True),
    Index(None, "tenant_id", "id"),
)

ALL_TABLES = (tenants, tokens, resources, resource_values, group_members, request_log)

# ---------------------------------------------------------------------------------------------------------------
# events (issue 7): transactional outbox, app API keys, webhooks. Created by migration 0002_events.
# No foreign keys to ``tenants``: ``delete_tenant`` purges these rows explicitly (events_store.purge_tenant).
# ---------------------------------------------------------------------------------------------------------------
events = Table(
    "events", metadata,
    Column("tenant_id", BigInteger(), nullable=False),
    Column("seq", BigInteger(), nullable=False),              # per tenant, gap-free, in commit order
    Column("id", String(64), nullable=False),                 # "evt_…" (random): stable, the webhook-id
    Column("type", String(64), nullable=False),
    Column("resource_type", String(16), nullable=False),
    Column("resource_id", ctext(64), nullable=False),
    Column("occurred", UtcDateTime(), nullable=False),
    Column("data", Text(), nullable=False),                   # JSON: resource, previous_attributes, member
    PrimaryKeyConstraint("tenant_id", "seq"),
    sqlite_with_rowid=False,   # one B-tree: the outbox write touches as few pages as possible
)

event_sequences = Table(
    "event_sequences", metadata,
    Column("tenant_id", BigInteger(), primary_key=True, autoincrement=False),
    Column("last_seq", BigInteger(), nullable=False),         # its row lock orders a tenant's outbox writes
    Column("pruned_seq", BigInteger(), nullable=False),       # highest sequence removed by retention
)

app_api_keys = Table(
    "app_api_keys", metadata,
    Column("id", String(64), primary_key=True),               # "key_…"
    Column("tenant_id", BigInteger(), nullable=True),         # NULL: a global key (every tenant)
    Column("key_hash", String(128), nullable=False),          # hex SHA-256 of the key
    Column("created", UtcDateTime(), nullable=False),
    Column("revoked", UtcDateTime(), nullable=True),
    Column("description", Text(), nullable=False),
    UniqueConstraint("key_hash"),
)

webhook_endpoints = Table(
    "webhook_endpoints", metadata,
    Column("id", String(64), primary_key=True),               # "whk_…"
    Column("tenant_id", BigInteger(), nullable=True),         # NULL: every tenant
    Column("url", Text(), nullable=False),
    Column("event_types", Text(), nullable=False),            # JSON list; [] means every type
    Column("secret", Text(), nullable=False),                 # "whsec_…" (needed to sign: not hashable)
    Column("previous_secret", Text(), nullable=True),         # still signs until previous_secret_expires
    Column("previous_secret_expires", UtcDateTime(), nullable=True),
    Column("created", UtcDateTime(), nullable=False),
    Column("description", Text(), nullable=False),
    Index(None, "tenant_id"),
)

webhook_cursors = Table(
    "webhook_cursors", metadata,
    Column("endpoint_id", String(64), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", BigInteger(), nullable=False),
    Column("last_seq", BigInteger(), nullable=False),         # events up to here are fanned out
    PrimaryKeyConstraint("endpoint_id", "tenant_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("id", big_pk(), primary_key=True, autoincrement=True),
    Column("endpoint_id", String(64), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", BigInteger(), nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("resource_id", ctext(64), nullable=False),
    Column("status", String(16), nullable=False),             # pending | delivered | dead
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt", UtcDateTime(), nullable=False),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("created", UtcDateTime(), nullable=False),         # queued; from the first attempt: retry window start
    Column("delivered", UtcDateTime(), nullable=True),
    Column("last_status", Integer(), nullable=True),
    Column("last_error", Text(), nullable=True),
    UniqueConstraint("endpoint_id", "tenant_id", "seq"),
    Index(None, "status", "next_attempt"),
    Index(None, "endpoint_id", "tenant_id", "resource_id", "seq"),
)

webhook_attempts = Table(
    "webhook_attempts", metadata,
    Column("id", big_pk(), primary_key=True, autoincrement=True),
    Column("delivery_id", big_pk(), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("status_code", Integer(), nullable=True),
    Column("error", Text(), nullable=True),
    Column("duration_ms", Float(), nullable=False),
    Index(None, "delivery_id"),
)

EVENT_TABLES = (events, event_sequences, app_api_keys, webhook_endpoints, webhook_cursors, webhook_deliveries,
                webhook_attempts)
