"""The SQL storage backend (SQLite and PostgreSQL) behind :class:`scimgrip.storage.base.Storage`.

Written against SQLAlchemy Core rather than the ORM: each call is a handful of explicit statements (an ORM unit
of work would load what it changes, e.g. a group's 100k members), writes are one transaction that takes the
row lock first, and list pages load members/groups for the whole page in one query.

Filters compile to SQL where the schema allows (``storage.sql.filters``); otherwise SQL narrows the candidates
and the same AST is evaluated in memory over them, streamed in batches, so ``totalResults`` stays exact.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias, TypeVar

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from scimgrip.events import outbox
from scimgrip.scim.errors import InvalidFilter, InvalidValue, NotFound, PreconditionFailed, ScimError, Uniqueness
from scimgrip.scim.filter import Filter, evaluate, parse_attr_path, parse_datetime
from scimgrip.scim.schema import DEFAULT_REGISTRY, Attribute
from scimgrip.storage.base import (
    Change,
    Member,
    MemberDelta,
    Page,
    Query,
    Storage,
    StoredResource,
    Tenant,
    TokenRecord,
)
from scimgrip.storage.sql.dialects import WRITE, Transactions, make_engine, unsynced_engine, with_retries
from scimgrip.storage.sql.events_store import append_events, purge_tenant
from scimgrip.storage.sql.filters import (
    CORE_URNS,
    EqualityProbe,
    FilterContext,
    as_text,
    compile_filter,
    equality_probe,
    fold,
    mentions,
)
from scimgrip.storage.sql.rawsql import Raw, dbapi_cursor
from scimgrip.storage.sql.tables import (
    format_utc,
    group_members,
    parse_utc,
    request_log,
    resource_values,
    resources,
    tenants,
    tokens,
)

T = TypeVar("T")
AnyRow: TypeAlias = "Row[*tuple[Any, ...]]"

CHUNK = 500                 # ids per IN (...) list
SCAN_BATCH = 1000           # candidates per batch on the in-memory filter path
RES_COLUMNS = (resources.c.pk, resources.c.id, resources.c.resource_type, resources.c.doc, resources.c.version,
               resources.c.created, resources.c.last_modified)
LOG_KEYS = ("tenant_id", "at", "method", "path", "status", "duration_ms", "outcome", "detail", "request_body",
            "response_body")

_MEMBER = resources.alias("m")      # built once: constructing an alias per call costs ~1 ms
_GROUP = resources.alias("g")

# sortBy attributes answered by an indexed/plain column: (column, nullable)
_SQL_SORT: dict[str, tuple[Any, bool]] = {
    "username": (resources.c.user_name_ci, True),
    "displayname": (resources.c.display_name_ci, True),
    "externalid": (resources.c.external_id, True),
    "id": (resources.c.id, False),
    "meta.created": (resources.c.created, False),
    "meta.lastmodified": (resources.c.last_modified, False),
}


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        return format_utc(value)
    raise TypeError(f"cannot store {type(value).__name__} in a document")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=_json_default).decode()


def _get_ci(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if k.lower() == low:
            return v
    return None


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def index_columns(resource_type: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The searchable columns of ``resources`` derived from a document."""
    user_name = as_text(_get_ci(doc, "userName")) if resource_type == "User" else None
    display = as_text(_get_ci(doc, "displayName"))
    return {
        "user_name": user_name,
        "user_name_ci": fold(user_name) if user_name is not None else None,
        "external_id": as_text(_get_ci(doc, "externalId")),
        "display_name": display,
        "display_name_ci": fold(display) if display is not None else None,
        "active": _as_bool(_get_ci(doc, "active")) if resource_type == "User" else None,
    }


def value_rows(doc: Mapping[str, Any]) -> list[tuple[str, str | None, str | None, str | None]]:
    """``resource_values`` rows: one per element of every core multi-valued complex attribute.

    (attr, type_ci, value, value_ci); ``members``/``groups`` live in ``group_members`` instead.
    """
    out: list[tuple[str, str | None, str | None, str | None]] = []
    for key, val in doc.items():
        if not isinstance(val, list) or key.lower().startswith("urn:") or key.lower() in ("members", "groups"):
            continue
        attr = key.lower()
        for el in val:
            if not isinstance(el, Mapping):
                continue
            value = as_text(_get_ci(el, "value"))
            typ = as_text(_get_ci(el, "type"))
            out.append((attr, fold(typ) if typ is not None else None, value,
                        fold(value) if value is not None else None))
    return out


_DERIVED = {"Group": "members", "User": "groups"}


def storable(resource_type: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without the attribute storage derives from ``group_members`` (groups' ``members``, users'
    ``groups``): those live only as rows, so a stale copy in the document can never be returned."""
    derived = _DERIVED.get(resource_type)
    if derived is None or not any(k.lower() == derived for k in doc):
        return doc
    return {k: v for k, v in doc.items() if k.lower() != derived}


def _bad_cursor(detail: str = "the cursor is invalid or has expired") -> ScimError:
    return ScimError(detail, status=400, scim_type="invalidCursor")


def _encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise _bad_cursor() from exc
    if not isinstance(data, dict) or not isinstance(data.get("p"), int):
        raise _bad_cursor()
    return data


@dataclass(frozen=True)
class _SortSpec:
    """How a query is ordered: by a column in SQL, in memory by an attribute, or by ``pk`` (``attr`` None)."""

    name: str                       # normalised sort_by ("" for none), recorded in cursors
    column: Any = None
    nullable: bool = False
    urn: str = ""
    attr: str | None = None
    sub: str | None = None
    definition: Attribute | None = None

    @property
    def in_sql(self) -> bool:
        return self.attr is None


def _sort_spec(resource_type: str, sort_by: str | None, *, in_memory: bool = False) -> _SortSpec:
    """``in_memory``: the rows are filtered in memory, so even a column sort must use the document value."""
    if not sort_by:
        return _SortSpec("")
    core = CORE_URNS.get(resource_type, "")
    name = sort_by
    if core and name.lower().startswith(core.lower() + ":"):
        name = name[len(core) + 1:]
    hit = _SQL_SORT.get(name.lower())
    if hit is not None and not in_memory and not (name.lower() == "username" and resource_type != "User"):
        return _SortSpec(name.lower(), column=hit[0], nullable=hit[1])
    try:
        resolved = DEFAULT_REGISTRY.resolve(resource_type, sort_by)
    except KeyError:
        resolved = None
    if resolved is not None:
        if resolved.parent is not None:
            return _SortSpec(sort_by.lower(), urn=resolved.schema, attr=resolved.parent.name,
                             sub=resolved.attribute.name, definition=resolved.attribute)
        return _SortSpec(sort_by.lower(), urn=resolved.schema, attr=resolved.attribute.name,
                         definition=resolved.attribute)
    try:
        path = parse_attr_path(sort_by)
    except InvalidFilter as exc:
        raise InvalidValue(f"invalid sortBy {sort_by!r}") from exc
    return _SortSpec(sort_by.lower(), urn=path.urn or core, attr=path.attr, sub=path.sub)


MemKey = tuple[int, int, Any]
_MISSING: MemKey = (1, 0, 0)


def _memory_key(doc: Mapping[str, Any], spec: _SortSpec, core: str) -> MemKey:
    """Sort key of one resource for an in-memory sort; missing values sort last (ascending)."""
    assert spec.attr is not None
    container: Any = doc
    if spec.urn and spec.urn.lower() != core.lower():
        container = _get_ci(doc, spec.urn)
        if not isinstance(container, Mapping):
            return _MISSING
    top = _get_ci(container, spec.attr)
    if isinstance(top, list):
        dicts = [e for e in top if isinstance(e, Mapping)]
        primary = [e for e in dicts if e.get("primary") is True]
        top = (primary or dicts or top or [None])[0]
    value = top
    if isinstance(top, Mapping):
        value = _get_ci(top, spec.sub) if spec.sub else _get_ci(top, "value")
    elif spec.sub:
        value = None
    if value is None or value == "" or isinstance(value, Mapping | list):
        return _MISSING
    if isinstance(value, bool):
        return (0, 0, int(value))
    if isinstance(value, int | float | Decimal):
        return (0, 1, Decimal(str(value)))
    text = str(value)
    d = spec.definition
    if d is not None and d.type == "dateTime":
        when = parse_datetime(text)
        if when is not None:
            return (0, 3, format_utc(when))
    if d is None or not d.case_exact:
        text = fold(text)
    return (0, 2, text)


def _key_to_json(key: MemKey) -> list[Any]:
    return [key[0], key[1], str(key[2]) if isinstance(key[2], Decimal) else key[2]]


def _key_from_json(raw: Any) -> MemKey:
    if not isinstance(raw, list) or len(raw) != 3 or not all(isinstance(x, int) for x in raw[:2]):
        raise _bad_cursor()
    m, kind, v = raw
    try:
        if kind == 1:
            return (m, kind, Decimal(str(v)))
        if kind == 0:
            return (m, kind, int(v))
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise _bad_cursor() from exc
    if not isinstance(v, str):
        raise _bad_cursor()
    return (m, kind, v)


def _integrity_error(exc: IntegrityError, *, user_name: str | None = None, what: str = "resource") -> ScimError:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    msg = str(orig)
    constraint = ""
    diag = getattr(orig, "diag", None)
    if diag is not None:
        constraint = getattr(diag, "constraint_name", "") or ""
    if state == "23505" or "UNIQUE constraint failed" in msg:
        if "user_name_ci" in msg or "user_name_ci" in constraint:
            return Uniqueness(f"userName {user_name!r} is already in use in this tenant")
        if "name_ci" in msg or "name_ci" in constraint:
            return Uniqueness(f"{what} already exists")
        return Uniqueness(f"{what} violates a uniqueness constraint")
    if state == "23503" or "FOREIGN KEY constraint failed" in msg:
        return InvalidValue(f"{what} refers to something that does not exist (a member or the tenant)")
    return InvalidValue(f"{what} was rejected by the database: {msg}")


# ---------------------------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------------------------
class SqlStorage(Transactions, Storage):
    """SQLite/PostgreSQL storage. Thread-safe: every call checks a connection out of the engine's pool."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self._init_transactions(engine if engine is not None else make_engine(url))
        self._log_engine: Engine | None = None
        self.raw = Raw(self.dialect, self.engine.dialect.loaded_dbapi)

    # -- plumbing ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._log_engine is not None and self._log_engine is not self.engine:
            self._log_engine.dispose()
        self.engine.dispose()

    def _write_unsynced(self, fn: Callable[[Connection], T]) -> T:
        """A write transaction that does not wait for the disk (request log, token last-used times): see
        ``dialects.unsynced_engine``. Never used for SCIM data."""
        if self._log_engine is None:
            self._log_engine = unsynced_engine(self.engine)
        engine = self._log_engine

        def run() -> T:
            with engine.connect() as conn:
                conn.execution_options(**WRITE)
                with conn.begin():
                    return fn(conn)
        return with_retries(run)

    def _insert_ignore(self, *args: Any) -> Any:
        """``INSERT INTO group_members (cols) SELECT … ON CONFLICT DO NOTHING RETURNING member_id``."""
        cols, sel = args[:-1], args[-1]
        ins = pg_dialect.insert(group_members) if self.dialect == "postgresql" else sqlite_dialect.insert(
            group_members)
        return ins.from_select(list(cols), sel).on_conflict_do_nothing().returning(group_members.c.member_id,
                                                                                   group_members.c.member_type)

    # -- tenants -----------------------------------------------------------------------------------------------
    @staticmethod
    def _tenant(row: AnyRow) -> Tenant:
        return Tenant(id=row.id, name=row.name, created=row.created, settings=orjson.loads(row.settings))

    def create_tenant(self, name: str, settings: dict[str, Any] | None = None) -> Tenant:
        created = _now()
        settings = dict(settings or {})

        def tx(conn: Connection) -> Tenant:
            res = conn.execute(insert(tenants).values(name=name, name_ci=fold(name), created=created,
                                                      settings=_dumps(settings)))
            pk = res.inserted_primary_key
            assert pk is not None
            return Tenant(id=int(pk[0]), name=name, created=created, settings=settings)

        try:
            return self._write(tx)
        except IntegrityError as exc:
            raise Uniqueness(f"tenant {name!r} already exists") from exc

    def get_tenant(self, name: str) -> Tenant | None:
        row = self._read(lambda c: c.execute(select(tenants).where(tenants.c.name_ci == fold(name))).first())
        return self._tenant(row) if row is not None else None

    def get_tenant_by_id(self, tenant_id: int) -> Tenant | None:
        row = self._read(lambda c: c.execute(select(tenants).where(tenants.c.id == tenant_id)).first())
        return self._tenant(row) if row is not None else None

    def list_tenants(self) -> list[Tenant]:
        rows = self._read(lambda c: c.execute(select(tenants).order_by(tenants.c.id)).all())
        return [self._tenant(r) for r in rows]

    def count_tenants(self) -> int:
        return int(self._read(lambda c: c.execute(select(func.count()).select_from(tenants)).scalar_one()))

    def update_tenant_settings(self, tenant_id: int, settings: dict[str, Any]) -> Tenant:
        def tx(conn: Connection) -> None:
            result = conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(settings=_dumps(settings)))
            if result.rowcount == 0:
                raise NotFound(f"no tenant with id {tenant_id}")

        self._write(tx)
        tenant = self.get_tenant_by_id(tenant_id)
        assert tenant is not None
        return tenant

    def delete_tenant(self, tenant_id: int) -> None:
        def tx(conn: Connection) -> None:
            purge_tenant(conn, tenant_id)
            conn.execute(delete(request_log).where(request_log.c.tenant_id == tenant_id))
            conn.execute(delete(tokens).where(tokens.c.tenant_id == tenant_id))
            conn.execute(delete(group_members).where(group_members.c.tenant_id == tenant_id))
            conn.execute(delete(resource_values).where(resource_values.c.tenant_id == tenant_id))
            conn.execute(delete(resources).where(resources.c.tenant_id == tenant_id))
            conn.execute(delete(tenants).where(tenants.c.id == tenant_id))

        self._write(tx)

    # -- tokens ------------------------------------------------------------------------------------------------
    @staticmethod
    def _token(row: Any) -> TokenRecord:
        return TokenRecord(id=row.id, tenant_id=row.tenant_id, token_hash=row.token_hash, created=row.created,
                           expires=row.expires, revoked=row.revoked, last_used=row.last_used,
                           description=row.description)

    def add_token(self, tenant_id: int, token_id: str, token_hash: str, expires: dt.datetime | None,
                  description: str = "") -> TokenRecord:
        record = TokenRecord(id=token_id, tenant_id=tenant_id, token_hash=token_hash, created=_now(),
                             expires=expires.astimezone(dt.UTC) if expires is not None else None, revoked=None,
                             last_used=None, description=description)
        try:
            self._write(lambda c: c.execute(insert(tokens).values(
                id=record.id, tenant_id=tenant_id, token_hash=token_hash, created=record.created,
                expires=record.expires, revoked=None, last_used=None, description=description)))
        except IntegrityError as exc:
            raise _integrity_error(exc, what="token") from exc
        return record

    def find_token(self, token_hash: str) -> TokenRecord | None:
        row = self._read_raw(lambda cur: self.raw.find_token(cur, token_hash))   # every request: rawsql.py
        return self._token(row) if row is not None else None

    def list_tokens(self, tenant_id: int) -> list[TokenRecord]:
        rows = self._read(lambda c: c.execute(
            select(tokens).where(tokens.c.tenant_id == tenant_id).order_by(tokens.c.created, tokens.c.id)).all())
        return [self._token(r) for r in rows]

    def revoke_token(self, tenant_id: int, token_id: str) -> bool:
        now = _now()

        def tx(conn: Connection) -> bool:
            res = conn.execute(update(tokens).where(tokens.c.tenant_id == tenant_id, tokens.c.id == token_id)
                               .values(revoked=func.coalesce(tokens.c.revoked, now)))
            return res.rowcount > 0

        return self._write(tx)

    def touch_tokens(self, last_used: dict[str, dt.datetime]) -> None:
        if not last_used:
            return

        def tx(conn: Connection) -> None:
            for token_id, when in last_used.items():
                conn.execute(update(tokens).where(
                    tokens.c.id == token_id, or_(tokens.c.last_used.is_(None), tokens.c.last_used < when))
                    .values(last_used=when))

        self._write_unsynced(tx)

    # -- resources: reading ------------------------------------------------------------------------------------
    @staticmethod
    def _resource(row: Any, members: list[Member] | None = None, groups: list[Member] | None = None,
                  doc: dict[str, Any] | None = None) -> StoredResource:
        return StoredResource(id=row.id, resource_type=row.resource_type,
                              doc=doc if doc is not None else orjson.loads(row.doc), version=row.version,
                              created=row.created, last_modified=row.last_modified, members=members,
                              groups=groups)

    @staticmethod
    def _load_members(conn: Connection, tenant_id: int, group_ids: Sequence[str]) -> dict[str, list[Member]]:
        """Membership rows only: no join to the member resources. ``members.display`` is read-only and
        optional (RFC 7643 §4.2); echoing what the client sent (nothing) keeps a member list read an
        index-only scan, and clients that diff the members they wrote (scim2-tester) see no difference."""
        gm = group_members
        out: dict[str, list[Member]] = {g: [] for g in group_ids}
        for chunk in _chunks(list(group_ids)):
            q = (select(gm.c.group_id, gm.c.member_id, gm.c.member_type)
                 .where(gm.c.tenant_id == tenant_id, gm.c.group_id.in_(chunk))
                 .order_by(gm.c.group_id, gm.c.member_id))
            for r in conn.execute(q):
                out[r.group_id].append(Member(value=r.member_id, type=r.member_type))
        return out

    @staticmethod
    def _load_groups(conn: Connection, tenant_id: int, user_ids: Sequence[str]) -> dict[str, list[Member]]:
        gm = group_members
        g = _GROUP
        out: dict[str, list[Member]] = {u: [] for u in user_ids}
        for chunk in _chunks(list(user_ids)):
            q = (select(gm.c.member_id, gm.c.group_id, g.c.display_name)
                 .select_from(gm.join(g, and_(g.c.tenant_id == gm.c.tenant_id, g.c.id == gm.c.group_id)))
                 .where(gm.c.tenant_id == tenant_id, gm.c.member_id.in_(chunk))
                 .order_by(gm.c.member_id, gm.c.group_id))
            for r in conn.execute(q):
                out[r.member_id].append(Member(value=r.group_id, type="direct", display=r.display_name))
        return out

    def _with_relations(self, conn: Connection, tenant_id: int, rows: Sequence[AnyRow], *,
                        include_members: bool, include_groups: bool) -> list[StoredResource]:
        group_ids = [r.id for r in rows if r.resource_type == "Group"] if include_members else []
        user_ids = [r.id for r in rows if r.resource_type == "User"] if include_groups else []
        members = self._load_members(conn, tenant_id, group_ids) if group_ids else {}
        groups = self._load_groups(conn, tenant_id, user_ids) if user_ids else {}
        return [self._resource(r, members.get(r.id), groups.get(r.id)) for r in rows]

    def get(self, tenant_id: int, resource_type: str, resource_id: str, *, include_members: bool = True,
            include_groups: bool = True) -> StoredResource:
        want_members = include_members and resource_type == "Group"
        want_groups = include_groups and resource_type == "User"

        def read(cur: Any) -> StoredResource:
            if want_groups and self.raw.pg:
                hit = self.raw.user_with_groups(cur, tenant_id, resource_id)
                if hit is None:
                    raise NotFound(f"{resource_type} {resource_id!r} not found")
                user, pairs = hit
                return self._resource(user, None, [Member(value=g, type="direct", display=d) for g, d in pairs])
            row = self.raw.resource(cur, tenant_id, resource_type, resource_id)
            if row is None:
                raise NotFound(f"{resource_type} {resource_id!r} not found")
            return self._raw_relations(cur, tenant_id, [row], want_members, want_groups)[0]

        return self._read_raw(read, snapshot=want_members or want_groups)

    def _raw_relations(self, cur: Any, tenant_id: int, rows: Sequence[Any], want_members: bool,
                       want_groups: bool) -> list[StoredResource]:
        """``_with_relations`` on the DBAPI cursor (rawsql.py)."""
        members: dict[str, list[Member]] = {}
        groups: dict[str, list[Member]] = {}
        if want_members:
            for r in rows:
                if r.resource_type == "Group":
                    members[r.id] = [Member(value=m, type=t) for m, t in self.raw.members(cur, tenant_id, r.id)]
        if want_groups:
            user_ids = [r.id for r in rows if r.resource_type == "User"]
            for chunk in _chunks(user_ids):
                for u in chunk:
                    groups[u] = []
                for member_id, group_id, display in self.raw.groups_of(cur, tenant_id, chunk):
                    groups[member_id].append(Member(value=group_id, type="direct", display=display))
        return [self._resource(r, members.get(r.id), groups.get(r.id)) for r in rows]

    def existing_ids(self, tenant_id: int, ids: Sequence[str]) -> dict[str, str]:
        wanted = _dedupe(ids)

        def tx(conn: Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for chunk in _chunks(wanted):
                for r in conn.execute(select(resources.c.id, resources.c.resource_type).where(
                        resources.c.tenant_id == tenant_id, resources.c.id.in_(chunk))):
                    out[r.id] = r.resource_type
            return out

        return self._read(tx) if wanted else {}

    def iter_all(self, tenant_id: int, resource_type: str, batch: int = 1000) -> Iterator[StoredResource]:
        def fetch(conn: Connection, after: int) -> tuple[int, list[StoredResource]]:
            rows = conn.execute(select(*RES_COLUMNS).where(
                resources.c.tenant_id == tenant_id, resources.c.resource_type == resource_type,
                resources.c.pk > after).order_by(resources.c.pk).limit(batch)).all()
            last_pk = int(rows[-1].pk) if rows else after
            return last_pk, self._with_relations(conn, tenant_id, rows, include_members=True,
                                                 include_groups=False)

        last = 0
        while True:
            after = last
            last, page = self._read(lambda c: fetch(c, after))  # noqa: B023 - called before the loop moves on
            yield from page
            if len(page) < batch:
                return

    # -- resources: writing ------------------------------------------------------------------------------------
    @staticmethod
    def _lookup(conn: Connection, tenant_id: int, ids: Sequence[str]) -> dict[str, AnyRow]:
        found: dict[str, AnyRow] = {}
        for chunk in _chunks(ids):
            for r in conn.execute(select(resources.c.id, resources.c.resource_type, resources.c.display_name,
                                         resources.c.user_name)
                                  .where(resources.c.tenant_id == tenant_id, resources.c.id.in_(chunk))):
                found[r.id] = r
        return found

    def _add_members(self, conn: Connection, tenant_id: int, group_id: str,
                     ids: Sequence[str]) -> list[tuple[str, str]]:
        """Insert membership rows (idempotent); the new ones as (member id, type) for the outbox.
        ``InvalidValue`` for an id not in the tenant.

        One ``INSERT … SELECT FROM resources … ON CONFLICT DO NOTHING RETURNING`` per chunk: ids that do not
        exist produce no row, so the existence check costs a second statement only when fewer rows came back
        than were asked for (re-adding present members, or a bad id).
        """
        with dbapi_cursor(conn) as cur:
            inserted: list[tuple[str, str]] = []
            for chunk in _chunks(ids):
                got = self.raw.add_members(cur, tenant_id, group_id, chunk)
                inserted += got
                if len(got) < len(chunk):
                    found = self.raw.existing(cur, tenant_id, chunk)
                    for m in chunk:
                        if m not in found:
                            raise InvalidValue(f"member {m!r} does not exist")
            return inserted

    @staticmethod
    def _write_values(conn: Connection, tenant_id: int, pk: int,
                      rows: list[tuple[str, str | None, str | None, str | None]]) -> None:
        if rows:
            conn.execute(insert(resource_values), [
                {"resource_pk": pk, "tenant_id": tenant_id, "attr": a, "type_ci": t, "value": v, "value_ci": vc}
                for a, t, v, vc in rows])

    def create(self, tenant_id: int, resource_type: str, doc: dict[str, Any],
               members: Sequence[str] = ()) -> StoredResource:
        member_ids = _dedupe(members)
        if member_ids and resource_type != "Group":
            raise InvalidValue(f"a {resource_type} has no members")
        rid = uuid.uuid4().hex
        now = _now()
        doc = storable(resource_type, doc)
        cols = index_columns(resource_type, doc)
        blob = _dumps(doc)
        rows = value_rows(doc)

        def tx(conn: Connection) -> StoredResource:
            with dbapi_cursor(conn) as cur:
                pk = self.raw.insert_resource(cur, tenant_id, resource_type, rid, now, blob, cols)
                self.raw.insert_values(cur, tenant_id, pk, rows)
                member_list: list[Member] | None = None
                groups: list[Member] | None = None
                added: list[tuple[str, str]] = []
                if resource_type == "Group":
                    member_list = []
                    if member_ids:
                        added = self._add_members(conn, tenant_id, rid, member_ids)
                        member_list = [Member(value=m, type=t) for m, t in self.raw.members(cur, tenant_id, rid)]
                elif resource_type == "User":
                    groups = []
                stored = StoredResource(id=rid, resource_type=resource_type, doc=doc, version=1, created=now,
                                        last_modified=now, members=member_list, groups=groups)
                append_events(conn, tenant_id, outbox.created(stored, added), now)
                return stored

        try:
            return self._write(tx)
        except IntegrityError as exc:
            raise _integrity_error(exc, user_name=cols["user_name"], what=resource_type) from exc

    def _apply_delta(self, conn: Connection, tenant_id: int, group_id: str,
                     delta: MemberDelta) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Apply a membership delta; the rows really (added, removed) as (member id, type), for the outbox."""
        gm = group_members
        removed: list[tuple[str, str]] = []
        add = _dedupe(delta.add)
        base = and_(gm.c.tenant_id == tenant_id, gm.c.group_id == group_id)
        gone = (gm.c.member_id, gm.c.member_type)
        if delta.remove_all:
            if add and len(add) <= 4 * CHUNK:
                # keep rows that are re-added, so replacing members with the same set is not a change
                res = conn.execute(delete(gm).where(base, gm.c.member_id.not_in(add)).returning(*gone))
            else:
                res = conn.execute(delete(gm).where(base).returning(*gone))
            removed += [(r[0], r[1]) for r in res]
        remove = [m for m in _dedupe(delta.remove) if m not in set(add)] if add else _dedupe(delta.remove)
        if remove:
            with dbapi_cursor(conn) as cur:
                for chunk in _chunks(remove):
                    removed += self.raw.remove_members(cur, tenant_id, group_id, chunk)
        added = self._add_members(conn, tenant_id, group_id, add) if add else []
        if delta.remove_all and add and len(add) > 4 * CHUNK:
            # everything was deleted and re-inserted: a re-added member is neither added nor removed
            back = {m for m, _ in removed} & {m for m, _ in added}
            removed = [x for x in removed if x[0] not in back]
        return added, removed

    def update(self, tenant_id: int, resource_type: str, resource_id: str,
               apply: Callable[[StoredResource], Change], *, expected_version: int | None = None,
               needs_members: bool = False) -> StoredResource:
        new_cols: dict[str, Any] = {}

        raw = self.raw

        def tx(conn: Connection) -> StoredResource:
            with dbapi_cursor(conn) as cur:
                row = raw.resource(cur, tenant_id, resource_type, resource_id, lock="FOR NO KEY UPDATE")
                if row is None:
                    raise NotFound(f"{resource_type} {resource_id!r} not found")
                if expected_version is not None and row.version != expected_version:
                    raise PreconditionFailed(f"version mismatch: the {resource_type} is at version {row.version}")
                is_group = resource_type == "Group"
                members = [Member(value=m, type=t) for m, t in raw.members(cur, tenant_id, resource_id)] \
                    if needs_members and is_group else None
                original = orjson.loads(row.doc)
                change = apply(self._resource(row, members=members))
                new_doc = storable(resource_type, change.doc)
                delta = change.members
                if not delta.is_empty() and not is_group:
                    raise InvalidValue(f"a {resource_type} has no members")
                added, removed = self._apply_delta(conn, tenant_id, resource_id, delta) if not delta.is_empty() \
                    else ([], [])
                members_changed = bool(added or removed)
                doc_changed = new_doc != original
                version, last_modified = row.version, row.last_modified
                if doc_changed or members_changed:
                    last_modified = _now()
                    version += 1
                    if doc_changed:
                        new_cols.update(index_columns(resource_type, new_doc))
                        raw.update_resource(cur, row.pk, last_modified, _dumps(new_doc), new_cols)
                        new_rows = value_rows(new_doc)
                        if new_rows != value_rows(original):
                            raw.delete_values(cur, row.pk)
                            raw.insert_values(cur, tenant_id, row.pk, new_rows)
                    else:
                        raw.update_resource(cur, row.pk, last_modified, None, None)
                if needs_members and is_group and (members_changed or members is None):
                    members = [Member(value=m, type=t) for m, t in raw.members(cur, tenant_id, resource_id)]
                stored = StoredResource(id=row.id, resource_type=row.resource_type,
                                        doc=new_doc if doc_changed else original, version=version,
                                        created=row.created, last_modified=last_modified, members=members)
                if doc_changed or members_changed:
                    append_events(conn, tenant_id, outbox.updated(original, stored, added, removed), last_modified)
                return stored

        try:
            return self._write(tx)
        except IntegrityError as exc:
            raise _integrity_error(exc, user_name=new_cols.get("user_name"), what=resource_type) from exc

    def delete(self, tenant_id: int, resource_type: str, resource_id: str, *,
               expected_version: int | None = None) -> None:
        raw = self.raw

        def tx(conn: Connection) -> None:
            with dbapi_cursor(conn) as cur:
                if expected_version is not None:
                    current = raw.resource(cur, tenant_id, resource_type, resource_id, lock="FOR UPDATE")
                    if current is None:
                        raise NotFound(f"{resource_type} {resource_id!r} not found")
                    if current.version != expected_version:
                        raise PreconditionFailed(
                            f"version mismatch: the {resource_type} is at version {current.version}")
                # memberships of the resource in groups: removed here (not by cascade) to report each one
                parents = raw.leave_groups(cur, tenant_id, resource_id)
                # its own group_members rows (as group) and resource_values go by ON DELETE CASCADE
                row = raw.delete_resource(cur, tenant_id, resource_type, resource_id)
                if row is None:
                    raise NotFound(f"{resource_type} {resource_id!r} not found")
                drafts: list[outbox.Draft] = []
                if parents:
                    found: list[Any] = []
                    for chunk in _chunks(sorted(set(parents))):
                        found += raw.resources_by_ids(cur, tenant_id, chunk)
                    groups = [self._resource(g) for g in sorted(found, key=lambda g: g.id)]
                    drafts += outbox.removed_from(groups, (resource_id, resource_type))
                drafts += outbox.deleted(self._resource(row))
                append_events(conn, tenant_id, drafts, _now())

        self._write(tx)

    # -- search ------------------------------------------------------------------------------------------------
    def search(self, tenant_id: int, resource_type: str, query: Query) -> Page:
        ctx = FilterContext(tenant_id, resource_type, self.dialect)
        if (query.filter is not None and query.cursor is None and not query.sort_by and query.start_index <= 1
                and query.count > 0):
            probe = equality_probe(query.filter, ctx)
            if probe is not None:
                hit = self._read_raw(lambda cur: self._probe_page(cur, tenant_id, resource_type, probe, query),
                                     snapshot=True)
                if hit is not None:
                    return hit
        cond: ColumnElement[bool] = true()
        exact = True
        if query.filter is not None:
            cond, exact = compile_filter(query.filter, ctx)
        base = and_(resources.c.tenant_id == tenant_id, resources.c.resource_type == resource_type, cond)
        spec = _sort_spec(resource_type, query.sort_by)
        count = max(query.count, 0)
        start = max(query.start_index, 1)
        cursor: dict[str, Any] | None = None
        if query.cursor:
            cursor = _decode_cursor(query.cursor)
            if cursor.get("s") != spec.name or bool(cursor.get("d")) != query.descending:
                raise _bad_cursor("the cursor belongs to a different sort order")
        in_sql = exact and spec.in_sql
        if not in_sql and spec.column is not None:
            spec = replace(_sort_spec(resource_type, query.sort_by, in_memory=True), name=spec.name)
        if cursor is not None and bool(cursor.get("m")) == in_sql:
            raise _bad_cursor()

        def tx(conn: Connection) -> Page:
            if in_sql:
                return self._search_sql(conn, tenant_id, base, spec, query, count, start, cursor)
            return self._search_memory(conn, tenant_id, resource_type, base, exact, spec, query, count, start,
                                       cursor)

        return self._read(tx)

    def _probe_page(self, cur: Any, tenant_id: int, resource_type: str, probe: EqualityProbe,
                    query: Query) -> Page | None:
        """The first index page of an equality filter Entra sends (``userName``/``externalId``/``displayName
        eq``, ``emails[type eq "work"].value eq``): one index probe on the DBAPI cursor (rawsql.py), no COUNT.
        ``None`` when the page is full (its total needs a count): the general path answers then."""
        if probe.column is not None:
            rows = self.raw.find_by_column(cur, tenant_id, resource_type, probe.column, probe.value, query.count)
        else:
            assert probe.attr is not None and probe.value_column is not None
            rows = self.raw.find_by_element(cur, tenant_id, resource_type, probe.attr, probe.type_ci,
                                            probe.value_column, probe.value, query.count)
        if len(rows) >= query.count:
            return None
        page = self._raw_relations(cur, tenant_id, rows, query.include_members, query.include_groups)
        return Page(page, len(page), 1)

    def _search_sql(self, conn: Connection, tenant_id: int, base: ColumnElement[bool], spec: _SortSpec,
                    query: Query, count: int, start: int, cursor: dict[str, Any] | None) -> Page:
        pk = resources.c.pk
        col = spec.column
        desc = query.descending
        order: list[Any] = []
        if col is not None:
            if spec.nullable:
                order.append(col.is_(None).desc() if desc else col.is_(None))
            order.append(col.desc() if desc else col)
        order.append(pk.desc() if desc else pk)
        cursor_mode = query.cursor is not None

        def counted() -> int:
            return int(conn.execute(select(func.count()).select_from(resources).where(base)).scalar_one())

        if count == 0:
            return Page([], counted(), 1 if cursor_mode else start)
        stmt = select(*RES_COLUMNS, *([col] if col is not None else [])).where(base).order_by(*order)
        if cursor is not None:
            stmt = stmt.where(self._keyset(spec, cursor, desc))
        if cursor_mode:
            rows = conn.execute(stmt.limit(count + 1)).all()
            more = len(rows) > count
            rows = rows[:count]
            # totalResults is counted once per walk, on its first page, and carried in the cursor (RFC 9865
            # lets the cursor hold what the server needs): later pages cost one index range scan, no COUNT(*)
            # of the tenant (0.3 s at 1,000,000 users). A first page that is also the last needs no COUNT.
            if cursor is None:
                total = len(rows) if not more else counted()
            else:
                carried = cursor.get("t")
                total = carried if isinstance(carried, int) and not isinstance(carried, bool) else counted()
        else:
            rows = conn.execute(stmt.offset(start - 1).limit(count)).all()
            more = False
            # a short, non-empty page (or an empty first page) ends the result: its total is known
            total = start - 1 + len(rows) if len(rows) < count and (rows or start == 1) else counted()
        page = self._with_relations(conn, tenant_id, rows, include_members=query.include_members,
                                    include_groups=query.include_groups)
        next_cursor = None
        if more and rows:
            last = rows[-1]
            key: Any = None
            if col is not None:
                key = last[-1]
                if isinstance(key, dt.datetime):
                    key = format_utc(key)
            next_cursor = _encode_cursor({"s": spec.name, "d": desc, "k": key, "p": last.pk, "t": total})
        return Page(page, total, 1 if cursor_mode else start, next_cursor=next_cursor)

    @staticmethod
    def _keyset(spec: _SortSpec, cursor: dict[str, Any], desc: bool) -> ColumnElement[bool]:
        pk = resources.c.pk
        p: int = cursor["p"]
        col: Any = spec.column
        if col is None:
            return pk < p if desc else pk > p
        k = cursor.get("k")
        if k is not None and not isinstance(k, str):
            raise _bad_cursor()
        if k is not None and spec.name in ("meta.created", "meta.lastmodified"):
            try:
                k = parse_utc(k)
            except ValueError as exc:
                raise _bad_cursor() from exc
        if k is None:
            if not spec.nullable:
                raise _bad_cursor()
            if desc:
                return or_(col.is_not(None), and_(col.is_(None), pk < p))
            return and_(col.is_(None), pk > p)
        if desc:
            return and_(col.is_not(None), or_(col < k, and_(col == k, pk < p)))
        after = or_(col > k, and_(col == k, pk > p))
        return or_(col.is_(None), after) if spec.nullable else after

    def _search_memory(self, conn: Connection, tenant_id: int, resource_type: str, base: ColumnElement[bool],
                       exact: bool, spec: _SortSpec, query: Query, count: int, start: int,
                       cursor: dict[str, Any] | None) -> Page:
        core = CORE_URNS.get(resource_type, "")
        flt: Filter | None = None if exact else query.filter
        sort_attr = (spec.attr or "").lower()
        want_members = resource_type == "Group" and (mentions(flt, "members") or sort_attr == "members")
        want_groups = resource_type == "User" and (mentions(flt, "groups") or sort_attr == "groups")
        items: list[tuple[MemKey, int]] = []
        last = 0
        cols = (resources.c.pk, resources.c.id, resources.c.resource_type, resources.c.doc, resources.c.version,
                resources.c.created, resources.c.last_modified)
        while True:
            rows = conn.execute(select(*cols).where(base, resources.c.pk > last).order_by(resources.c.pk)
                                .limit(SCAN_BATCH)).all()
            if not rows:
                break
            last = rows[-1].pk
            members = self._load_members(conn, tenant_id, [r.id for r in rows]) if want_members else {}
            groups = self._load_groups(conn, tenant_id, [r.id for r in rows]) if want_groups else {}
            for r in rows:
                doc = orjson.loads(r.doc)
                edoc = self._eval_doc(r, doc, members.get(r.id), groups.get(r.id))
                if flt is not None and not evaluate(flt, edoc, core):
                    continue
                key = _memory_key(edoc, spec, core) if spec.attr is not None else _MISSING
                items.append((key, r.pk))
            if len(rows) < SCAN_BATCH:
                break
        items.sort()
        total = len(items)
        desc = query.descending
        cursor_mode = query.cursor is not None
        next_cursor = None
        if cursor_mode:
            pos = 0 if not desc else total
            if cursor is not None:
                ck = (_key_from_json(cursor.get("k")), cursor["p"])
                pos = bisect.bisect_right(items, ck) if not desc else bisect.bisect_left(items, ck)
            if desc:
                chosen = list(reversed(items[max(pos - count, 0):pos]))
                more = pos - count > 0
            else:
                chosen = items[pos:pos + count]
                more = pos + count < total
            if more and chosen:
                k, p = chosen[-1]
                next_cursor = _encode_cursor({"s": spec.name, "d": desc, "m": 1, "k": _key_to_json(k), "p": p})
        else:
            ordered = list(reversed(items)) if desc else items
            chosen = ordered[start - 1:start - 1 + count]
        if not chosen:
            return Page([], total, 1 if cursor_mode else start)
        pks = [p for _, p in chosen]
        by_pk: dict[int, AnyRow] = {}
        for chunk in _chunks(pks):
            for r in conn.execute(select(*RES_COLUMNS).where(resources.c.pk.in_(chunk))):
                by_pk[r.pk] = r
        rows_in_order = [by_pk[p] for p in pks if p in by_pk]
        page = self._with_relations(conn, tenant_id, rows_in_order, include_members=query.include_members,
                                    include_groups=query.include_groups)
        return Page(page, total, 1 if cursor_mode else start, next_cursor=next_cursor)

    @staticmethod
    def _eval_doc(row: AnyRow, doc: dict[str, Any], members: list[Member] | None,
                  groups: list[Member] | None) -> dict[str, Any]:
        """The document as a client sees it, for the in-memory evaluator: plus ``id``, ``meta`` and relations."""
        out = dict(doc)
        out["id"] = row.id
        out["meta"] = {"resourceType": row.resource_type, "created": format_utc(row.created),
                       "lastModified": format_utc(row.last_modified), "version": f'W/"{row.version}"'}
        if members is not None:
            out["members"] = [{k: v for k, v in (("value", m.value), ("type", m.type), ("display", m.display))
                               if v is not None} for m in members]
        if groups is not None:
            out["groups"] = [{k: v for k, v in (("value", g.value), ("type", g.type), ("display", g.display))
                              if v is not None} for g in groups]
        return out

    # -- request log -------------------------------------------------------------------------------------------
    def append_request_log(self, entries: Sequence[dict[str, Any]]) -> None:
        if not entries:
            return
        rows = []
        for e in entries:
            row: dict[str, Any] = {k: e.get(k) for k in LOG_KEYS}
            if row["at"] is None:
                row["at"] = _now()
            if row["duration_ms"] is None:
                row["duration_ms"] = 0.0
            for body in ("request_body", "response_body", "detail"):
                if row[body] is not None and not isinstance(row[body], str):
                    row[body] = _dumps(row[body])
            row["at"] = self.raw.time_param(row["at"])
            rows.append(tuple(row[k] for k in LOG_KEYS))
        # one executemany on the DBAPI cursor (rawsql.py), on the connection that does not wait for the disk
        sql = f"INSERT INTO request_log ({', '.join(LOG_KEYS)}) VALUES ({Raw.marks(len(LOG_KEYS))})"

        def tx(conn: Connection) -> None:
            with dbapi_cursor(conn) as cur:
                self.raw.executemany(cur, sql, rows)

        self._write_unsynced(tx)

    def list_request_log(self, tenant_id: int, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._read(lambda c: c.execute(
            select(request_log).where(request_log.c.tenant_id == tenant_id)
            .order_by(request_log.c.id.desc()).limit(limit)).all())
        return [dict(r._mapping) for r in rows]

    def prune_request_log(self, tenant_id: int, keep: int) -> int:
        rl = request_log

        def tx(conn: Connection) -> int:
            if keep <= 0:
                return conn.execute(delete(rl).where(rl.c.tenant_id == tenant_id)).rowcount
            cutoff = conn.execute(select(rl.c.id).where(rl.c.tenant_id == tenant_id).order_by(rl.c.id.desc())
                                  .offset(keep - 1).limit(1)).scalar()
            if cutoff is None:
                return 0
            return conn.execute(delete(rl).where(rl.c.tenant_id == tenant_id, rl.c.id < cutoff)).rowcount

        return int(self._write_unsynced(tx))


__all__ = ["SqlStorage", "index_columns", "value_rows"]
