"""Shared rate-limit counters in the database, so every uvicorn worker (and every host on one PostgreSQL)
sees the same numbers.

* :meth:`RateLimitStore.take` — a token bucket per key (``rate`` tokens per second, at most ``burst``), one
  ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` per request. The stored ``tokens`` is the bucket minus one:
  ``>= 0`` means the request took a token; ``< 0`` means it was refused and the bucket (``tokens + 1``) is
  unchanged, so a refused request costs nothing and a client retrying too fast is not locked out.
* :meth:`RateLimitStore.count` — a fixed window counter per key (failed authentications per client).

Counters are not data: the statements run with durability off (SQLite ``synchronous=OFF`` on their own
connections, PostgreSQL ``synchronous_commit=off``), so they cost no fsync. A crash can only reset a limit.
On SQLite the counter needs the database's write lock; it waits at most ``SQLITE_COUNTER_BUSY_MS`` for a SCIM
write holding it and otherwise lets the request through uncounted, so reads never queue behind long writes.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from scimgrip.storage.base import Storage
from scimgrip.storage.sql.dialects import WRITE, is_retryable, make_engine, with_retries
from scimgrip.storage.sql.ratelimit_tables import rate_limits

_TAKE = {
    "sqlite": """
INSERT INTO rate_limits (bucket, tokens, updated) VALUES (:b, :burst - 1, :now)
ON CONFLICT (bucket) DO UPDATE SET
  tokens = min(:burst, (CASE WHEN tokens < 0 THEN tokens + 1 ELSE tokens END)
                       + max(0, :now - updated) * :rate) - 1,
  updated = max(updated, :now)
RETURNING tokens""",
    "postgresql": """
INSERT INTO rate_limits AS r (bucket, tokens, updated) VALUES (:b, :burst - 1, :now)
ON CONFLICT (bucket) DO UPDATE SET
  tokens = LEAST(:burst, (CASE WHEN r.tokens < 0 THEN r.tokens + 1 ELSE r.tokens END)
                         + GREATEST(0, :now - r.updated) * :rate) - 1,
  updated = GREATEST(r.updated, :now)
RETURNING tokens""",
}

_COUNT = """
INSERT INTO rate_limits {alias} (bucket, tokens, updated) VALUES (:b, 1, :now)
ON CONFLICT (bucket) DO UPDATE SET
  tokens = CASE WHEN :now - {t}.updated >= :window THEN 1 ELSE {t}.tokens + 1 END,
  updated = CASE WHEN :now - {t}.updated >= :window THEN :now ELSE {t}.updated END
RETURNING tokens, updated"""
_COUNTS = {"sqlite": _COUNT.format(alias="", t="rate_limits"),
           "postgresql": _COUNT.format(alias="AS r", t="r")}

PRUNE_AFTER_SECONDS = 3600.0
SQLITE_COUNTER_BUSY_MS = 1000


class RateLimitStore:
    """Token buckets and window counters in the ``rate_limits`` table of ``storage``'s database."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.busy_skips = 0         # SQLite: counter updates skipped because a writer held the lock

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> Engine:
        shared: Engine = getattr(self.storage, "engine")  # noqa: B009 - SqlStorage only
        url = make_url(shared.url)
        if shared.dialect.name == "postgresql":
            return create_engine(url, pool_size=4, max_overflow=16, pool_pre_ping=True,
                                 isolation_level="AUTOCOMMIT",
                                 connect_args={"options": "-c synchronous_commit=off"})
        if url.database in (None, "", ":memory:"):
            return shared      # an in-memory database exists only on the storage's own connection
        # not in the writer queue: a counter gives up after SQLITE_COUNTER_BUSY_MS instead of queueing
        engine = make_engine(url.render_as_string(hide_password=False), writer_queue=False)

        @event.listens_for(engine, "connect")
        def _no_fsync(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("PRAGMA synchronous=OFF")
                # a counter never waits long behind a SCIM write holding SQLite's write lock: past this
                # the request is admitted uncounted (WAL readers must not queue behind writers)
                cur.execute(f"PRAGMA busy_timeout={SQLITE_COUNTER_BUSY_MS}")
            finally:
                cur.close()

        return engine

    def _run(self, sql: str, params: dict[str, Any]) -> Any:
        """One counter statement; ``None`` when SQLite's write lock stayed busy (the caller admits)."""
        engine = self.engine

        def run() -> Any:
            with engine.connect() as conn:
                if engine.dialect.name == "sqlite":
                    conn.execution_options(**WRITE)
                with conn.begin():
                    return conn.execute(text(sql), params).one()

        if engine.dialect.name != "sqlite":
            return with_retries(run)
        try:
            return run()
        except OperationalError as exc:
            if is_retryable(exc):
                self.busy_skips += 1
                return None
            raise

    def take(self, key: str, rate: float, burst: float, now: float) -> float:
        """Take one token from bucket ``key``: 0.0 if taken, else the seconds until one is available."""
        row = self._run(_TAKE[self.engine.dialect.name],
                        {"b": key, "burst": float(max(burst, 1.0)), "now": now, "rate": rate})
        tokens = float(row[0]) if row is not None else 0.0
        return 0.0 if tokens >= 0 else -tokens / rate if rate > 0 else 3600.0

    def count(self, key: str, window: float, now: float) -> tuple[int, float]:
        """Count one event in ``key``'s current fixed window: (events in the window, seconds until it ends)."""
        row = self._run(_COUNTS[self.engine.dialect.name], {"b": key, "now": now, "window": window})
        if row is None:
            return 0, 0.0
        if random.random() < 0.01:
            self.prune(now)
        return int(row[0]), max(window - (now - float(row[1])), 0.0)

    def prune(self, now: float) -> None:
        """Drop counters untouched for an hour (one row per client address would otherwise accumulate)."""
        def run() -> None:
            with self.engine.connect() as conn:
                if self.engine.dialect.name == "sqlite":
                    conn.execution_options(**WRITE)
                with conn.begin():
                    conn.execute(rate_limits.delete().where(rate_limits.c.updated < now - PRUNE_AFTER_SECONDS))

        with_retries(run)

    def close(self) -> None:
        if self._engine is not None and self._engine is not getattr(self.storage, "engine", None):
            self._engine.dispose()
