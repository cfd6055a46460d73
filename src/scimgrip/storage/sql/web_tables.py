"""The web layer's tables (console accounts, setup links, sessions, pending SSO logins), on the shared
:data:`metadata`.

Secrets are never stored: a session id, a setup-link token and a pending-login key are kept as SHA-256 hex
(they are 256 random bits, so a fast hash is enough, as for Secret Tokens); passwords as argon2id hashes.
Every tenant-bound row cascades with its tenant, so ``delete_tenant`` needs no knowledge of them. Created by
migration ``0002_web``; ``tests/storage/test_contract.py`` compares the two.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, String, Table, Text, UniqueConstraint

from scimgrip.storage.sql.tables import UtcDateTime, ctext, metadata

console_accounts = Table(
    "console_accounts", metadata,
    Column("id", String(64), primary_key=True),                       # "acc_…"
    Column("kind", String(16), nullable=False),                       # operator | tenant_admin
    Column("tenant_id", BigInteger(), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    Column("scope", String(64), nullable=False),                      # "operator" or "tenant:<id>"
    Column("email", Text(), nullable=False),
    Column("email_ci", ctext(320), nullable=False),
    Column("password_hash", Text(), nullable=True),                   # argon2id; NULL: SSO only
    Column("created", UtcDateTime(), nullable=False),
    Column("last_login", UtcDateTime(), nullable=True),
    UniqueConstraint("scope", "email_ci"),
    Index(None, "tenant_id"),
)

console_setup_links = Table(
    "console_setup_links", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("tenant_id", BigInteger(), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("created_by", String(64), nullable=True),                  # operator account id
    Column("created", UtcDateTime(), nullable=False),
    Column("expires", UtcDateTime(), nullable=False),
    Column("used", UtcDateTime(), nullable=True),
    Index(None, "tenant_id"),
)

web_sessions = Table(
    "web_sessions", metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),                       # operator | tenant_admin | user
    Column("account_id", String(64), ForeignKey("console_accounts.id", ondelete="CASCADE"), nullable=True),
    Column("tenant_id", BigInteger(), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    Column("user_id", ctext(64), nullable=True),                      # SCIM user id (kind user)
    Column("csrf", String(64), nullable=False),
    Column("created", UtcDateTime(), nullable=False),
    Column("last_seen", UtcDateTime(), nullable=False),
    Column("data", Text(), nullable=False),                           # JSON: display name, SSO protocol, …
    Index(None, "tenant_id", "user_id"),
)

pending_logins = Table(
    "web_pending_logins", metadata,
    Column("key_hash", String(64), primary_key=True),                 # OIDC state / SAML request id, hashed
    Column("tenant_id", BigInteger(), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("data", Text(), nullable=False),                           # JSON: what the relying party needs back
    Column("expires", UtcDateTime(), nullable=False),
)

WEB_TABLES = (console_accounts, console_setup_links, web_sessions, pending_logins)
