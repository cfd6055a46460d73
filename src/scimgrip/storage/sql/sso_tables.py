"""Single-use keys of single sign-on (``storage.sql.sso_store``), on the shared :data:`metadata`.

One row per key that may be used once: a SAML assertion ID (replay protection, SAML Profiles §4.1.4.5) or an
OIDC ``state`` taken by the web layer. Rows expire with what they protect and are pruned. Created by migration
``0002_sso``; ``tests/storage/test_contract.py`` compares the two.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, String, Table

from scimgrip.storage.sql.tables import metadata

sso_replay = Table(
    "sso_replay", metadata,
    Column("key", String(200), primary_key=True),
    Column("expires_at", Float(), nullable=False),     # Unix time after which the key may be forgotten
    Index("ix_sso_replay_expires_at", "expires_at"),
)
