"""No DBAPI cursor outlives the storage call that opened it, also when the call fails.

Why: a request that fails keeps its exception (and so the frames of the failed transaction, with their cursor
locals) alive in a reference cycle. A sqlite3 cursor that is not closed is finalised by whichever thread later
runs the garbage collector, and finalising resets its statement under its connection's mutex. That connection
is back in the pool by then; if another thread holds the mutex while it waits for SQLite's write lock, and the
collecting thread holds that lock, both wait until the busy timeout. Seen as 30 s stalls and 500s under parallel
creates of one userName (tests/reliability/test_races.py), and fixed by closing every raw cursor in a
``finally`` (``rawsql.dbapi_cursor``). Lock errors left after the retries are a 503, never a 500.
"""

from __future__ import annotations

import gc
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from scimgrip.scim.errors import InvalidValue, NotFound, PreconditionFailed, ScimError, ServiceUnavailable, Uniqueness
from scimgrip.scim.model import Change, MemberDelta
from scimgrip.scim.schema import CORE_GROUP, CORE_USER
from scimgrip.storage import open_storage
from scimgrip.storage.base import Storage
from scimgrip.storage.sql import dialects
from scimgrip.storage.sql.repository import SqlStorage


def _open_cursors(before: set[int]) -> list[Any]:
    """Live DBAPI cursors created since ``before`` that are still open."""
    found = []
    for obj in gc.get_objects():
        if id(obj) in before:
            continue
        if isinstance(obj, sqlite3.Cursor):
            try:
                obj.fetchone()          # a closed cursor refuses; an open one with no statement returns None
            except sqlite3.ProgrammingError:
                continue
            found.append(obj)
        elif isinstance(obj, psycopg.Cursor) and not obj.closed:
            found.append(obj)
    return found


def _cursor_ids() -> set[int]:
    return {id(o) for o in gc.get_objects() if isinstance(o, sqlite3.Cursor | psycopg.Cursor)}


def _raise(exc: Exception) -> Callable[[Any], Change]:
    def apply(_current: Any) -> Change:
        raise exc
    return apply


def test_failed_writes_leave_no_open_cursor_behind(storage: Storage) -> None:
    assert isinstance(storage, SqlStorage)
    t = storage.create_tenant("acme").id
    user = storage.create(t, "User", {"schemas": [CORE_USER], "userName": "taken"})
    group = storage.create(t, "Group", {"schemas": [CORE_GROUP], "displayName": "g"})
    gc.collect()
    before = _cursor_ids()
    gc.disable()                 # the failed calls' frames stay alive, as in a server between collections
    kept: list[BaseException] = []
    failing: list[Callable[[], Any]] = [
        lambda: storage.create(t, "User", {"schemas": [CORE_USER], "userName": "TAKEN"}),
        lambda: storage.create(t, "Group", {"schemas": [CORE_GROUP], "displayName": "h"}, ["no-such-user"]),
        lambda: storage.update(t, "User", "no-such-id", _raise(AssertionError("never applied"))),
        lambda: storage.update(t, "User", user.id, _raise(InvalidValue("refused by apply"))),
        lambda: storage.update(t, "Group", group.id,
                               lambda g: Change(doc=g.doc, members=MemberDelta(add=["no-such-user"]))),
        lambda: storage.update(t, "User", user.id, lambda u: Change(doc=u.doc), expected_version=99),
        lambda: storage.delete(t, "User", user.id, expected_version=99),
        lambda: storage.delete(t, "Group", "no-such-id"),
    ]
    try:
        for call in failing:
            with pytest.raises((Uniqueness, InvalidValue, NotFound, PreconditionFailed)) as info:
                call()
            kept.append(info.value)
        left = _open_cursors(before)
    finally:
        gc.enable()
    assert left == [], f"{len(left)} cursor(s) left open for the garbage collector to reset in another thread"
    assert all(isinstance(e, ScimError) for e in kept)


def test_lock_errors_are_retried_then_a_503() -> None:
    """A conflict that outlasts the retries is a 503 with ``Retry-After`` (nothing stored, send again)."""
    attempts = 0

    def locked() -> None:
        nonlocal attempts
        attempts += 1
        raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))

    with pytest.raises(ServiceUnavailable) as info:
        dialects.with_retries(locked, attempts=3)
    assert attempts == 3 and info.value.status == 503 and info.value.headers["Retry-After"] == "1"


@pytest.mark.parametrize("held_for", [0.3, None])
def test_a_locked_begin_immediate_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             held_for: float | None) -> None:
    """SQLite: ``BEGIN IMMEDIATE`` that fails with ``database is locked`` is retried like any statement; it used
    to escape the retries as a raw driver error (a 500). With a 50 ms busy timeout and another connection
    holding the write lock for 0.3 s, the create waits and succeeds; held throughout, it ends in a 503 and stores
    nothing."""
    monkeypatch.setattr(dialects, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "locked.db"
    storage = open_storage(f"sqlite:///{path}")
    try:
        t = storage.create_tenant("acme").id
        holder = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(held_for, holder.execute, args=("COMMIT",)) if held_for else None
        if release is not None:
            release.start()
        try:
            if held_for:
                created = storage.create(t, "User", {"schemas": [CORE_USER], "userName": "after-the-lock"})
                assert storage.get(t, "User", created.id) is not None
            else:
                with pytest.raises(ServiceUnavailable):
                    storage.create(t, "User", {"schemas": [CORE_USER], "userName": "never"})
        finally:
            if release is not None:
                release.join()
            else:
                holder.execute("ROLLBACK")
            holder.close()
        names = [u.doc["userName"] for u in storage.iter_all(t, "User")]
        assert names == (["after-the-lock"] if held_for else [])
    finally:
        storage.close()
