"""PostgreSQL connections are pinged only after idling in the pool, and a dead idle connection is replaced."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from scimgrip.storage import open_storage
from scimgrip.storage.sql import dialects
from tests.conftest import _libpq_url

pytestmark = pytest.mark.postgres


def test_idle_connection_killed_by_the_server_is_replaced(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dialects, "PG_PING_IDLE_SECONDS", 0.2)
    storage = open_storage(pg_database)
    try:
        assert storage.find_token("x" * 64) is None          # a pooled connection now exists
        with psycopg.connect(_libpq_url(pg_database), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        time.sleep(0.3)
        assert storage.find_token("x" * 64) is None          # no error: the ping found it dead
        tenant = storage.create_tenant("after-kill")          # writes too, and no transaction left open
        assert storage.get_tenant("after-kill") == tenant
    finally:
        storage.close()


def test_recently_used_connections_are_not_pinged(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trade-off, pinned down: a connection that broke while in use fails the next statement once (as with
    SQLAlchemy's pre-ping, which cannot help a statement in flight either); then the pool recovers."""
    monkeypatch.setattr(dialects, "PG_PING_IDLE_SECONDS", 3600.0)
    storage = open_storage(pg_database)
    try:
        storage.find_token("x" * 64)
        with psycopg.connect(_libpq_url(pg_database), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(DBAPIError):
            storage.find_token("x" * 64)
        assert storage.find_token("x" * 64) is None
    finally:
        storage.close()
