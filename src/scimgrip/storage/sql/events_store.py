"""Event storage: the outbox writer used inside resource transactions, and :class:`EventStore` for the events
API, app API keys, webhook endpoints and the delivery queue.

Ordering. Every outbox write ends its transaction with one upsert of the tenant's ``event_sequences`` row. On
PostgreSQL that row lock is held until commit, so a tenant's sequence numbers are handed out in commit order
and a reader that has seen sequence *n* can never later find a smaller one committed (SQLite serialises all
writers anyway). Cursors (events API, webhook fan-out) are therefore plain sequence numbers.

Delivery queue. The dispatcher fans events out into ``webhook_deliveries`` (per endpoint, per tenant, behind
a cursor), then leases due deliveries whose resource has no earlier pending delivery on the same endpoint:
in order per resource, in parallel across resources. Leases are rows (``lease_until``) taken with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several workers never send the same delivery at once; an
expired lease (a killed worker) makes the delivery due again: at least once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, and_, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from scimgrip.events.outbox import Draft
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.dialects import WRITE, current_batch, with_retries
from scimgrip.storage.sql.rawsql import dbapi_cursor
from scimgrip.storage.sql.tables import (
    app_api_keys,
    event_sequences,
    events,
    format_utc,
    tenants,
    webhook_attempts,
    webhook_cursors,
    webhook_deliveries,
    webhook_endpoints,
)

KEY_PREFIX = "sgk_"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _upsert(dialect: str, table: Any) -> Any:
    return pg_dialect.insert(table) if dialect == "postgresql" else sqlite_dialect.insert(table)


# ---------------------------------------------------------------------------------------------------------------
# the outbox writer (called by SqlStorage inside its write transactions)
# ---------------------------------------------------------------------------------------------------------------
_SEQ_UPSERT = ("INSERT INTO event_sequences (tenant_id, last_seq, pruned_seq) VALUES ({t}, {n}, 0) "
               "ON CONFLICT (tenant_id) DO UPDATE SET last_seq = event_sequences.last_seq + excluded.last_seq "
               "RETURNING last_seq")
# PostgreSQL: one round trip for the whole outbox write (sequence upsert + every event, as arrays)
_PG_OUTBOX = (
    "WITH s AS (" + _SEQ_UPSERT.format(t="%(t)s", n="%(n)s") + ") "
    "INSERT INTO events (tenant_id, seq, id, type, resource_type, resource_id, occurred, data) "
    "SELECT %(t)s, s.last_seq - %(n)s + v.ord, v.id, v.type, v.rt, v.rid, %(occurred)s, v.data "
    "FROM s, unnest(%(ids)s::text[], %(types)s::text[], %(rts)s::text[], %(rids)s::text[], %(datas)s::text[]) "
    "WITH ORDINALITY AS v(id, type, rt, rid, data, ord)")
# SQLite: statements are in-process calls, two of them cost less than building arrays
_SQLITE_SEQ = _SEQ_UPSERT.format(t=":t", n=":n")
_SQLITE_INSERT = ("INSERT INTO events (id, tenant_id, seq, type, resource_type, resource_id, occurred, data) "
                  "VALUES (:id, :tenant_id, :seq, :type, :resource_type, :resource_id, :occurred, :data)")


def append_events(conn: Connection, tenant_id: int, drafts: Sequence[Draft], when: dt.datetime) -> None:
    """Store ``drafts`` with the next sequence numbers of the tenant; call it last in the transaction.

    Runs on the DBAPI cursor of the transaction's connection: the same transaction, without SQLAlchemy's
    per-statement overhead; on PostgreSQL in a single round trip.
    """
    if not drafts:
        return
    n = len(drafts)
    ids = ["evt_" + uuid.uuid4().hex for _ in drafts]
    datas = [orjson.dumps(d.data).decode() for d in drafts]
    with dbapi_cursor(conn) as cur:
        if conn.dialect.name == "postgresql":
            cur.execute(_PG_OUTBOX, {"t": tenant_id, "n": n, "occurred": when.astimezone(dt.UTC), "ids": ids,
                                     "types": [d.type for d in drafts], "rts": [d.resource_type for d in drafts],
                                     "rids": [d.resource_id for d in drafts], "datas": datas})
            return
        cur.execute(_SQLITE_SEQ, {"t": tenant_id, "n": n})
        row = cur.fetchone()
        assert row is not None
        first = int(row[0]) - n + 1
        occurred = format_utc(when)
        rows = [{"id": ids[i], "tenant_id": tenant_id, "seq": first + i, "type": d.type,
                 "resource_type": d.resource_type, "resource_id": d.resource_id, "occurred": occurred,
                 "data": datas[i]} for i, d in enumerate(drafts)]
        if n == 1:
            cur.execute(_SQLITE_INSERT, rows[0])
        else:
            cur.executemany(_SQLITE_INSERT, rows)


def purge_tenant(conn: Connection, tenant_id: int) -> None:
    """Remove a deleted tenant's events, sequence, keys and endpoints (called by ``delete_tenant``)."""
    conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.tenant_id == tenant_id))
    conn.execute(delete(webhook_cursors).where(webhook_cursors.c.tenant_id == tenant_id))
    conn.execute(delete(webhook_endpoints).where(webhook_endpoints.c.tenant_id == tenant_id))
    conn.execute(delete(app_api_keys).where(app_api_keys.c.tenant_id == tenant_id))
    conn.execute(delete(events).where(events.c.tenant_id == tenant_id))
    conn.execute(delete(event_sequences).where(event_sequences.c.tenant_id == tenant_id))


# ---------------------------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    id: str
    tenant_id: int
    tenant: str
    seq: int
    type: str
    occurred: dt.datetime
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The JSON body of the event: identical in the events API and in every webhook delivery."""
        return {"id": self.id, "type": self.type, "tenant": self.tenant, "sequence": self.seq,
                "timestamp": self.occurred.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                "data": self.data}


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: int | None
    created: dt.datetime
    revoked: dt.datetime | None
    description: str


@dataclass(frozen=True)
class Endpoint:
    id: str
    tenant_id: int | None
    url: str
    event_types: list[str]
    secret: str
    previous_secret: str | None
    previous_secret_expires: dt.datetime | None
    created: dt.datetime
    description: str

    def signing_secrets(self, now: dt.datetime) -> list[str]:
        """The live secrets: the current one, and the previous one during its rotation grace period."""
        out = [self.secret]
        if self.previous_secret and self.previous_secret_expires and self.previous_secret_expires > now:
            out.append(self.previous_secret)
        return out


@dataclass(frozen=True)
class Delivery:
    id: int
    endpoint_id: str
    tenant_id: int
    seq: int
    event_id: str
    resource_id: str
    status: str
    attempts: int
    next_attempt: dt.datetime
    created: dt.datetime
    delivered: dt.datetime | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True)
class LogEntry:
    """A row of a tenant's delivery log: the delivery, its event's type (None once retention removed the
    event) and how long its last attempt took."""

    delivery: Delivery
    event_type: str | None
    duration_ms: float | None


@dataclass(frozen=True)
class Leased:
    """A delivery taken by one dispatcher: what to send, where, signed with which secrets."""

    delivery: Delivery
    endpoint: Endpoint
    body: bytes


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_at: dt.datetime | None      # None with ok=False: dead letter
    window_start: dt.datetime | None = None   # set on a first attempt: the retry window starts now
    delivery: Delivery | None = None          # on failure: its later deliveries wait until retry_at too


class CursorExpired(Exception):
    """The cursor points before events that retention has already removed."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------------------------
class EventStore:
    """Events, API keys and webhooks on the SQL backend of a :class:`Storage` (same engine, same pool)."""

    def __init__(self, storage: Storage) -> None:
        engine = getattr(storage, "engine", None)
        if engine is None:
            raise TypeError("events need the SQL storage backend")
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT") \
            if self.dialect == "postgresql" else engine
        self._tenant_names: dict[int, str] = {}

    def _read(self, fn: Any) -> Any:
        current = current_batch(self.engine)
        if current is not None:             # inside a Storage.batch of this thread: join it
            return current.run(fn)

        def run() -> Any:
            with self._reader.connect() as conn, conn.begin():
                return fn(conn)
        return with_retries(run)

    def _write(self, fn: Any) -> Any:
        current = current_batch(self.engine)
        if current is not None:
            return current.run(fn)

        def run() -> Any:
            with self.engine.connect() as conn:
                conn.execution_options(**WRITE)
                with conn.begin():
                    return fn(conn)
        return with_retries(run)

    def _tenant_name(self, conn: Connection, tenant_id: int) -> str:
        name = self._tenant_names.get(tenant_id)
        if name is None:
            name = conn.execute(select(tenants.c.name).where(tenants.c.id == tenant_id)).scalar() or str(tenant_id)
            self._tenant_names[tenant_id] = name
        return name

    # -- events ----------------------------------------------------------------------------------------------
    def _event(self, conn: Connection, row: Any) -> Event:
        return Event(id=row.id, tenant_id=row.tenant_id, tenant=self._tenant_name(conn, row.tenant_id),
                     seq=row.seq, type=row.type, occurred=row.occurred, data=orjson.loads(row.data))

    def last_seq(self, tenant_id: int) -> int:
        row = self._read(lambda c: c.execute(select(event_sequences.c.last_seq).where(
            event_sequences.c.tenant_id == tenant_id)).scalar())
        return int(row or 0)

    def list_events(self, tenant_id: int, after: int = 0, types: Sequence[str] = (),
                    limit: int = 100) -> tuple[list[Event], int]:
        """Events with ``seq > after`` (of ``types`` if given), and the cursor to continue from.

        The cursor moves past events filtered out by ``types``, so a filtered consumer still makes progress.
        Raises :class:`CursorExpired` if retention removed events after ``after``.
        """
        def tx(conn: Connection) -> tuple[list[Event], int]:
            srow = conn.execute(select(event_sequences.c.last_seq, event_sequences.c.pruned_seq).where(
                event_sequences.c.tenant_id == tenant_id)).first()
            if srow is None:
                return [], after
            if after < srow.pruned_seq:
                raise CursorExpired(f"events up to sequence {srow.pruned_seq} have expired")
            q = select(events).where(events.c.tenant_id == tenant_id, events.c.seq > after,
                                     events.c.seq <= srow.last_seq)
            if types:
                q = q.where(events.c.type.in_(list(types)))
            rows = conn.execute(q.order_by(events.c.seq).limit(limit)).all()
            found = [self._event(conn, r) for r in rows]
            cursor = found[-1].seq if len(found) == limit else max(after, int(srow.last_seq))
            return found, cursor
        result: tuple[list[Event], int] = self._read(tx)
        return result

    def prune(self, older_than: dt.datetime) -> int:
        """Retention: delete events that occurred before ``older_than`` (and their delivered deliveries).

        A tenant's events are in time order along ``seq``, so the expired ones are a prefix of its key range.
        """
        def tx(conn: Connection) -> int:
            n = 0
            for t in conn.execute(select(event_sequences.c.tenant_id, event_sequences.c.pruned_seq)).all():
                upto = conn.execute(select(func.max(events.c.seq)).where(
                    events.c.tenant_id == t.tenant_id, events.c.occurred < older_than)).scalar()
                if upto is None:
                    continue
                n += conn.execute(delete(events).where(events.c.tenant_id == t.tenant_id,
                                                       events.c.seq <= upto)).rowcount
                conn.execute(update(event_sequences).where(event_sequences.c.tenant_id == t.tenant_id)
                             .values(pruned_seq=upto))
                conn.execute(delete(webhook_deliveries).where(
                    webhook_deliveries.c.tenant_id == t.tenant_id, webhook_deliveries.c.seq <= upto,
                    webhook_deliveries.c.status == "delivered"))
            return n
        return int(self._write(tx))

    # -- app API keys ----------------------------------------------------------------------------------------
    def create_api_key(self, tenant_id: int | None, description: str = "") -> tuple[ApiKey, str]:
        """A new key (returned once, stored as SHA-256): ``tenant_id`` None makes a global key."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id="key_" + secrets.token_hex(6), tenant_id=tenant_id, created=_now(), revoked=None,
                     description=description)
        self._write(lambda c: c.execute(insert(app_api_keys).values(
            id=key.id, tenant_id=tenant_id, key_hash=hash_key(secret), created=key.created, revoked=None,
            description=description)))
        return key, secret

    def authenticate_key(self, secret: str) -> ApiKey | None:
        """The live key whose hash matches ``secret`` (constant-time compare), else None."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 256:
            return None
        h = hash_key(secret)
        row = self._read(lambda c: c.execute(select(app_api_keys).where(app_api_keys.c.key_hash == h)).first())
        if row is None or row.revoked is not None or not hmac.compare_digest(row.key_hash, h):
            return None
        return ApiKey(row.id, row.tenant_id, row.created, row.revoked, row.description)

    def list_api_keys(self) -> list[ApiKey]:
        rows = self._read(lambda c: c.execute(select(app_api_keys).order_by(app_api_keys.c.created)).all())
        return [ApiKey(r.id, r.tenant_id, r.created, r.revoked, r.description) for r in rows]

    def revoke_api_key(self, key_id: str) -> bool:
        now = _now()
        return bool(self._write(lambda c: c.execute(update(app_api_keys).where(
            app_api_keys.c.id == key_id, app_api_keys.c.revoked.is_(None)).values(revoked=now)).rowcount))

    # -- webhook endpoints -----------------------------------------------------------------------------------
    @staticmethod
    def _endpoint(r: Any) -> Endpoint:
        return Endpoint(r.id, r.tenant_id, r.url, orjson.loads(r.event_types), r.secret, r.previous_secret,
                        r.previous_secret_expires, r.created, r.description)

    def add_endpoint(self, url: str, secret: str, tenant_id: int | None = None, event_types: Sequence[str] = (),
                     description: str = "") -> Endpoint:
        """Register an endpoint; it receives events committed from now on."""
        ep = Endpoint("whk_" + secrets.token_hex(8), tenant_id, url, list(event_types), secret, None, None,
                      _now(), description)

        def tx(conn: Connection) -> None:
            conn.execute(insert(webhook_endpoints).values(
                id=ep.id, tenant_id=tenant_id, url=url, event_types=orjson.dumps(ep.event_types).decode(),
                secret=secret, previous_secret=None, previous_secret_expires=None, created=ep.created,
                description=description))
            seqs = select(literal(ep.id, webhook_cursors.c.endpoint_id.type), event_sequences.c.tenant_id,
                          event_sequences.c.last_seq)
            if tenant_id is not None:
                seqs = seqs.where(event_sequences.c.tenant_id == tenant_id)
            conn.execute(insert(webhook_cursors).from_select(["endpoint_id", "tenant_id", "last_seq"], seqs))

        self._write(tx)
        return ep

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._read(lambda c: c.execute(select(webhook_endpoints).where(
            webhook_endpoints.c.id == endpoint_id)).first())
        return self._endpoint(row) if row is not None else None

    def list_endpoints(self, tenant_id: int | None = None) -> list[Endpoint]:
        q = select(webhook_endpoints).order_by(webhook_endpoints.c.created, webhook_endpoints.c.id)
        if tenant_id is not None:
            q = q.where(webhook_endpoints.c.tenant_id == tenant_id)
        return [self._endpoint(r) for r in self._read(lambda c: c.execute(q).all())]

    def remove_endpoint(self, endpoint_id: str) -> bool:
        def tx(conn: Connection) -> bool:
            d = webhook_deliveries
            conn.execute(delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(
                select(d.c.id).where(d.c.endpoint_id == endpoint_id))))
            conn.execute(delete(d).where(d.c.endpoint_id == endpoint_id))
            conn.execute(delete(webhook_cursors).where(webhook_cursors.c.endpoint_id == endpoint_id))
            return bool(conn.execute(delete(webhook_endpoints).where(
                webhook_endpoints.c.id == endpoint_id)).rowcount)
        return bool(self._write(tx))

    def rotate_secret(self, endpoint_id: str, new_secret: str, grace: dt.timedelta) -> Endpoint | None:
        """Make ``new_secret`` current; the old one keeps signing (a second signature) for ``grace``."""
        expires = _now() + grace

        def tx(conn: Connection) -> bool:
            old = conn.execute(select(webhook_endpoints.c.secret).where(
                webhook_endpoints.c.id == endpoint_id)).scalar()
            if old is None:
                return False
            conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id).values(
                secret=new_secret, previous_secret=old, previous_secret_expires=expires))
            return True

        return self.get_endpoint(endpoint_id) if self._write(tx) else None

    # -- fan-out ---------------------------------------------------------------------------------------------
    def fanout(self, batch: int = 5000) -> int:
        """Queue a delivery for every new event matching an endpoint; returns how many were queued."""
        def heads(conn: Connection) -> tuple[list[Any], dict[int, int], dict[tuple[str, int], int]]:
            eps = conn.execute(select(webhook_endpoints.c.id, webhook_endpoints.c.tenant_id,
                                      webhook_endpoints.c.event_types)).all()
            seqs = {int(r.tenant_id): int(r.last_seq) for r in conn.execute(
                select(event_sequences.c.tenant_id, event_sequences.c.last_seq))}
            curs = {(r.endpoint_id, int(r.tenant_id)): int(r.last_seq) for r in conn.execute(select(
                webhook_cursors))}
            return list(eps), seqs, curs

        if not self._has_endpoints():
            return 0
        eps, seqs, curs = self._read(heads)
        total = 0
        for ep in eps:
            types = orjson.loads(ep.event_types)
            scope = [ep.tenant_id] if ep.tenant_id is not None else list(seqs)
            for t in scope:
                if seqs.get(t, 0) > curs.get((ep.id, t), 0):
                    total += self._fanout_one(ep.id, t, types, seqs[t], batch)
        return total

    def _has_endpoints(self) -> bool:
        return self._read(lambda c: c.execute(select(webhook_endpoints.c.id).limit(1)).first()) is not None

    def _fanout_one(self, endpoint_id: str, tenant_id: int, types: list[str], head: int, batch: int) -> int:
        wc, d, e = webhook_cursors, webhook_deliveries, events

        def tx(conn: Connection) -> int:
            conn.execute(_upsert(self.dialect, wc).values(endpoint_id=endpoint_id, tenant_id=tenant_id,
                                                           last_seq=0).on_conflict_do_nothing())
            q = select(wc.c.last_seq).where(wc.c.endpoint_id == endpoint_id, wc.c.tenant_id == tenant_id)
            if self.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)
            cur = conn.execute(q).scalar()
            if cur is None or cur >= head:
                return 0                      # another worker holds it, or it is done
            upto = min(head, cur + batch)
            now = _now()
            sel = select(literal(endpoint_id, d.c.endpoint_id.type), e.c.tenant_id, e.c.seq, e.c.id,
                         e.c.resource_id, literal("pending", d.c.status.type), literal(0, d.c.attempts.type),
                         literal(now, d.c.next_attempt.type), literal(now, d.c.created.type)).where(
                e.c.tenant_id == tenant_id, e.c.seq > cur, e.c.seq <= upto).order_by(e.c.seq)
            if types:
                sel = sel.where(e.c.type.in_(types))
            ins = _upsert(self.dialect, d).from_select(
                ["endpoint_id", "tenant_id", "seq", "event_id", "resource_id", "status", "attempts",
                 "next_attempt", "created"], sel).on_conflict_do_nothing()
            n = conn.execute(ins).rowcount
            conn.execute(update(wc).where(wc.c.endpoint_id == endpoint_id, wc.c.tenant_id == tenant_id)
                         .values(last_seq=upto))
            return max(int(n), 0)

        return int(self._write(tx))

    # -- leasing and completing deliveries --------------------------------------------------------------------
    def lease(self, chains: int, lease_for: dt.timedelta, per_chain: int = 100,
              scan: int = 1000) -> list[list[Leased]]:
        """Take due work: up to ``chains`` chains, each the next ``per_chain`` pending deliveries of one
        (endpoint, tenant, resource) in sequence order, starting at its earliest pending delivery.

        A chain is sent in order by one thread, so a resource's events arrive in order while different
        resources go in parallel. Candidates are the first due, unleased pending rows of each endpoint (locked
        with ``SKIP LOCKED`` on PostgreSQL); a chain is taken only if nothing earlier of it is still pending.
        A failed delivery postpones its resource's later deliveries to its own retry time, so a blocked
        resource's backlog is not due and does not fill the scan.
        """
        d = webhook_deliveries
        e = d.alias("earlier")

        def tx(conn: Connection) -> list[list[Leased]]:
            now = _now()
            endpoint_ids = list(conn.execute(select(webhook_endpoints.c.id)).scalars())
            rows: list[Any] = []
            for endpoint_id in endpoint_ids:      # per endpoint: a backlog at one never starves the others
                q = select(d).where(d.c.endpoint_id == endpoint_id, d.c.status == "pending",
                                    d.c.next_attempt <= now, or_(d.c.lease_until.is_(None), d.c.lease_until < now)
                                    ).order_by(d.c.id).limit(max(scan // max(len(endpoint_ids), 1), 100))
                if self.dialect == "postgresql":
                    q = q.with_for_update(skip_locked=True)
                rows += conn.execute(q).all()
            if not rows:
                return []
            grouped: dict[tuple[str, int, str], list[Any]] = {}
            for r in rows:
                grouped.setdefault((r.endpoint_id, r.tenant_id, r.resource_id), []).append(r)
            firsts = [sorted(rs, key=lambda r: r.seq)[0] for rs in grouped.values()]
            earlier = exists().where(e.c.endpoint_id == d.c.endpoint_id, e.c.tenant_id == d.c.tenant_id,
                                     e.c.resource_id == d.c.resource_id, e.c.status == "pending",
                                     e.c.seq < d.c.seq)
            heads: set[int] = set()
            candidates = [r.id for r in firsts if r.next_attempt <= now]
            for i in range(0, len(candidates), 500):
                heads.update(conn.execute(select(d.c.id).where(d.c.id.in_(candidates[i:i + 500]), ~earlier))
                             .scalars())
            taken: list[list[Any]] = []
            for first in firsts:
                if first.id in heads and len(taken) < chains:
                    key = (first.endpoint_id, first.tenant_id, first.resource_id)
                    taken.append(sorted(grouped[key], key=lambda r: r.seq)[:per_chain])
            if not taken:
                return []
            chosen = [r for chain in taken for r in chain]
            until = now + lease_for
            ids = [r.id for r in chosen]
            for i in range(0, len(ids), 500):
                conn.execute(update(d).where(d.c.id.in_(ids[i:i + 500])).values(lease_until=until))
            eps = {r.id: self._endpoint(r) for r in conn.execute(select(webhook_endpoints).where(
                webhook_endpoints.c.id.in_({r.endpoint_id for r in chosen})))}
            by_tenant: dict[int, set[int]] = {}
            for r in chosen:
                by_tenant.setdefault(r.tenant_id, set()).add(r.seq)
            bodies: dict[tuple[int, int], bytes] = {}
            for t, seqs in by_tenant.items():
                for ev in conn.execute(select(events).where(events.c.tenant_id == t, events.c.seq.in_(seqs))):
                    bodies[(t, ev.seq)] = orjson.dumps(self._event(conn, ev).payload())
            out: list[list[Leased]] = []
            for chain in taken:
                leased: list[Leased] = []
                for r in chain:
                    body = bodies.get((r.tenant_id, r.seq))
                    if body is None:          # the event expired (retention) before it could be sent
                        conn.execute(update(d).where(d.c.id == r.id).values(status="dead", lease_until=None,
                                                                              last_error="event expired"))
                        continue
                    leased.append(Leased(self._delivery(r), eps[r.endpoint_id], body))
                if leased:
                    out.append(leased)
            return out

        result: list[list[Leased]] = self._write(tx)
        return result

    @staticmethod
    def _delivery(r: Any) -> Delivery:
        return Delivery(r.id, r.endpoint_id, r.tenant_id, r.seq, r.event_id, r.resource_id, r.status, r.attempts,
                        r.next_attempt, r.created, r.delivered, r.last_status, r.last_error)

    def complete(self, outcomes: Sequence[Outcome], released: Sequence[int] = ()) -> None:
        """Record attempts (delivered, retry at ``retry_at``, or dead letter) and give back the leases of
        ``released`` deliveries that were not attempted — in one transaction."""
        if not outcomes and not released:
            return
        d = webhook_deliveries

        def tx(conn: Connection) -> None:
            now = _now()
            ids = list(released)
            for i in range(0, len(ids), 500):
                conn.execute(update(d).where(d.c.id.in_(ids[i:i + 500])).values(lease_until=None))
            delivered: dict[int | None, list[int]] = {}
            for o in outcomes:
                if o.ok:             # the common case: one UPDATE per status code and chunk
                    delivered.setdefault(o.status_code, []).append(o.delivery_id)
                    continue
                values: dict[str, Any] = {"attempts": d.c.attempts + 1, "lease_until": None,
                                          "last_status": o.status_code, "last_error": o.error}
                if o.window_start is not None:
                    values["created"] = o.window_start
                if o.retry_at is None:
                    values.update(status="dead")
                else:
                    values.update(next_attempt=o.retry_at)
                conn.execute(update(d).where(d.c.id == o.delivery_id, d.c.status == "pending").values(**values))
                if o.retry_at is not None and o.delivery is not None:
                    x = o.delivery          # the resource's later deliveries are not due before this one
                    conn.execute(update(d).where(
                        d.c.endpoint_id == x.endpoint_id, d.c.tenant_id == x.tenant_id,
                        d.c.resource_id == x.resource_id, d.c.status == "pending", d.c.seq > x.seq,
                        d.c.next_attempt < o.retry_at).values(next_attempt=o.retry_at))
            for code, done in delivered.items():
                for i in range(0, len(done), 500):
                    conn.execute(update(d).where(d.c.id.in_(done[i:i + 500]), d.c.status == "pending").values(
                        attempts=d.c.attempts + 1, lease_until=None, last_status=code, last_error=None,
                        status="delivered", delivered=now))
            if outcomes:
                conn.execute(insert(webhook_attempts), [
                    {"delivery_id": o.delivery_id, "at": now, "status_code": o.status_code, "error": o.error,
                     "duration_ms": o.duration_ms} for o in outcomes])

        self._write(tx)

    def replay(self, endpoint_id: str, *, delivery_id: int | None = None, tenant_id: int | None = None,
               from_seq: int | None = None) -> int:
        """Queue deliveries again: the dead letters of the endpoint (default), one delivery, or every delivery
        of ``tenant_id`` from sequence ``from_seq`` on. The retry window restarts."""
        d = webhook_deliveries
        cond = [d.c.endpoint_id == endpoint_id]
        if delivery_id is not None:
            cond.append(d.c.id == delivery_id)
        elif from_seq is not None:
            if tenant_id is None:
                raise ValueError("from_seq needs a tenant")
            cond += [d.c.tenant_id == tenant_id, d.c.seq >= from_seq]
        else:
            cond.append(d.c.status == "dead")
        if tenant_id is not None and from_seq is None:
            cond.append(d.c.tenant_id == tenant_id)
        now = _now()
        return int(self._write(lambda c: c.execute(update(d).where(and_(*cond)).values(
            status="pending", next_attempt=now, created=now, lease_until=None, delivered=None)).rowcount))

    def list_deliveries(self, endpoint_id: str, status: str | None = None, limit: int = 100) -> list[Delivery]:
        """The delivery log of an endpoint, newest first."""
        d = webhook_deliveries
        q = select(d).where(d.c.endpoint_id == endpoint_id)
        if status:
            q = q.where(d.c.status == status)
        rows = self._read(lambda c: c.execute(q.order_by(d.c.id.desc()).limit(limit)).all())
        return [self._delivery(r) for r in rows]

    def get_delivery(self, delivery_id: int) -> Delivery | None:
        d = webhook_deliveries
        row = self._read(lambda c: c.execute(select(d).where(d.c.id == delivery_id)).first())
        return self._delivery(row) if row is not None else None

    def list_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        a = webhook_attempts
        rows = self._read(lambda c: c.execute(select(a).where(a.c.delivery_id == delivery_id)
                                              .order_by(a.c.id)).all())
        return [dict(r._mapping) for r in rows]

    def tenant_delivery_log(self, tenant_id: int, endpoint_ids: Sequence[str], outcome: str | None = None,
                            before_id: int | None = None, limit: int = 50) -> list[LogEntry]:
        """The deliveries of ``tenant_id``'s events to ``endpoint_ids``, newest first, with the event type and
        the duration of the last attempt (the console's delivery log). ``outcome``: ``delivered``, ``failed``
        (the last attempt failed: retrying or dead) or ``pending`` (not attempted yet)."""
        if not endpoint_ids:
            return []
        d, a = webhook_deliveries, webhook_attempts
        last_duration = select(a.c.duration_ms).where(a.c.delivery_id == d.c.id).order_by(a.c.id.desc()) \
            .limit(1).scalar_subquery()
        q = select(d, events.c.type.label("event_type"), last_duration.label("duration_ms")).select_from(
            d.outerjoin(events, and_(events.c.tenant_id == d.c.tenant_id, events.c.seq == d.c.seq))).where(
            d.c.tenant_id == tenant_id, d.c.endpoint_id.in_(list(endpoint_ids)))
        if outcome == "delivered":
            q = q.where(d.c.status == "delivered")
        elif outcome == "failed":
            q = q.where(or_(d.c.status == "dead", and_(d.c.status == "pending", d.c.attempts > 0)))
        elif outcome == "pending":
            q = q.where(d.c.status == "pending", d.c.attempts == 0)
        if before_id is not None:
            q = q.where(d.c.id < before_id)
        rows = self._read(lambda c: c.execute(q.order_by(d.c.id.desc()).limit(limit)).all())
        return [LogEntry(self._delivery(r), r.event_type, r.duration_ms) for r in rows]

    def last_deliveries(self, tenant_id: int, endpoint_ids: Sequence[str]) -> dict[str, Delivery]:
        """Each endpoint's most recently attempted delivery of ``tenant_id``'s events."""
        if not endpoint_ids:
            return {}
        d = webhook_deliveries
        latest = select(func.max(d.c.id)).where(d.c.tenant_id == tenant_id, d.c.endpoint_id.in_(
            list(endpoint_ids)), d.c.attempts > 0).group_by(d.c.endpoint_id)
        rows = self._read(lambda c: c.execute(select(d).where(d.c.id.in_(latest))).all())
        return {r.endpoint_id: self._delivery(r) for r in rows}

    def counts(self, endpoint_id: str) -> dict[str, int]:
        d = webhook_deliveries
        rows = self._read(lambda c: c.execute(select(d.c.status, func.count()).where(
            d.c.endpoint_id == endpoint_id).group_by(d.c.status)).all())
        return {r[0]: int(r[1]) for r in rows}


__all__ = ["ApiKey", "CursorExpired", "Delivery", "Endpoint", "Event", "EventStore", "Leased", "LogEntry",
           "Outcome", "append_events", "purge_tenant"]
