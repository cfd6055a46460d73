"""SQL store of the web layer: console accounts, setup links, sessions, pending SSO logins, and the read-only
queries the console needs (request-log search and charts, a resource's change history from the events outbox).

Kept beside the other SQL stores on the same engine (``EventStore``, ``SqlEngineStore``), so the ``Storage``
interface of the SCIM core does not grow with console concerns. Runs on SQLite and PostgreSQL;
``tests/storage/test_web_store.py`` runs on both.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from scimgrip.scim.errors import Uniqueness
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.dialects import Transactions
from scimgrip.storage.sql.tables import events, request_log
from scimgrip.storage.sql.web_tables import console_accounts, console_setup_links, pending_logins, web_sessions

OPERATOR = "operator"
TENANT_ADMIN = "tenant_admin"
USER = "user"

# Entra's Test Connection: GET /Users?filter=<matching attribute> eq "<random GUID>" (entra-scim-wire.md §3)
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fold_email(email: str) -> str:
    return email.strip().lower()


@dataclass(frozen=True)
class Account:
    id: str
    kind: str
    tenant_id: int | None
    email: str
    password_hash: str | None
    created: dt.datetime
    last_login: dt.datetime | None


@dataclass(frozen=True)
class SetupLink:
    token_hash: str
    tenant_id: int
    created_by: str | None
    created: dt.datetime
    expires: dt.datetime
    used: dt.datetime | None


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    kind: str
    account_id: str | None
    tenant_id: int | None
    user_id: str | None
    csrf: str
    created: dt.datetime
    last_seen: dt.datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class RequestLogFilter:
    """What the request debugger asks for; every field narrows, ``None`` means any."""

    outcome: str | None = None          # "success" | "failure"
    status: int | None = None           # exact status, e.g. 401
    method: str | None = None
    path_contains: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    before_id: int | None = None        # paging: rows older than this id


def _scope(kind: str, tenant_id: int | None) -> str:
    return OPERATOR if kind == OPERATOR else f"tenant:{tenant_id}"


def _account(row: Any) -> Account:
    return Account(id=row.id, kind=row.kind, tenant_id=row.tenant_id, email=row.email,
                   password_hash=row.password_hash, created=row.created, last_login=row.last_login)


def _session(row: Any) -> SessionRecord:
    return SessionRecord(id_hash=row.id_hash, kind=row.kind, account_id=row.account_id, tenant_id=row.tenant_id,
                         user_id=row.user_id, csrf=row.csrf, created=row.created, last_seen=row.last_seen,
                         data=orjson.loads(row.data))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class WebStore(Transactions):
    """The web layer's rows on the SQL backend of a :class:`Storage` (same engine and pool)."""

    def __init__(self, storage: Storage) -> None:
        engine = getattr(storage, "engine", None)
        if engine is None:
            raise TypeError("the web layer needs the SQL storage backend")
        self._init_transactions(engine)

    # -- accounts ----------------------------------------------------------------------------------------------
    def create_account(self, account_id: str, kind: str, tenant_id: int | None, email: str,
                       password_hash: str | None) -> Account:
        now = _now()
        row = {"id": account_id, "kind": kind, "tenant_id": tenant_id, "scope": _scope(kind, tenant_id),
               "email": email.strip(), "email_ci": fold_email(email), "password_hash": password_hash,
               "created": now, "last_login": None}
        try:
            self._write(lambda c: c.execute(insert(console_accounts).values(**row)))
        except IntegrityError as exc:
            raise Uniqueness(f"an account for {email!r} already exists") from exc
        return Account(account_id, kind, tenant_id, email.strip(), password_hash, now, None)

    def find_account(self, kind: str, tenant_id: int | None, email: str) -> Account | None:
        ca = console_accounts
        row = self._read(lambda c: c.execute(select(ca).where(
            ca.c.scope == _scope(kind, tenant_id), ca.c.email_ci == fold_email(email))).first())
        return _account(row) if row is not None else None

    def get_account(self, account_id: str) -> Account | None:
        ca = console_accounts
        row = self._read(lambda c: c.execute(select(ca).where(ca.c.id == account_id)).first())
        return _account(row) if row is not None else None

    def list_accounts(self, kind: str, tenant_id: int | None = None) -> list[Account]:
        ca = console_accounts
        rows = self._read(lambda c: c.execute(select(ca).where(ca.c.scope == _scope(kind, tenant_id))
                                              .order_by(ca.c.email_ci)).all())
        return [_account(r) for r in rows]

    def set_password(self, account_id: str, password_hash: str) -> None:
        self._write(lambda c: c.execute(update(console_accounts).where(console_accounts.c.id == account_id)
                                        .values(password_hash=password_hash)))

    def note_login(self, account_id: str) -> None:
        self._write(lambda c: c.execute(update(console_accounts).where(console_accounts.c.id == account_id)
                                        .values(last_login=_now())))

    # -- setup links -------------------------------------------------------------------------------------------
    def add_setup_link(self, token_hash: str, tenant_id: int, expires: dt.datetime,
                       created_by: str | None) -> SetupLink:
        now = _now()
        self._write(lambda c: c.execute(insert(console_setup_links).values(
            token_hash=token_hash, tenant_id=tenant_id, created_by=created_by, created=now, expires=expires,
            used=None)))
        return SetupLink(token_hash, tenant_id, created_by, now, expires, None)

    def get_setup_link(self, token_hash: str) -> SetupLink | None:
        sl = console_setup_links
        row = self._read(lambda c: c.execute(select(sl).where(sl.c.token_hash == token_hash)).first())
        return SetupLink(**row._mapping) if row is not None else None

    def use_setup_link(self, token_hash: str, now: dt.datetime) -> SetupLink | None:
        """Mark the link used if it is unused and unexpired; ``None`` otherwise. One UPDATE, so of two
        concurrent uses exactly one wins."""
        sl = console_setup_links

        def tx(conn: Connection) -> SetupLink | None:
            n = conn.execute(update(sl).where(sl.c.token_hash == token_hash, sl.c.used.is_(None),
                                              sl.c.expires > now).values(used=now)).rowcount
            if n != 1:
                return None
            row = conn.execute(select(sl).where(sl.c.token_hash == token_hash)).first()
            return SetupLink(**row._mapping) if row is not None else None

        result: SetupLink | None = self._write(tx)
        return result

    def list_setup_links(self, tenant_id: int) -> list[SetupLink]:
        sl = console_setup_links
        rows = self._read(lambda c: c.execute(select(sl).where(sl.c.tenant_id == tenant_id)
                                              .order_by(sl.c.created.desc())).all())
        return [SetupLink(**r._mapping) for r in rows]

    # -- sessions ----------------------------------------------------------------------------------------------
    def create_session(self, id_hash: str, kind: str, *, csrf: str, account_id: str | None = None,
                       tenant_id: int | None = None, user_id: str | None = None,
                       data: dict[str, Any] | None = None, now: dt.datetime | None = None) -> SessionRecord:
        now = now or _now()
        rec = SessionRecord(id_hash, kind, account_id, tenant_id, user_id, csrf, now, now, dict(data or {}))
        self._write(lambda c: c.execute(insert(web_sessions).values(
            id_hash=id_hash, kind=kind, account_id=account_id, tenant_id=tenant_id, user_id=user_id, csrf=csrf,
            created=now, last_seen=now, data=orjson.dumps(rec.data).decode())))
        return rec

    def get_session(self, id_hash: str) -> SessionRecord | None:
        ws = web_sessions
        row = self._read(lambda c: c.execute(select(ws).where(ws.c.id_hash == id_hash)).first())
        return _session(row) if row is not None else None

    def touch_session(self, id_hash: str, now: dt.datetime) -> None:
        self._write(lambda c: c.execute(update(web_sessions).where(web_sessions.c.id_hash == id_hash)
                                        .values(last_seen=now)))

    def delete_session(self, id_hash: str) -> None:
        self._write(lambda c: c.execute(delete(web_sessions).where(web_sessions.c.id_hash == id_hash)))

    def delete_user_sessions(self, tenant_id: int, user_id: str) -> int:
        ws = web_sessions
        return int(self._write(lambda c: c.execute(delete(ws).where(ws.c.tenant_id == tenant_id,
                                                                    ws.c.user_id == user_id)).rowcount))

    def prune_sessions(self, idle_before: dt.datetime, created_before: dt.datetime) -> int:
        ws = web_sessions
        return int(self._write(lambda c: c.execute(delete(ws).where(or_(
            ws.c.last_seen < idle_before, ws.c.created < created_before))).rowcount))

    # -- pending SSO logins (OIDC state, SAML request id): single use ------------------------------------------
    def put_pending(self, key_hash: str, tenant_id: int, data: dict[str, Any], expires: dt.datetime) -> None:
        self._write(lambda c: c.execute(insert(pending_logins).values(
            key_hash=key_hash, tenant_id=tenant_id, data=orjson.dumps(data).decode(), expires=expires)))

    def take_pending(self, key_hash: str, tenant_id: int, now: dt.datetime) -> dict[str, Any] | None:
        """The pending login's data, deleted in the same transaction (a replayed ``state`` finds nothing)."""
        pl = pending_logins

        def tx(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(select(pl).where(pl.c.key_hash == key_hash, pl.c.tenant_id == tenant_id)).first()
            if row is None:
                return None
            if conn.execute(delete(pl).where(pl.c.key_hash == key_hash)).rowcount != 1:
                return None
            conn.execute(delete(pl).where(pl.c.expires < now))
            if row.expires <= now:
                return None
            data: dict[str, Any] = orjson.loads(row.data)
            return data

        result: dict[str, Any] | None = self._write(tx)
        return result

    # -- request log (read-only) -------------------------------------------------------------------------------
    def search_request_log(self, tenant_id: int, flt: RequestLogFilter, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first; page with ``before_id`` = the last id of the previous page."""
        rl = request_log
        q = select(rl).where(rl.c.tenant_id == tenant_id)
        if flt.outcome == "success":
            q = q.where(rl.c.status < 400)
        elif flt.outcome == "failure":
            q = q.where(rl.c.status >= 400)
        if flt.status is not None:
            q = q.where(rl.c.status == flt.status)
        if flt.method:
            q = q.where(rl.c.method == flt.method.upper())
        if flt.path_contains:
            q = q.where(rl.c.path.like(f"%{_like_escape(flt.path_contains)}%", escape="\\"))
        if flt.since is not None:
            q = q.where(rl.c.at >= flt.since)
        if flt.until is not None:
            q = q.where(rl.c.at < flt.until)
        if flt.before_id is not None:
            q = q.where(rl.c.id < flt.before_id)
        rows = self._read(lambda c: c.execute(q.order_by(rl.c.id.desc()).limit(limit)).all())
        return [dict(r._mapping) for r in rows]

    def request_log_entry(self, tenant_id: int, entry_id: int) -> dict[str, Any] | None:
        rl = request_log
        row = self._read(lambda c: c.execute(select(rl).where(rl.c.tenant_id == tenant_id,
                                                              rl.c.id == entry_id)).first())
        return dict(row._mapping) if row is not None else None

    def last_connection_test(self, tenant_id: int, scan: int = 500) -> dict[str, Any] | None:
        """The newest request shaped like Entra's Test Connection: ``GET …/Users?filter=<attr> eq "<GUID>"``.

        The same request starts every provisioning cycle (entra-scim-wire.md §3), so this is "Entra's last
        connection check", which is what an admin wants to see after clicking Test Connection.
        """
        rl = request_log
        rows = self._read(lambda c: c.execute(
            select(rl).where(rl.c.tenant_id == tenant_id, rl.c.method == "GET",
                             rl.c.path.like("%/Users?%filter=%"))
            .order_by(rl.c.id.desc()).limit(scan)).all())
        for r in rows:
            if _GUID.search(r.path):
                return dict(r._mapping)
        return None

    def request_outcomes_since(self, tenant_id: int, since: dt.datetime) -> list[tuple[dt.datetime, int]]:
        """(time, status) of every logged request since ``since`` (bounded by the log's retention)."""
        rl = request_log
        rows = self._read(lambda c: c.execute(select(rl.c.at, rl.c.status).where(
            rl.c.tenant_id == tenant_id, rl.c.at >= since)).all())
        return [(r.at, r.status) for r in rows]

    def count_requests(self, tenant_id: int) -> int:
        rl = request_log
        return int(self._read(lambda c: c.execute(select(func.count()).select_from(rl).where(
            rl.c.tenant_id == tenant_id)).scalar()) or 0)

    # -- directory events (read-only) --------------------------------------------------------------------------
    def resource_history(self, tenant_id: int, resource_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The outbox events of one resource, newest first (its change history; bounded by event retention)."""
        ev = events
        rows = self._read(lambda c: c.execute(
            select(ev.c.seq, ev.c.type, ev.c.occurred, ev.c.data)
            .where(ev.c.tenant_id == tenant_id, ev.c.resource_id == resource_id)
            .order_by(ev.c.seq.desc()).limit(limit)).all())
        return [{"seq": r.seq, "type": r.type, "occurred": r.occurred, "data": orjson.loads(r.data)} for r in rows]

    def user_event_counts_since(self, tenant_id: int, since: dt.datetime,
                                types: Sequence[str]) -> list[tuple[dt.datetime, str]]:
        ev = events
        rows = self._read(lambda c: c.execute(
            select(ev.c.occurred, ev.c.type).where(ev.c.tenant_id == tenant_id, ev.c.occurred >= since,
                                                   ev.c.type.in_(list(types)))).all())
        return [(r.occurred, r.type) for r in rows]


__all__ = ["OPERATOR", "TENANT_ADMIN", "USER", "Account", "RequestLogFilter", "SessionRecord", "SetupLink",
           "WebStore", "fold_email"]
