"""The shared rate-limit counters (``storage.sql.ratelimit``), on the shared :data:`metadata`.

One row per bucket: a per-tenant token bucket (``tenant:<id>``) or a per-client failed-authentication window
(``authfail:<ip>``). Counters are not data: losing them on a crash only resets a limit. Created by migration
``0002_ratelimit``; ``tests/storage/test_contract.py`` compares the two.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, String, Table

from scimgrip.storage.sql.tables import metadata

rate_limits = Table(
    "rate_limits", metadata,
    Column("bucket", String(128), primary_key=True),
    Column("tokens", Float(), nullable=False),       # token bucket: tokens left; window: failures counted
    Column("updated", Float(), nullable=False),      # Unix time of the last refill / the window start
)
