"""The hot statements of the SCIM request path as SQL text, run on the DBAPI cursor.

Why not SQLAlchemy Core here: one ``SELECT`` through Core costs about 300 µs of CPU on this project's
hardware (statement construction, cache-key generation, execution context, result set-up, pool events), the
same ``SELECT`` on the pooled DBAPI cursor about 24 µs (docs/performance.md). Every SCIM request runs two to
five of the statements below — token lookup, resource by id, its groups or members, the ``eq`` filters
Entra sends, member add/remove, the resource update, create and delete — so they are written once per
dialect as text with positional parameters. The schema itself (``tables.py``), migrations and every other
statement stay in Core; ``tests/storage`` runs the same contract over both paths.

Values are converted here the way the Core types would (``tables.UtcDateTime``): SQLite stores times as
fixed-width UTC text, PostgreSQL as ``timestamptz``. DBAPI errors are re-raised as SQLAlchemy's exception
classes (``DBAPIError.instance``), so retries (``dialects.with_retries``) and the uniqueness/foreign-key
mapping of the repository see exactly what Core would have raised.

Every cursor is closed when its block ends, also when it raises (:func:`dbapi_cursor`). An unclosed sqlite3
cursor kept alive by an exception's traceback is finalised later by the garbage collector, in whatever thread
happens to collect, and finalising resets its statement under its connection's mutex. That connection is back
in the pool by then: when another thread holds the mutex while it waits for SQLite's write lock (``BEGIN
IMMEDIATE`` under ``busy_timeout``), and the collecting thread is the one holding the write lock, the two wait
for each other until the busy timeout (30 s) fails the waiter. Seen as 30 s stalls and 500s under parallel
creates (tests/storage/test_cursors.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from scimgrip.storage.sql.tables import format_utc, parse_utc

RES_COLS = "pk, id, resource_type, doc, version, created, last_modified"


@contextmanager
def dbapi_cursor(conn: Connection) -> Iterator[Any]:
    """A DBAPI cursor on ``conn``'s connection, closed when the block ends (see the module docstring for why a
    cursor must never be left to the garbage collector)."""
    cur = conn.connection.cursor()
    try:
        yield cur
    finally:
        cur.close()


class ResRow(NamedTuple):
    """A ``resources`` row as the repository reads it (same attribute names as the Core rows)."""

    pk: int
    id: str
    resource_type: str
    doc: str
    version: int
    created: dt.datetime
    last_modified: dt.datetime


class TokenRow(NamedTuple):
    id: str
    tenant_id: int
    token_hash: str
    created: dt.datetime
    expires: dt.datetime | None
    revoked: dt.datetime | None
    last_used: dt.datetime | None
    description: str


def to_time(value: Any) -> Any:
    """A stored time as an aware UTC datetime (``UtcDateTime.process_result_value``)."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_utc(value)
    return value.astimezone(dt.UTC) if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class Raw:
    """SQL text for one dialect, and the cursor helpers that run it."""

    def __init__(self, dialect: str, dbapi: Any) -> None:
        self.dialect = dialect
        self.pg = dialect == "postgresql"
        self.dbapi_error: type[Exception] = dbapi.Error
        self._sql: dict[str, str] = {}

    # -- plumbing ----------------------------------------------------------------------------------------------
    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders, in this dialect's paramstyle (cached)."""
        out = self._sql.get(text)
        if out is None:
            out = text.replace("?", "%s") if self.pg else text
            self._sql[text] = out
        return out

    def time_param(self, value: dt.datetime) -> Any:
        return value.astimezone(dt.UTC) if self.pg else format_utc(value)

    def wrap(self, exc: Exception, statement: str) -> Exception:
        """The SQLAlchemy exception Core would raise for this DBAPI error."""
        return DBAPIError.instance(statement, None, exc, self.dbapi_error)

    def execute(self, cur: Any, text: str, params: Sequence[Any] = ()) -> Any:
        sql = self.sql(text)
        try:
            cur.execute(sql, params)
        except self.dbapi_error as exc:
            raise self.wrap(exc, sql) from exc
        return cur

    def executemany(self, cur: Any, text: str, rows: Iterable[Sequence[Any]]) -> None:
        sql = self.sql(text)
        try:
            cur.executemany(sql, list(rows))
        except self.dbapi_error as exc:
            raise self.wrap(exc, sql) from exc

    @staticmethod
    def marks(n: int) -> str:
        return ", ".join("?" * n)

    @staticmethod
    def res_row(r: Sequence[Any]) -> ResRow:
        return ResRow(r[0], r[1], r[2], r[3], r[4], to_time(r[5]), to_time(r[6]))

    # -- tokens ------------------------------------------------------------------------------------------------
    def find_token(self, cur: Any, token_hash: str) -> TokenRow | None:
        self.execute(cur, "SELECT id, tenant_id, token_hash, created, expires, revoked, last_used, description "
                          "FROM tokens WHERE token_hash = ?", (token_hash,))
        r = cur.fetchone()
        if r is None:
            return None
        return TokenRow(r[0], r[1], r[2], to_time(r[3]), to_time(r[4]), to_time(r[5]), to_time(r[6]), r[7])

    # -- resources: reading ------------------------------------------------------------------------------------
    def resource(self, cur: Any, tenant_id: int, resource_type: str, resource_id: str, *,
                 lock: str = "") -> ResRow | None:
        """One resource; ``lock`` (``FOR UPDATE`` / ``FOR NO KEY UPDATE``) row-locks it on PostgreSQL (SQLite's
        ``BEGIN IMMEDIATE`` already holds the database's write lock)."""
        assert lock in ("", "FOR UPDATE", "FOR NO KEY UPDATE")
        suffix = f" {lock}" if lock and self.pg else ""
        self.execute(cur, f"SELECT {RES_COLS} FROM resources WHERE tenant_id = ? AND resource_type = ? AND id = ?"
                          + suffix, (tenant_id, resource_type, resource_id))
        r = cur.fetchone()
        return self.res_row(r) if r is not None else None

    def user_with_groups(self, cur: Any, tenant_id: int, resource_id: str) -> tuple[ResRow, list[Any]] | None:
        """PostgreSQL: a user and its (group id, group displayName) pairs in one round trip (a JSON array from
        a correlated subquery), where ``resource`` + ``groups_of`` would take two."""
        assert self.pg
        self.execute(cur, f"SELECT {RES_COLS}, (SELECT COALESCE(json_agg(json_build_array(gm.group_id, "
                          "g.display_name) ORDER BY gm.group_id), '[]'::json) FROM group_members gm "
                          "JOIN resources g ON g.tenant_id = gm.tenant_id AND g.id = gm.group_id "
                          "WHERE gm.tenant_id = r.tenant_id AND gm.member_id = r.id) "
                          "FROM resources r WHERE r.tenant_id = ? AND r.resource_type = 'User' AND r.id = ?",
                     (tenant_id, resource_id))
        r = cur.fetchone()
        return (self.res_row(r), r[7]) if r is not None else None

    def resources_by_ids(self, cur: Any, tenant_id: int, ids: Sequence[str]) -> list[ResRow]:
        """Rows of ``ids`` (any type) ordered by id."""
        self.execute(cur, f"SELECT {RES_COLS} FROM resources WHERE tenant_id = ? AND id IN ({self.marks(len(ids))}) "
                          "ORDER BY id", (tenant_id, *ids))
        return [self.res_row(r) for r in cur.fetchall()]

    def members(self, cur: Any, tenant_id: int, group_id: str) -> list[tuple[str, str]]:
        """(member id, type) of one group, ordered by member id (an index-only scan of the primary key)."""
        self.execute(cur, "SELECT member_id, member_type FROM group_members WHERE tenant_id = ? AND group_id = ? "
                          "ORDER BY member_id", (tenant_id, group_id))
        return cur.fetchall()  # type: ignore[no-any-return]

    def groups_of(self, cur: Any, tenant_id: int, user_ids: Sequence[str]) -> list[tuple[str, str, str | None]]:
        """(member id, group id, group displayName) of the users' groups, ordered by member then group."""
        self.execute(cur, "SELECT gm.member_id, gm.group_id, g.display_name FROM group_members gm "
                          "JOIN resources g ON g.tenant_id = gm.tenant_id AND g.id = gm.group_id "
                          f"WHERE gm.tenant_id = ? AND gm.member_id IN ({self.marks(len(user_ids))}) "
                          "ORDER BY gm.member_id, gm.group_id", (tenant_id, *user_ids))
        return cur.fetchall()  # type: ignore[no-any-return]

    def find_by_column(self, cur: Any, tenant_id: int, resource_type: str, column: str, value: str,
                       limit: int) -> list[ResRow]:
        """``column = value`` (a pre-folded ``*_ci`` or case-exact column), in ``pk`` order: one index probe."""
        assert column in ("user_name_ci", "user_name", "external_id", "display_name_ci", "display_name", "id")
        self.execute(cur, f"SELECT {RES_COLS} FROM resources WHERE tenant_id = ? AND resource_type = ? "
                          f"AND {column} = ? ORDER BY pk LIMIT ?", (tenant_id, resource_type, value, limit))
        return [self.res_row(r) for r in cur.fetchall()]

    def find_by_element(self, cur: Any, tenant_id: int, resource_type: str, attr: str, type_ci: str | None,
                        value_column: str, value: str, limit: int) -> list[ResRow]:
        """Resources with an element of multi-valued ``attr`` (``emails``) whose value (and type) match."""
        assert value_column in ("value_ci", "value")
        type_cond = " AND type_ci = ?" if type_ci is not None else ""
        params: tuple[Any, ...] = (tenant_id, resource_type, tenant_id, attr, value) + \
            ((type_ci,) if type_ci is not None else ()) + (limit,)
        self.execute(cur, f"SELECT {RES_COLS} FROM resources WHERE tenant_id = ? AND resource_type = ? AND pk IN "
                          f"(SELECT resource_pk FROM resource_values WHERE tenant_id = ? AND attr = ? "
                          f"AND {value_column} = ?{type_cond}) ORDER BY pk LIMIT ?", params)
        return [self.res_row(r) for r in cur.fetchall()]

    # -- resources: writing ------------------------------------------------------------------------------------
    def insert_resource(self, cur: Any, tenant_id: int, resource_type: str, rid: str, now: dt.datetime, doc: str,
                        cols: dict[str, Any]) -> int:
        t = self.time_param(now)
        self.execute(cur, "INSERT INTO resources (tenant_id, resource_type, id, created, last_modified, version, doc, "
                          "user_name, user_name_ci, external_id, display_name, display_name_ci, active) "
                          "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?) RETURNING pk",
                     (tenant_id, resource_type, rid, t, t, doc, cols["user_name"], cols["user_name_ci"],
                      cols["external_id"], cols["display_name"], cols["display_name_ci"], cols["active"]))
        return int(cur.fetchone()[0])

    def insert_values(self, cur: Any, tenant_id: int, pk: int,
                      rows: list[tuple[str, str | None, str | None, str | None]]) -> None:
        if rows:
            self.executemany(cur, "INSERT INTO resource_values (resource_pk, tenant_id, attr, type_ci, value, "
                                  "value_ci) VALUES (?, ?, ?, ?, ?, ?)",
                             [(pk, tenant_id, a, t, v, vc) for a, t, v, vc in rows])

    def delete_values(self, cur: Any, pk: int) -> None:
        self.execute(cur, "DELETE FROM resource_values WHERE resource_pk = ?", (pk,))

    def update_resource(self, cur: Any, pk: int, last_modified: dt.datetime, doc: str | None,
                        cols: dict[str, Any] | None) -> None:
        """``version + 1`` and ``last_modified``; with ``doc`` also the document and its index columns."""
        if doc is None or cols is None:
            self.execute(cur, "UPDATE resources SET version = version + 1, last_modified = ? WHERE pk = ?",
                         (self.time_param(last_modified), pk))
            return
        self.execute(cur, "UPDATE resources SET version = version + 1, last_modified = ?, doc = ?, user_name = ?, "
                          "user_name_ci = ?, external_id = ?, display_name = ?, display_name_ci = ?, active = ? "
                          "WHERE pk = ?",
                     (self.time_param(last_modified), doc, cols["user_name"], cols["user_name_ci"],
                      cols["external_id"], cols["display_name"], cols["display_name_ci"], cols["active"], pk))

    def remove_members(self, cur: Any, tenant_id: int, group_id: str, ids: Sequence[str]) -> list[tuple[str, str]]:
        self.execute(cur, f"DELETE FROM group_members WHERE tenant_id = ? AND group_id = ? "
                          f"AND member_id IN ({self.marks(len(ids))}) RETURNING member_id, member_type",
                     (tenant_id, group_id, *ids))
        return [(r[0], r[1]) for r in cur.fetchall()]

    def add_members(self, cur: Any, tenant_id: int, group_id: str, ids: Sequence[str]) -> list[tuple[str, str]]:
        """Insert the rows of the ids that exist in the tenant; the new ones (idempotent). The ``WHERE`` of
        the ``SELECT`` also keeps SQLite from reading ``ON CONFLICT`` as a join constraint."""
        self.execute(cur, "INSERT INTO group_members (tenant_id, group_id, member_id, member_type) "
                          "SELECT tenant_id, CAST(? AS VARCHAR), id, resource_type FROM resources "
                          f"WHERE tenant_id = ? AND id IN ({self.marks(len(ids))}) "
                          "ON CONFLICT DO NOTHING RETURNING member_id, member_type",
                     (group_id, tenant_id, *ids))
        return [(r[0], r[1]) for r in cur.fetchall()]

    def existing(self, cur: Any, tenant_id: int, ids: Sequence[str]) -> set[str]:
        self.execute(cur, f"SELECT id FROM resources WHERE tenant_id = ? AND id IN ({self.marks(len(ids))})",
                     (tenant_id, *ids))
        return {r[0] for r in cur.fetchall()}

    def leave_groups(self, cur: Any, tenant_id: int, member_id: str) -> list[str]:
        self.execute(cur, "DELETE FROM group_members WHERE tenant_id = ? AND member_id = ? RETURNING group_id",
                     (tenant_id, member_id))
        return [r[0] for r in cur.fetchall()]

    def delete_resource(self, cur: Any, tenant_id: int, resource_type: str, resource_id: str) -> ResRow | None:
        self.execute(cur, f"DELETE FROM resources WHERE tenant_id = ? AND resource_type = ? AND id = ? "
                          f"RETURNING {RES_COLS}", (tenant_id, resource_type, resource_id))
        r = cur.fetchone()
        return self.res_row(r) if r is not None else None
