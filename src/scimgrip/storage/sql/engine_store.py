"""SQL backend of the engine state (:class:`scimgrip.engine.state.EngineStore`), SQLite and PostgreSQL.

Built like :class:`~scimgrip.storage.sql.repository.SqlStorage`: SQLAlchemy Core, one transaction per call
(``BEGIN IMMEDIATE`` for SQLite writers, autocommit reads on PostgreSQL), retried on busy/serialization errors.
Bulk calls (``get_links``, ``put_links``, ``append_logs``, ``pending_for_many``) use ``IN`` lists of
:data:`CHUNK` ids and ``executemany`` upserts, so a 10,000-object cycle costs tens of round trips, not 10,000.

Two ways in: :func:`open_engine_store` (from a URL, migrating to ``heads`` like ``open_storage``) or
:meth:`SqlEngineStore.from_storage` (sharing an open ``SqlStorage``'s engine and pool).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Literal, TypeAlias, TypeVar, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, IntegrityError

from scimgrip.engine.state import (
    JOB_STATE_FIELDS,
    JOB_STATUSES,
    LINK_STATES,
    PORTAL_RESTART,
    REF_KINDS,
    RESET_SCOPES,
    STAGED_ACTIONS,
    EngineStore,
    Escrow,
    Job,
    JobExists,
    JobNotFound,
    JobRef,
    JobStatus,
    Link,
    LogRecord,
    LogRow,
    LogStep,
    ModifiedProperty,
    PendingRef,
    Quarantine,
    RefKind,
    StagedAction,
    StagedDelete,
    TargetCall,
    job_id_of,
    parse_reset_scope,
)
from scimgrip.storage.sql.dialects import Transactions, make_engine
from scimgrip.storage.sql.engine_tables import (
    engine_escrow,
    engine_jobs,
    engine_links,
    engine_locks,
    engine_logs,
    engine_refs,
    engine_staged,
)
from scimgrip.storage.sql.rawsql import dbapi_cursor
from scimgrip.storage.sql.tables import format_utc

T = TypeVar("T")
AnyRow: TypeAlias = "Row[*tuple[Any, ...]]"

CHUNK = 500            # ids per IN (...) list
LOG_PAGE = 1000        # records per query while exporting
PG_PROBE_CHUNK = 5000  # ids per unnest() array on PostgreSQL
_PG_GET_LINKS = text(
    "SELECT l.* FROM unnest(CAST(:ids AS text[])) AS x(id) CROSS JOIN LATERAL "
    "(SELECT * FROM engine_links WHERE job_id = :job AND object_type = :type "
    "AND source_id = x.id COLLATE \"C\" OFFSET 0) AS l").columns(*engine_links.c)
LINK_COLUMNS = ("target_id", "display_name", "exported", "source_hash", "in_scope", "state", "updated")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        return format_utc(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in engine state")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=_json_default).decode()


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _as_set(value: str | Collection[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _seconds(ttl: float | dt.timedelta) -> dt.timedelta:
    return ttl if isinstance(ttl, dt.timedelta) else dt.timedelta(seconds=float(ttl))


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _dumps(value)


def _fetch_all(stmt: Any) -> Callable[[Connection], list[AnyRow]]:
    def run(conn: Connection) -> list[AnyRow]:
        return list(conn.execute(stmt).all())
    return run


def _unlift_status(status: str, row: AnyRow) -> str:
    """The status after a quarantine is lifted (QUA-4)."""
    if status != "Quarantine":
        return status
    return "Active" if row.last_successful_cycle is not None else "NotRun"


_NO_QUARANTINE: dict[str, Any] = {"quarantine_reason": None, "quarantine_since": None, "quarantine_level": 0,
                                  "quarantine_email_reason": None, "quarantine_error": None}


def _shallow(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict without ``dataclasses.asdict``'s deep copy (the JSON encoder copies
    anyway; asdict was a visible cost of writing 10,000 log records)."""
    return {name: getattr(obj, name) for name in _field_names(type(obj))}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


_LOG_COLUMNS = ("job_id", "cycle_id", "change_id", "at", "duration_ms", "object_type", "source_id",
                "source_display", "source_display_ci", "target_id", "action", "status", "reason", "detail",
                "steps", "modified", "calls")
_LOG_INSERT_SQLITE = (f"INSERT INTO engine_logs ({', '.join(_LOG_COLUMNS)}) "
                      f"VALUES ({', '.join('?' for _ in _LOG_COLUMNS)})")
_LOG_INSERT_PG = (f"INSERT INTO engine_logs ({', '.join(_LOG_COLUMNS)}) "
                  f"VALUES ({', '.join('%s' for _ in _LOG_COLUMNS)})")


def _log_values(rec: LogRecord, pg: bool) -> tuple[Any, ...]:
    """An ``engine_logs`` row as DBAPI parameters. orjson writes the step/property/call dataclasses itself,
    in field order — the same JSON as the dicts of a :class:`LogRow`."""
    return _log_params(pg, rec.job_id, rec.cycle_id, rec.change_id, rec.at, rec.duration_ms, rec.object_type,
                       rec.source_id, rec.source_display, rec.target_id, rec.action, rec.status, rec.reason,
                       rec.detail, rec.steps, rec.modified, rec.calls)


def _log_row_values(row: LogRow, pg: bool) -> tuple[Any, ...]:
    return _log_params(pg, row["job_id"], row["cycle_id"], row["change_id"], row["at"], row["duration_ms"],
                       row["object_type"], row["source_id"], row["source_display"], row["target_id"],
                       row["action"], row["status"], row["reason"], row["detail"], row["steps"], row["modified"],
                       row["calls"])


def _log_params(pg: bool, job_id: int, cycle_id: str, change_id: str, at: dt.datetime, duration_ms: float,
                object_type: str, source_id: str, display: str | None, target_id: str | None, action: str,
                status: str, reason: str | None, detail: str | None, steps: Any, modified: Any,
                calls: Any) -> tuple[Any, ...]:
    """Parameters in :data:`_LOG_COLUMNS` order, converted the way the Core column types would
    (``UtcDateTime``: fixed-width UTC text on SQLite, an aware UTC datetime on PostgreSQL)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return (job_id, cycle_id, change_id, at.astimezone(dt.UTC) if pg else format_utc(at), float(duration_ms),
            object_type, source_id, display, display.lower() if display is not None else None, target_id, action,
            status, reason, detail, _dumps(steps), _dumps(modified), _dumps(calls))


class SqlEngineStore(Transactions, EngineStore):
    """Engine state in the scimgrip database (SQLite or PostgreSQL). Thread-safe."""

    def __init__(self, engine: Engine, *, url: str | None = None, owns_engine: bool = False) -> None:
        self._init_transactions(engine)
        self.url = url if url is not None else engine.url.render_as_string(hide_password=True)
        self._owns_engine = owns_engine

    @classmethod
    def from_storage(cls, storage: Any) -> SqlEngineStore:
        """Share an open :class:`~scimgrip.storage.sql.repository.SqlStorage`'s engine (closing this store
        leaves it open)."""
        engine = getattr(storage, "engine", None)
        if not isinstance(engine, Engine):
            raise TypeError("from_storage needs a SqlStorage (an object with a SQLAlchemy .engine)")
        return cls(engine, url=getattr(storage, "url", None), owns_engine=False)

    # -- plumbing ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def _resolve(self, job: JobRef) -> int:
        """A job id from an id, a :class:`Job`, or a job name (one indexed lookup; :class:`JobNotFound`)."""
        if isinstance(job, str):
            found = self._read(lambda c: c.execute(select(engine_jobs.c.id).where(engine_jobs.c.name == job))
                               .scalar())
            if found is None:
                raise JobNotFound(f"no job named {job!r}")
            return int(found)
        return job_id_of(job)

    def _insert(self, table: Table) -> Any:
        """A dialect ``INSERT`` that supports ``ON CONFLICT``."""
        return pg_dialect.insert(table) if self.dialect == "postgresql" else sqlite_dialect.insert(table)

    def _upsert(self, table: Table, keys: Sequence[str], update_cols: Sequence[str],
                where: ColumnElement[bool] | None = None) -> Any:
        ins = self._insert(table)
        return ins.on_conflict_do_update(index_elements=[table.c[k] for k in keys],
                                         set_={c: ins.excluded[c] for c in update_cols}, where=where)

    # -- jobs --------------------------------------------------------------------------------------------------
    @staticmethod
    def _job(row: AnyRow) -> Job:
        quarantine = None
        if row.quarantine_reason is not None:
            quarantine = Quarantine(reason=row.quarantine_reason, since=row.quarantine_since,
                                    level=int(row.quarantine_level), last_email_reason=row.quarantine_email_reason,
                                    error=row.quarantine_error)
        return Job(
            id=int(row.id), name=row.name, config_text=row.config_text, fingerprint=row.fingerprint,
            status=cast(JobStatus, row.status), created=row.created, updated=row.updated, watermark=row.watermark,
            last_cycle_id=row.last_cycle_id, last_cycle_started=row.last_cycle_started,
            last_cycle_ended=row.last_cycle_ended, last_successful_cycle=row.last_successful_cycle,
            last_successful_cycle_with_exports=row.last_successful_cycle_with_exports,
            next_cycle_at=row.next_cycle_at, steady_state_first=row.steady_state_first,
            steady_state_last=row.steady_state_last, counters=_loads(row.counters) or {},
            progress=_loads(row.progress) or {}, state=_loads(row.state) or {}, quarantine=quarantine)

    @staticmethod
    def _job_row(conn: Connection, name: str, *, lock: bool = False) -> AnyRow:
        stmt = select(engine_jobs).where(engine_jobs.c.name == name)
        if lock and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            raise JobNotFound(f"no job named {name!r}")
        return row

    def _update_job(self, name: str, fn: Callable[[Connection, AnyRow], dict[str, Any]]) -> Job:
        """Read the job's row (locked), compute new column values, write them, return the job."""
        def tx(conn: Connection) -> Job:
            row = self._job_row(conn, name, lock=True)
            values = fn(conn, row)
            values["updated"] = _now()
            conn.execute(update(engine_jobs).where(engine_jobs.c.id == row.id).values(**values))
            return self._job(self._job_row(conn, name))

        return self._write(tx)

    def create_job(self, name: str, config_text: str, fingerprint: str,
                   status: JobStatus = "NotRun") -> Job:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        now = _now()

        def tx(conn: Connection) -> Job:
            conn.execute(insert(engine_jobs).values(
                name=name, config_text=config_text, fingerprint=fingerprint, status=status, created=now,
                updated=now, counters="{}", progress="{}", state="{}", quarantine_level=0))
            return self._job(self._job_row(conn, name))

        try:
            return self._write(tx)
        except IntegrityError as exc:
            raise JobExists(f"a job named {name!r} already exists") from exc

    def get_job(self, name: str) -> Job | None:
        row = self._read(lambda c: c.execute(select(engine_jobs).where(engine_jobs.c.name == name)).first())
        return self._job(row) if row is not None else None

    def get_job_by_id(self, job_id: int) -> Job | None:
        row = self._read(lambda c: c.execute(select(engine_jobs).where(engine_jobs.c.id == job_id)).first())
        return self._job(row) if row is not None else None

    def list_jobs(self) -> list[Job]:
        rows = self._read(lambda c: c.execute(select(engine_jobs).order_by(engine_jobs.c.name)).all())
        return [self._job(r) for r in rows]

    def delete_job(self, name: str) -> bool:
        def tx(conn: Connection) -> bool:
            job_id = conn.execute(select(engine_jobs.c.id).where(engine_jobs.c.name == name)).scalar()
            if job_id is None:
                return False
            for table in (engine_logs, engine_staged, engine_refs, engine_escrow, engine_links):
                conn.execute(delete(table).where(table.c.job_id == job_id))
            conn.execute(delete(engine_locks).where(engine_locks.c.name == name))
            conn.execute(delete(engine_jobs).where(engine_jobs.c.id == job_id))
            return True

        return self._write(tx)

    def update_job_config(self, name: str, config_text: str, fingerprint: str) -> Job:
        def change(_conn: Connection, row: AnyRow) -> dict[str, Any]:
            values: dict[str, Any] = {"config_text": config_text, "fingerprint": fingerprint}
            if fingerprint != row.fingerprint:
                values["watermark"] = None      # CYC-4: mappings/scope changed → next cycle is an initial one
            return values

        return self._update_job(name, change)

    def set_status(self, name: str, status: JobStatus) -> Job:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
        return self._update_job(name, lambda _c, _r: {"status": status})

    def save_job_state(self, name: str, **fields: Any) -> Job:
        unknown = set(fields) - JOB_STATE_FIELDS
        if unknown:
            raise TypeError(f"save_job_state() got unknown field(s) {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in fields.items():
            if key in ("counters", "progress", "state"):
                values[key] = _dumps(dict(value or {}))
            elif key == "quarantine":
                if value is None:
                    values.update(_NO_QUARANTINE)
                else:
                    q = cast(Quarantine, value)
                    values.update(quarantine_reason=q.reason, quarantine_since=q.since, quarantine_level=q.level,
                                  quarantine_email_reason=q.last_email_reason, quarantine_error=q.error)
            else:
                values[key] = value
        return self._update_job(name, lambda _c, _r: values)

    def restart(self, name: str, scopes: Collection[str]) -> Job:
        wanted = parse_reset_scope(scopes) if isinstance(scopes, str) else set(scopes)
        unknown = wanted - RESET_SCOPES
        if unknown:
            raise ValueError(f"unknown reset scope(s) {', '.join(sorted(unknown))}")
        if not wanted:
            wanted = set(PORTAL_RESTART)
        if "Full" in wanted:
            wanted |= {"ConnectorDataStore", "Escrows", "Watermark", "QuarantineState"}

        def change(conn: Connection, row: AnyRow) -> dict[str, Any]:
            jid = row.id
            values: dict[str, Any] = {}
            lift = "QuarantineState" in wanted
            if "ConnectorDataStore" in wanted:
                # links gone: references and staged deletes (which act on links) go too; re-read everything
                for table in (engine_links, engine_refs, engine_staged):
                    conn.execute(delete(table).where(table.c.job_id == jid))
                values["watermark"] = None
            if "Escrows" in wanted:
                conn.execute(delete(engine_escrow).where(engine_escrow.c.job_id == jid))
            if "Watermark" in wanted:
                values["watermark"] = None
            if "ForceDeletes" in wanted:
                conn.execute(update(engine_staged).where(engine_staged.c.job_id == jid).values(approved=True))
                lift = lift or row.quarantine_reason == "TooManyDeletes"
            elif "Watermark" in wanted:
                # DEL-1 "reject": the full re-evaluation re-stages whatever still applies
                conn.execute(delete(engine_staged).where(engine_staged.c.job_id == jid))
            if lift:
                values.update(_NO_QUARANTINE)
                values["status"] = _unlift_status(row.status, row)
            return values

        return self._update_job(name, change)

    # -- run lock ----------------------------------------------------------------------------------------------
    def try_lock(self, name: str, owner: str, ttl: float | dt.timedelta) -> bool:
        lk = engine_locks

        def tx(conn: Connection) -> bool:
            now = _now()
            ins = self._insert(lk).values(name=name, owner=owner, acquired=now, expires=now + _seconds(ttl))
            stmt = ins.on_conflict_do_update(
                index_elements=[lk.c.name],
                set_={"owner": ins.excluded.owner, "acquired": ins.excluded.acquired,
                      "expires": ins.excluded.expires},
                where=or_(lk.c.expires <= now, lk.c.owner == owner),
            ).returning(lk.c.owner)
            return conn.execute(stmt).first() is not None

        return self._write(tx)

    def refresh_lock(self, name: str, owner: str, ttl: float | dt.timedelta) -> bool:
        def tx(conn: Connection) -> bool:
            res = conn.execute(update(engine_locks).where(engine_locks.c.name == name, engine_locks.c.owner == owner)
                               .values(expires=_now() + _seconds(ttl)))
            return res.rowcount > 0

        return self._write(tx)

    def release_lock(self, name: str, owner: str) -> bool:
        def tx(conn: Connection) -> bool:
            res = conn.execute(delete(engine_locks).where(engine_locks.c.name == name, engine_locks.c.owner == owner))
            return res.rowcount > 0

        return self._write(tx)

    def lock_holder(self, name: str) -> tuple[str, dt.datetime] | None:
        row = self._read(lambda c: c.execute(select(engine_locks.c.owner, engine_locks.c.expires).where(
            engine_locks.c.name == name, engine_locks.c.expires > _now())).first())
        return (row.owner, row.expires) if row is not None else None

    # -- links -------------------------------------------------------------------------------------------------
    @staticmethod
    def _link(row: AnyRow) -> Link:
        return Link(job_id=int(row.job_id), object_type=row.object_type, source_id=row.source_id,
                    target_id=row.target_id, exported=_loads(row.exported) or {}, source_hash=row.source_hash,
                    in_scope=bool(row.in_scope), state=row.state, updated=row.updated, display_name=row.display_name)

    @staticmethod
    def _link_row(link: Link, now: dt.datetime) -> dict[str, Any]:
        if link.state not in LINK_STATES:
            raise ValueError(f"unknown link state {link.state!r}")
        return {"job_id": link.job_id, "object_type": link.object_type, "source_id": link.source_id,
                "target_id": link.target_id, "display_name": link.display_name, "exported": _dumps(link.exported),
                "source_hash": link.source_hash, "in_scope": bool(link.in_scope), "state": link.state,
                "updated": now}

    def get_link(self, job: JobRef, object_type: str, source_id: str) -> Link | None:
        el = engine_links
        row = self._read(lambda c: c.execute(select(el).where(
            el.c.job_id == self._resolve(job), el.c.object_type == object_type, el.c.source_id == source_id)).first())
        return self._link(row) if row is not None else None

    def get_links(self, job: JobRef, object_type: str, source_ids: Iterable[str]) -> dict[str, Link]:
        el = engine_links
        jid = self._resolve(job)
        ids = list(dict.fromkeys(source_ids))

        def tx(conn: Connection) -> dict[str, Link]:
            out: dict[str, Link] = {}
            if self.dialect == "postgresql":
                # one primary-key probe per id whatever the statistics say (a fresh table's missing stats make
                # the planner filter ``IN (…)`` over every link of the job, once per chunk)
                for chunk in _chunks(ids, PG_PROBE_CHUNK):
                    for row in conn.execute(_PG_GET_LINKS, {"ids": list(chunk), "job": jid, "type": object_type}):
                        out[row.source_id] = self._link(row)
                return out
            for chunk in _chunks(ids):
                for row in conn.execute(select(el).where(el.c.job_id == jid, el.c.object_type == object_type,
                                                         el.c.source_id.in_(chunk))):
                    out[row.source_id] = self._link(row)
            return out

        return self._read(tx) if ids else {}

    def find_link_by_target(self, job: JobRef, object_type: str, target_id: str) -> Link | None:
        el = engine_links
        row = self._read(lambda c: c.execute(select(el).where(
            el.c.job_id == self._resolve(job), el.c.object_type == object_type, el.c.target_id == target_id)
            .order_by(el.c.source_id).limit(1)).first())
        return self._link(row) if row is not None else None

    def put_link(self, link: Link) -> Link:
        row = self._link_row(link, _now())
        self._write(lambda c: c.execute(
            self._upsert(engine_links, ("job_id", "object_type", "source_id"), LINK_COLUMNS), [row]))
        return dataclasses.replace(link, updated=row["updated"])

    def put_links(self, links: Sequence[Link]) -> None:
        if not links:
            return
        now = _now()
        # last one wins; PostgreSQL refuses one statement touching a row twice
        rows = list({(lk.job_id, lk.object_type, lk.source_id): self._link_row(lk, now) for lk in links}.values())
        stmt = self._upsert(engine_links, ("job_id", "object_type", "source_id"), LINK_COLUMNS)

        def tx(conn: Connection) -> None:
            for chunk in _chunks(rows, 2000):
                conn.execute(stmt, list(chunk))

        self._write(tx)

    def delete_link(self, job: JobRef, object_type: str, source_id: str) -> bool:
        return self.delete_links(job, object_type, [source_id]) > 0

    def delete_links(self, job: JobRef, object_type: str, source_ids: Iterable[str]) -> int:
        el = engine_links
        jid = self._resolve(job)
        ids = list(dict.fromkeys(source_ids))

        def tx(conn: Connection) -> int:
            return sum(conn.execute(delete(el).where(el.c.job_id == jid, el.c.object_type == object_type,
                                                     el.c.source_id.in_(chunk))).rowcount for chunk in _chunks(ids))

        return self._write(tx) if ids else 0

    def iter_links(self, job: JobRef, object_type: str | None = None, *, in_scope: bool | None = None,
                   batch: int = 1000) -> Iterator[Link]:
        el = engine_links
        jid = self._resolve(job)
        base: list[ColumnElement[bool]] = [el.c.job_id == jid]
        if object_type is not None:
            base.append(el.c.object_type == object_type)
        if in_scope is not None:
            base.append(el.c.in_scope == in_scope)
        last: tuple[str, str] | None = None
        while True:
            cond = list(base)
            if last is not None:
                cond.append(tuple_(el.c.object_type, el.c.source_id) > tuple_(*last))
            stmt = select(el).where(*cond).order_by(el.c.object_type, el.c.source_id).limit(batch)
            rows = self._read(_fetch_all(stmt))
            for row in rows:
                yield self._link(row)
            if len(rows) < batch:
                return
            last = (rows[-1].object_type, rows[-1].source_id)

    def link_source_ids(self, job: JobRef, object_type: str) -> set[str]:
        el = engine_links
        stmt = select(el.c.source_id).where(el.c.job_id == self._resolve(job), el.c.object_type == object_type)
        return {row.source_id for row in self._read(_fetch_all(stmt))}

    def count_links(self, job: JobRef, object_type: str | None = None, *, in_scope: bool | None = None) -> int:
        el = engine_links
        cond: list[ColumnElement[bool]] = [el.c.job_id == self._resolve(job)]
        if object_type is not None:
            cond.append(el.c.object_type == object_type)
        if in_scope is not None:
            cond.append(el.c.in_scope == in_scope)
        return int(self._read(lambda c: c.execute(select(func.count()).select_from(el).where(*cond)).scalar_one()))

    # -- escrow ------------------------------------------------------------------------------------------------
    @staticmethod
    def _escrow(row: AnyRow) -> Escrow:
        return Escrow(job_id=int(row.job_id), object_type=row.object_type, source_id=row.source_id,
                      reason_code=row.reason_code, detail=row.detail, attempts=int(row.attempts),
                      next_retry_at=row.next_retry_at, is_reference=bool(row.is_reference),
                      first_failed=row.first_failed, last_failed=row.last_failed)

    def put_escrow(self, job: JobRef, object_type: str, source_id: str, reason_code: str, detail: str | None,
                   attempts: int, next_retry_at: dt.datetime, is_reference: bool = False) -> Escrow:
        jid = self._resolve(job)
        now = _now()
        es = engine_escrow
        stmt = self._upsert(es, ("job_id", "object_type", "source_id", "is_reference"),
                            ("reason_code", "detail", "attempts", "last_failed", "next_retry_at"))

        def tx(conn: Connection) -> Escrow:
            conn.execute(stmt, [{"job_id": jid, "object_type": object_type, "source_id": source_id,
                                 "is_reference": bool(is_reference), "reason_code": reason_code, "detail": detail,
                                 "attempts": int(attempts), "first_failed": now, "last_failed": now,
                                 "next_retry_at": next_retry_at}])
            row = conn.execute(select(es).where(es.c.job_id == jid, es.c.object_type == object_type,
                                                es.c.source_id == source_id,
                                                es.c.is_reference == bool(is_reference))).one()
            return self._escrow(row)

        return self._write(tx)

    def get_escrow(self, job: JobRef, object_type: str, source_id: str,
                   is_reference: bool = False) -> Escrow | None:
        es = engine_escrow
        row = self._read(lambda c: c.execute(select(es).where(
            es.c.job_id == self._resolve(job), es.c.object_type == object_type, es.c.source_id == source_id,
            es.c.is_reference == bool(is_reference))).first())
        return self._escrow(row) if row is not None else None

    def due_escrows(self, job: JobRef, now: dt.datetime, limit: int | None = None) -> list[Escrow]:
        es = engine_escrow
        stmt = select(es).where(es.c.job_id == self._resolve(job), es.c.next_retry_at <= now).order_by(
            es.c.next_retry_at, es.c.object_type, es.c.source_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        return [self._escrow(r) for r in self._read(lambda c: c.execute(stmt).all())]

    def list_escrows(self, job: JobRef) -> list[Escrow]:
        es = engine_escrow
        stmt = select(es).where(es.c.job_id == self._resolve(job)).order_by(es.c.object_type, es.c.source_id,
                                                                         es.c.is_reference)
        return [self._escrow(r) for r in self._read(lambda c: c.execute(stmt).all())]

    def clear_escrow(self, job: JobRef, object_type: str, source_id: str,
                     is_reference: bool | None = None) -> int:
        es = engine_escrow
        cond = [es.c.job_id == self._resolve(job), es.c.object_type == object_type, es.c.source_id == source_id]
        if is_reference is not None:
            cond.append(es.c.is_reference == bool(is_reference))
        return int(self._write(lambda c: c.execute(delete(es).where(*cond)).rowcount))

    def count_escrows(self, job: JobRef, *, is_reference: bool | None = None) -> int:
        es = engine_escrow
        cond = [es.c.job_id == self._resolve(job)]
        if is_reference is not None:
            cond.append(es.c.is_reference == bool(is_reference))
        return int(self._read(lambda c: c.execute(select(func.count()).select_from(es).where(*cond)).scalar_one()))

    def clear_all_escrows(self, job: JobRef) -> int:
        es = engine_escrow
        return int(self._write(lambda c: c.execute(delete(es).where(es.c.job_id == self._resolve(job))).rowcount))

    # -- pending references ------------------------------------------------------------------------------------
    @staticmethod
    def _ref(row: AnyRow) -> PendingRef:
        return PendingRef(job_id=int(row.job_id), kind=cast(RefKind, row.kind), holder_source_id=row.holder_source_id,
                          target_source_id=row.target_source_id, created=row.created)

    def put_pending_ref(self, job: JobRef, kind: RefKind, holder_source_id: str, target_source_id: str) -> None:
        if kind not in REF_KINDS:
            raise ValueError(f"unknown reference kind {kind!r}")
        stmt = self._insert(engine_refs).values(
            job_id=self._resolve(job), kind=kind, holder_source_id=holder_source_id, target_source_id=target_source_id,
            created=_now()).on_conflict_do_nothing()
        self._write(lambda c: c.execute(stmt))

    def pending_for(self, job: JobRef, target_source_id: str) -> list[PendingRef]:
        return self.pending_for_many(job, [target_source_id]).get(target_source_id, [])

    def pending_for_many(self, job: JobRef, target_source_ids: Iterable[str]) -> dict[str, list[PendingRef]]:
        rf = engine_refs
        jid = self._resolve(job)
        ids = list(dict.fromkeys(target_source_ids))

        def tx(conn: Connection) -> dict[str, list[PendingRef]]:
            out: dict[str, list[PendingRef]] = {}
            for chunk in _chunks(ids):
                for row in conn.execute(select(rf).where(rf.c.job_id == jid, rf.c.target_source_id.in_(chunk))
                                        .order_by(rf.c.target_source_id, rf.c.kind, rf.c.holder_source_id)):
                    out.setdefault(row.target_source_id, []).append(self._ref(row))
            return out

        return self._read(tx) if ids else {}

    def clear_pending_ref(self, job: JobRef, kind: RefKind, holder_source_id: str,
                          target_source_id: str | None = None) -> int:
        rf = engine_refs
        cond = [rf.c.job_id == self._resolve(job), rf.c.kind == kind, rf.c.holder_source_id == holder_source_id]
        if target_source_id is not None:
            cond.append(rf.c.target_source_id == target_source_id)
        return int(self._write(lambda c: c.execute(delete(rf).where(*cond)).rowcount))

    def count_pending_refs(self, job: JobRef) -> int:
        rf = engine_refs
        return int(self._read(lambda c: c.execute(
            select(func.count()).select_from(rf).where(rf.c.job_id == self._resolve(job))).scalar_one()))

    # -- staged deletes ----------------------------------------------------------------------------------------
    def stage_delete(self, job: JobRef, object_type: str, source_id: str, action: StagedAction) -> None:
        if action not in STAGED_ACTIONS:
            raise ValueError(f"unknown staged action {action!r}")
        stmt = self._upsert(engine_staged, ("job_id", "object_type", "source_id"), ("action", "staged_at",
                                                                                     "approved"))
        row = {"job_id": self._resolve(job), "object_type": object_type, "source_id": source_id, "action": action,
               "staged_at": _now(), "approved": False}
        self._write(lambda c: c.execute(stmt, [row]))

    def staged(self, job: JobRef, *, approved: bool | None = None) -> list[StagedDelete]:
        st = engine_staged
        cond = [st.c.job_id == self._resolve(job)]
        if approved is not None:
            cond.append(st.c.approved == approved)
        rows = self._read(lambda c: c.execute(select(st).where(*cond).order_by(
            st.c.staged_at, st.c.object_type, st.c.source_id)).all())
        return [StagedDelete(job_id=int(r.job_id), object_type=r.object_type, source_id=r.source_id,
                             action=cast(StagedAction, r.action), staged_at=r.staged_at, approved=bool(r.approved))
                for r in rows]

    def clear_staged(self, job: JobRef, object_type: str | None = None, source_id: str | None = None) -> int:
        st = engine_staged
        cond = [st.c.job_id == self._resolve(job)]
        if object_type is not None:
            cond.append(st.c.object_type == object_type)
        if source_id is not None:
            cond.append(st.c.source_id == source_id)
        return int(self._write(lambda c: c.execute(delete(st).where(*cond)).rowcount))

    # -- provisioning logs -------------------------------------------------------------------------------------
    @staticmethod
    def _log_row(rec: LogRecord) -> dict[str, Any]:
        return {
            "job_id": rec.job_id, "cycle_id": rec.cycle_id, "change_id": rec.change_id, "at": rec.at,
            "duration_ms": float(rec.duration_ms), "object_type": rec.object_type, "source_id": rec.source_id,
            "source_display": rec.source_display,
            "source_display_ci": rec.source_display.lower() if rec.source_display is not None else None,
            "target_id": rec.target_id, "action": rec.action, "status": rec.status, "reason": rec.reason,
            "detail": rec.detail,
            "steps": _dumps([_shallow(s) for s in rec.steps]),
            "modified": _dumps([_shallow(m) for m in rec.modified]),
            "calls": _dumps([_shallow(c) for c in rec.calls]),
        }

    @staticmethod
    def _log(row: AnyRow) -> LogRecord:
        return LogRecord(
            id=int(row.id), job_id=int(row.job_id), cycle_id=row.cycle_id, change_id=row.change_id,
            object_type=row.object_type, source_id=row.source_id, action=row.action, status=row.status, at=row.at,
            duration_ms=float(row.duration_ms), source_display=row.source_display, target_id=row.target_id,
            reason=row.reason, detail=row.detail,
            steps=tuple(LogStep(**s) for s in _loads(row.steps) or []),
            modified=tuple(ModifiedProperty(**m) for m in _loads(row.modified) or []),
            calls=tuple(TargetCall(**c) for c in _loads(row.calls) or []))

    def append_logs(self, records: Sequence[LogRecord]) -> None:
        self._insert_logs(lambda pg: [_log_values(r, pg) for r in records])

    def append_log_rows(self, rows: Sequence[LogRow]) -> None:
        self._insert_logs(lambda pg: [_log_row_values(r, pg) for r in rows])

    def _insert_logs(self, values: Callable[[bool], list[tuple[Any, ...]]]) -> None:
        """One transaction; the rows go straight to the DBAPI cursor's ``executemany``: Core's per-row bind
        processing was most of the cost of writing a 10,000-record cycle. DBAPI errors are re-raised as
        SQLAlchemy's classes, as Core would (``dialects.with_retries`` retries on those)."""

        pg = self.engine.dialect.name == "postgresql"
        rows = values(pg)
        if not rows:
            return
        sql = _LOG_INSERT_PG if pg else _LOG_INSERT_SQLITE

        def tx(conn: Connection) -> None:
            with dbapi_cursor(conn) as cur:
                try:
                    cur.executemany(sql, rows)
                except conn.dialect.loaded_dbapi.Error as exc:
                    raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error) from exc

        self._write(tx)

    @staticmethod
    def _log_conditions(jid: int, *, user: str | None = None, action: str | Collection[str] | None = None,
                        status: str | Collection[str] | None = None, since: dt.datetime | None = None,
                        until: dt.datetime | None = None, cycle_id: str | None = None,
                        change_id: str | None = None, object_type: str | None = None) -> list[ColumnElement[bool]]:
        lg = engine_logs
        cond: list[ColumnElement[bool]] = [lg.c.job_id == jid]
        if user is not None:
            cond.append(or_(lg.c.source_id == user, lg.c.target_id == user, lg.c.source_display_ci == user.lower()))
        actions = _as_set(action)
        if actions is not None:
            cond.append(lg.c.action.in_(actions))
        statuses = _as_set(status)
        if statuses is not None:
            cond.append(lg.c.status.in_(statuses))
        if since is not None:
            cond.append(lg.c.at >= since)
        if until is not None:
            cond.append(lg.c.at < until)
        if cycle_id is not None:
            cond.append(lg.c.cycle_id == cycle_id)
        if change_id is not None:
            cond.append(lg.c.change_id == change_id)
        if object_type is not None:
            cond.append(lg.c.object_type == object_type)
        return cond

    def query_logs(self, job: JobRef, *, user: str | None = None, action: str | Collection[str] | None = None,
                   status: str | Collection[str] | None = None, since: dt.datetime | None = None,
                   until: dt.datetime | None = None, cycle_id: str | None = None, change_id: str | None = None,
                   object_type: str | None = None, limit: int = 100, after_id: int | None = None,
                   newest_first: bool = False) -> list[LogRecord]:
        lg = engine_logs
        cond = self._log_conditions(self._resolve(job), user=user, action=action, status=status, since=since,
                                    until=until, cycle_id=cycle_id, change_id=change_id, object_type=object_type)
        if after_id is not None:
            cond.append(lg.c.id < after_id if newest_first else lg.c.id > after_id)
        order = lg.c.id.desc() if newest_first else lg.c.id.asc()
        stmt = select(lg).where(and_(*cond)).order_by(order).limit(max(0, int(limit)))
        return [self._log(r) for r in self._read(lambda c: c.execute(stmt).all())]

    def _iter_logs(self, job: JobRef, filters: dict[str, Any]) -> Iterator[LogRecord]:
        after: int | None = None
        while True:
            page = self.query_logs(job, limit=LOG_PAGE, after_id=after, **filters)
            yield from page
            if len(page) < LOG_PAGE:
                return
            after = page[-1].id

    def export_logs(self, job: JobRef, fmt: Literal["csv", "json"] = "csv", *,
                    part: Literal["logs", "steps", "modified"] = "logs", **filters: Any) -> Iterator[str]:
        if fmt not in ("csv", "json"):
            raise ValueError(f"unknown export format {fmt!r}; use csv or json")
        if part not in ("logs", "steps", "modified"):
            raise ValueError(f"unknown export part {part!r}; use logs, steps or modified")
        bad = set(filters) - {"user", "action", "status", "since", "until", "cycle_id", "change_id", "object_type"}
        if bad:
            raise TypeError(f"export_logs() got unknown filter(s) {', '.join(sorted(bad))}")
        record = self.get_job_by_id(self._resolve(job))
        job_name = record.name if record is not None else str(self._resolve(job))
        if fmt == "json":
            return self._export_json(job, job_name, filters)
        return self._export_csv(job, job_name, part, filters)

    def _export_json(self, job: JobRef, job_name: str, filters: dict[str, Any]) -> Iterator[str]:
        yield "["
        first = True
        for rec in self._iter_logs(job, filters):
            yield ("\n" if first else ",\n") + _dumps(graph_log(rec, job_name))
            first = False
        yield "\n]\n"

    def _export_csv(self, job: JobRef, job_name: str, part: str, filters: dict[str, Any]) -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_HEADERS[part])
        for count, rec in enumerate(self._iter_logs(job, filters), 1):
            for row in csv_rows(rec, job_name, part):
                writer.writerow(row)
            if count % LOG_PAGE == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    def prune_logs(self, before: dt.datetime, job: JobRef | None = None) -> int:
        lg = engine_logs
        cond: list[ColumnElement[bool]] = [lg.c.at < before]
        if job is not None:
            cond.append(lg.c.job_id == self._resolve(job))
        return int(self._write(lambda c: c.execute(delete(lg).where(*cond)).rowcount))

    def count_logs(self, job: JobRef) -> int:
        lg = engine_logs
        return int(self._read(lambda c: c.execute(
            select(func.count()).select_from(lg).where(lg.c.job_id == self._resolve(job))).scalar_one()))


# ---------------------------------------------------------------------------------------------------------------
# export shapes
# ---------------------------------------------------------------------------------------------------------------
def graph_log(rec: LogRecord, job_name: str) -> dict[str, Any]:
    """A record in Graph's camelCase ``provisioningObjectSummary`` shape (LOG-1, LOG-4), plus ``targetCalls``."""
    return {
        "id": str(rec.id),
        "jobId": job_name,
        "cycleId": rec.cycle_id,
        "changeId": rec.change_id,
        "activityDateTime": format_utc(rec.at),
        "durationInMilliseconds": int(round(rec.duration_ms)),
        "provisioningAction": rec.action,
        "provisioningStatusInfo": {
            "status": rec.status,
            "errorInformation": ({"errorCode": rec.reason, "reason": rec.detail}
                                 if rec.reason is not None or rec.detail is not None else None),
        },
        "provisioningSteps": [{"name": s.name, "provisioningStepType": s.type, "status": s.status,
                               "description": s.description, "details": s.details} for s in rec.steps],
        "modifiedProperties": [{"displayName": m.name, "oldValue": m.old, "newValue": m.new} for m in rec.modified],
        "sourceIdentity": {"id": rec.source_id, "type": rec.object_type, "displayName": rec.source_display},
        "targetIdentity": {"id": rec.target_id, "type": rec.object_type},
        "targetCalls": [{"method": c.method, "path": c.path, "status": c.status,
                         "durationInMilliseconds": c.duration_ms} for c in rec.calls],
    }


CSV_HEADERS: dict[str, list[str]] = {
    "logs": ["id", "jobId", "cycleId", "changeId", "activityDateTime", "durationInMilliseconds", "objectType",
             "sourceId", "sourceDisplayName", "targetId", "provisioningAction", "status", "errorCode", "reason",
             "modifiedProperties", "targetCalls"],
    "steps": ["changeId", "cycleId", "stepIndex", "name", "provisioningStepType", "status", "description",
              "details"],
    "modified": ["changeId", "cycleId", "displayName", "oldValue", "newValue"],
}


def csv_rows(rec: LogRecord, job_name: str, part: str) -> list[list[str]]:
    """The CSV rows of one record for an export ``part`` (LOG-2: three files joined by change id)."""
    if part == "steps":
        return [[rec.change_id, rec.cycle_id, str(i), s.name, s.type, s.status, s.description,
                 _dumps(s.details) if s.details else ""] for i, s in enumerate(rec.steps)]
    if part == "modified":
        return [[rec.change_id, rec.cycle_id, m.name, _csv_value(m.old), _csv_value(m.new)] for m in rec.modified]
    return [[str(rec.id), job_name, rec.cycle_id, rec.change_id, format_utc(rec.at), str(int(round(rec.duration_ms))),
             rec.object_type, rec.source_id, rec.source_display or "", rec.target_id or "", rec.action, rec.status,
             rec.reason or "", rec.detail or "",
             "; ".join(f"{m.name}: {_csv_value(m.old)} -> {_csv_value(m.new)}" for m in rec.modified),
             "; ".join(f"{c.method} {c.path} {c.status}" for c in rec.calls)]]


# ---------------------------------------------------------------------------------------------------------------
# opening
# ---------------------------------------------------------------------------------------------------------------
def open_engine_store(url: str | None = None) -> SqlEngineStore:
    """A ready :class:`SqlEngineStore` for ``url`` (``storage.normalize_url`` rules), migrated to ``heads``."""
    from scimgrip.storage import _upgrade_engine, normalize_url

    normalized = normalize_url(url)
    engine = make_engine(normalized)
    try:
        _upgrade_engine(engine)
    except BaseException:
        engine.dispose()
        raise
    return SqlEngineStore(engine, url=normalized, owns_engine=True)


__all__ = ["CSV_HEADERS", "SqlEngineStore", "csv_rows", "graph_log", "open_engine_store"]
