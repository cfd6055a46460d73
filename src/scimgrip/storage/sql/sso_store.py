"""Single-use keys for single sign-on, shared by every worker through the database.

* :meth:`SqlReplayCache.seen_once` — records a key until ``expires_at``; True the first time, False while it is
  remembered. The SAML service provider uses it for assertion IDs (SAML Profiles §4.1.4.5: an assertion is
  consumed once); the web layer uses it to register an OIDC ``state``.
* :meth:`SqlReplayCache.take` — consumes a registered key: True exactly once, False if it was never registered,
  already taken or expired (OIDC ``state`` single use, RFC 6749 §10.12).

One ``INSERT … ON CONFLICT`` / ``DELETE … RETURNING`` statement each, so two workers racing on the same key
get one winner from the database's unique index, never from a read-then-write.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, delete
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from scimgrip.storage.base import Storage
from scimgrip.storage.sql.dialects import Transactions
from scimgrip.storage.sql.sso_tables import sso_replay

MAX_KEY_LENGTH = 200
PRUNE_PROBABILITY = 0.02


class SqlReplayCache(Transactions):
    """The ``sso_replay`` table of ``storage``'s database (implements ``scimgrip.sso.saml.ReplayCache``)."""

    def __init__(self, storage: Storage, *, clock: Callable[[], float] = time.time) -> None:
        engine: Engine = getattr(storage, "engine")  # noqa: B009 - SqlStorage only
        self._init_transactions(engine)
        self.clock = clock

    @staticmethod
    def _check(key: str) -> None:
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ValueError(f"a replay key must have 1 to {MAX_KEY_LENGTH} characters")

    def seen_once(self, key: str, expires_at: float) -> bool:
        """True if ``key`` was not remembered (it is now, until ``expires_at``); False if it was."""
        self._check(key)
        now = self.clock()
        ins: Any = (pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert)(sso_replay)
        # an expired row is a forgotten key: it may be recorded again (its holder is refused as expired anyway)
        stmt = ins.values(key=key, expires_at=expires_at).on_conflict_do_update(
            index_elements=[sso_replay.c.key], set_={"expires_at": ins.excluded.expires_at},
            where=sso_replay.c.expires_at < now,
        ).returning(sso_replay.c.key)

        def run(conn: Connection) -> bool:
            return conn.execute(stmt).first() is not None

        first = self._write(run)
        if random.random() < PRUNE_PROBABILITY:
            self.prune()
        return first

    def take(self, key: str) -> bool:
        """Consume ``key``: True exactly once for a key recorded by :meth:`seen_once` and not yet expired."""
        self._check(key)
        now = self.clock()
        stmt = delete(sso_replay).where(sso_replay.c.key == key).returning(sso_replay.c.expires_at)

        def run(conn: Connection) -> bool:
            row = conn.execute(stmt).first()
            return row is not None and float(row[0]) >= now

        return self._write(run)

    def prune(self) -> int:
        """Forget expired keys; returns how many."""
        now = self.clock()

        def run(conn: Connection) -> int:
            return conn.execute(delete(sso_replay).where(sso_replay.c.expires_at < now)).rowcount

        return self._write(run)
