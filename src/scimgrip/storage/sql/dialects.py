"""Engine construction and the per-dialect settings the storage guarantees depend on.

SQLite: WAL (readers never block the writer), ``synchronous=FULL`` (an acknowledged commit survives kill -9 and
power loss), ``busy_timeout`` 30 s, foreign keys on, and transactions begun by us rather than by pysqlite, so
write transactions can say ``BEGIN IMMEDIATE``: the write lock is taken up front, which serialises writers
instead of failing one with ``database is locked`` when a deferred transaction tries to upgrade.

PostgreSQL: psycopg 3, a pool sized for a threadpool, a liveness ping for connections that sat idle in the pool
(not on every checkout, see :func:`_ping_when_idle`); row locks are taken by the repository
with ``SELECT … FOR NO KEY UPDATE``.

A batch (:meth:`Transactions.batch`, ``Storage.batch``) is one write transaction on one connection, held in a
context variable of the calling thread: every ``_write``/``_read``/``_read_raw`` of that thread on the same engine
runs on it, each inside its own ``SAVEPOINT``, so one call's failure — even one
that aborts a PostgreSQL transaction — is undone by ``ROLLBACK TO SAVEPOINT`` alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.pool import QueuePool, StaticPool

from scimgrip.scim.errors import ServiceUnavailable
from scimgrip.storage.base import BatchAborted

SQLITE_BUSY_TIMEOUT_MS = 30_000
RETRY_FOR_SECONDS = 30.0
SQLITE_POOL_SIZE = 16
SQLITE_MAX_OVERFLOW = 40   # pool (56) > anyio's 40 worker threads: a thread never waits for a connection
PG_POOL_SIZE = 10
PG_PING_IDLE_SECONDS = 1.0

WRITE = {"scimgrip_write": True}
"""Execution options of a connection that will write (SQLite: ``BEGIN IMMEDIATE``)."""

T = TypeVar("T")


def make_engine(url: str, *, writer_queue: bool = True) -> Engine:
    """An engine for ``url``. SQLite: ``writer_queue`` puts this engine's write transactions in the process's
    queue for the file (:class:`WriterQueue`); off for writes that would rather give up than wait."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, writer_queue=writer_queue)
    if backend == "postgresql":
        engine = create_engine(url, pool_size=PG_POOL_SIZE, max_overflow=PG_POOL_SIZE, pool_recycle=3600)
        _ping_when_idle(engine)
        return engine
    raise ValueError(f"unsupported database URL {u.render_as_string(hide_password=True)!r}: "
                     "use sqlite:///path or postgresql://…")


def unsynced_engine(engine: Engine) -> Engine:
    """A second engine on ``engine``'s database whose commits do not wait for the disk: SQLite
    ``synchronous=OFF`` on its own connections, PostgreSQL ``synchronous_commit=off``. For bookkeeping that is
    not SCIM data (the request log, token last-used times): such a commit holds SQLite's write lock for
    microseconds instead of an fsync. In WAL mode a later ``synchronous=FULL`` commit of SCIM data still
    syncs everything before it, so durability of acknowledged SCIM writes is unchanged. An in-memory SQLite
    database exists only on ``engine``'s connection: ``engine`` itself is returned."""
    url = engine.url
    if engine.dialect.name == "postgresql":
        relaxed = create_engine(url, pool_size=2, max_overflow=4, pool_recycle=3600,
                                connect_args={"options": "-c synchronous_commit=off"})
        _ping_when_idle(relaxed)
        return relaxed
    if url.database in (None, "", ":memory:") or str(url.database).startswith("file::memory:"):
        return engine
    relaxed = _sqlite_engine(url.render_as_string(hide_password=False))

    @event.listens_for(relaxed, "connect")
    def _no_fsync(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=OFF")

    return relaxed


def _ping_when_idle(engine: Engine, idle_seconds: float | None = None) -> None:
    """``pool_pre_ping``, but only for a connection that sat in the pool for ``idle_seconds`` or more.

    SQLAlchemy's pre-ping costs a round trip on *every* checkout, i.e. on every transaction: a third of a simple
    statement's cost under load (docs/performance.md). A connection checked in a moment ago is as alive as the
    ping would prove; one that idled (across a database restart, a failover, an idle timeout) is pinged, and a
    dead one is replaced before the request uses it. A connection that breaks while in constant use fails the
    statement in flight, as it would with pre-ping, and SQLAlchemy then invalidates the pool.
    """

    limit = PG_PING_IDLE_SECONDS if idle_seconds is None else idle_seconds

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["scimgrip_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("scimgrip_idle_since")
        if since is None or time.monotonic() - since < limit:
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            if not getattr(dbapi_conn, "autocommit", True):
                dbapi_conn.rollback()      # leave no transaction open behind the ping
        except Exception as exc:          # noqa: BLE001 - any failure means "dead": the pool reconnects
            raise DisconnectionError("connection failed its idle ping") from exc


class WriterQueue:
    """The writers of one process on one SQLite file, queued on a lock before ``BEGIN IMMEDIATE``.

    SQLite's busy handler *sleeps* between attempts (1, 2, 5 … 100 ms), so writers that meet SQLite's lock
    leave it idle after each commit until one of them wakes up: under 16 concurrent writers the p99 of a
    simple write was 0.33–0.54 s (docs/performance.md, change 7). Queued on a lock, the next writer starts as
    soon as the previous one released. Writers of other processes still meet SQLite's lock and its busy handler.

    The lock is taken in the engine's ``begin`` event of a write transaction and released when the connection
    goes back to the pool (after COMMIT or ROLLBACK), so every write path of every store on the file queues,
    including a batch. Waiting is bounded by the busy timeout; past it the write fails as ``database is
    locked`` (retried, then a 503), as SQLite's own lock would. One lock per file path: every engine of the
    process on that file shares it (SCIM data, the request log, the provisioning store).
    """

    _queues: dict[str, threading.Lock] = {}
    _guard = threading.Lock()

    @classmethod
    def for_file(cls, database: str) -> threading.Lock:
        key = str(Path(database).expanduser().resolve())
        with cls._guard:
            lock = cls._queues.get(key)
            if lock is None:
                lock = cls._queues[key] = threading.Lock()
            return lock


_QUEUED = "scimgrip_writer_queue"


def _leave_queue(info: dict[str, Any]) -> None:
    lock = info.pop(_QUEUED, None)
    if lock is not None:
        lock.release()


def _sqlite_engine(url: str, *, writer_queue: bool = True) -> Engine:
    u = make_url(url)
    database = u.database or ""
    memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if memory:
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, poolclass=QueuePool, pool_size=SQLITE_POOL_SIZE,
                               max_overflow=SQLITE_MAX_OVERFLOW,
                               connect_args={"check_same_thread": False,
                                             "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would otherwise defer it).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
    queue = WriterQueue.for_file(database) if writer_queue and not memory else None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Straight on the DBAPI connection: BEGIN needs no result, and going through exec_driver_sql cost as
        # much SQLAlchemy machinery as a real statement, twice per request (docs/performance.md).
        write = conn.get_execution_options().get("scimgrip_write")
        sql = "BEGIN IMMEDIATE" if write else "BEGIN"
        pooled = conn.connection
        dbapi = pooled.driver_connection
        assert dbapi is not None
        if write and queue is not None and _QUEUED not in pooled.info:
            if not queue.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
                raise OperationalError(sql, None, dbapi.OperationalError("database is locked (writer queue)"))
            pooled.info[_QUEUED] = queue
        try:
            dbapi.execute(sql)
        except dbapi_error as exc:
            _leave_queue(pooled.info)
            # as Core would raise it, so with_retries sees a lock error (SQLAlchemy does not wrap what a
            # "begin" listener raises)
            raise DBAPIError.instance(sql, None, exc, dbapi_error) from exc

    if queue is not None:
        @event.listens_for(engine, "checkin")
        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            _leave_queue(record.info)       # after COMMIT/ROLLBACK: the connection is back in the pool

        @event.listens_for(engine, "invalidate")
        def _on_invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
            _leave_queue(record.info)

    return engine


def is_retryable(exc: BaseException) -> bool:
    """SQLite ``database is locked``/busy, PostgreSQL serialization failure or deadlock."""
    if isinstance(exc, OperationalError) and exc.orig is not None:
        msg = str(exc.orig).lower()
        if "database is locked" in msg or "database is busy" in msg:
            return True
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        code = getattr(exc.orig, "sqlstate", None)
        if code in ("40001", "40P01"):
            return True
    return False


def with_retries(fn: Callable[[], T], attempts: int = 8, give_up_after: float = RETRY_FOR_SECONDS) -> T:
    """``fn()``, run again after a lock or serialization conflict (back-off 10 ms doubling to 0.5 s), at most
    ``attempts`` times and not once ``give_up_after`` seconds have passed (a SQLite attempt may itself have waited
    out the 30 s busy timeout). Still in conflict after that: :class:`ServiceUnavailable` (503, ``Retry-After``),
    never a 500 — nothing was stored and the client may send the request again."""
    delay = 0.01
    started = time.monotonic()
    for attempt in range(attempts):
        try:
            return fn()
        except DBAPIError as exc:
            if not is_retryable(exc):
                raise
            if attempt == attempts - 1 or time.monotonic() - started > give_up_after:
                raise ServiceUnavailable("the database is busy; nothing was stored, send the request again",
                                         headers={"Retry-After": "1"}) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


@dataclass
class _Batch:
    """The open batch of one thread: its engine, connection, and whether a conflict has doomed it."""

    engine: Engine
    conn: Connection
    doomed: bool = False
    depth: int = 0

    def _exec(self, sql: str) -> None:
        # Savepoint statements straight on the DBAPI cursor: SQLAlchemy's begin_nested() compiles a savepoint
        # clause on every call, which cost ~0.24 ms per operation — a third of a Bulk operation's server time.
        cur = self.conn.connection.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()

    def run(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in a savepoint of the batch: an exception rolls back ``fn``'s statements alone (and clears
        PostgreSQL's aborted-transaction state). A retryable conflict dooms the whole batch (no per-call retry:
        the outer transaction may have lost its locks or snapshot, only a fresh start is safe)."""
        if self.doomed:
            raise BatchAborted("an earlier call of the batch hit a conflict")
        self.depth += 1
        name = f"scimgrip_sp{self.depth}"
        try:
            self._exec(f"SAVEPOINT {name}")
            try:
                result = fn(self.conn)
            except BaseException:
                self._exec(f"ROLLBACK TO SAVEPOINT {name}")
                self._exec(f"RELEASE SAVEPOINT {name}")
                raise
            self._exec(f"RELEASE SAVEPOINT {name}")
            return result
        except DBAPIError as exc:
            if is_retryable(exc):
                self.doomed = True
                raise BatchAborted("lock or serialization conflict inside the batch") from exc
            raise
        finally:
            self.depth -= 1


_BATCH: ContextVar[_Batch | None] = ContextVar("scimgrip_storage_batch", default=None)


def current_batch(engine: Engine) -> _Batch | None:
    """This thread's open batch on ``engine``, if any: a store on the same engine joins it."""
    current = _BATCH.get()
    return current if current is not None and current.engine is engine else None


class Transactions:
    """Transaction plumbing shared by every SQL store on one engine: reads (autocommit on PostgreSQL, saving
    the BEGIN/COMMIT round trips) and writes (``BEGIN IMMEDIATE`` on SQLite), both retried on lock and
    serialization errors."""

    engine: Engine
    _reader: Engine

    def _init_transactions(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT") \
            if self.dialect == "postgresql" else engine

    def _batch(self) -> _Batch | None:
        return current_batch(self.engine)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """``Storage.batch``: one write transaction (``BEGIN IMMEDIATE`` on SQLite) for this thread's calls until
        the block ends, each call in a savepoint; COMMIT at the end, ROLLBACK on an exception;
        :class:`BatchAborted` after a lock/serialization conflict (everything rolled back)."""
        if self._batch() is not None:       # nested: join the outer batch
            yield
            return

        def begin() -> tuple[Connection, Any]:
            conn = self.engine.connect()
            try:
                conn.execution_options(**WRITE)
                return conn, conn.begin()
            except BaseException:
                conn.close()
                raise

        conn, tx = with_retries(begin)
        state = _Batch(self.engine, conn)
        token = _BATCH.set(state)
        try:
            try:
                yield
            finally:
                _BATCH.reset(token)
            if state.doomed:                # a conflict that the caller swallowed still dooms the batch
                raise BatchAborted("a call of the batch hit a conflict")
            try:
                tx.commit()
            except DBAPIError as exc:
                if is_retryable(exc):
                    raise BatchAborted("conflict at commit") from exc
                raise
        except BaseException as exc:
            if tx.is_active:
                try:
                    tx.rollback()
                except DBAPIError:
                    conn.invalidate()       # a connection that cannot roll back must not return to the pool
            if isinstance(exc, DBAPIError) and is_retryable(exc):
                raise BatchAborted("lock or serialization conflict inside the batch") from exc
            raise
        finally:
            conn.close()

    def _read(self, fn: Callable[[Connection], T]) -> T:
        current = self._batch()
        if current is not None:             # see the batch's own uncommitted writes
            return current.run(fn)

        def run() -> T:
            with self._reader.connect() as conn, conn.begin():
                return fn(conn)
        return with_retries(run)

    def _read_raw(self, fn: Callable[[Any], T], *, snapshot: bool = False) -> T:
        """``fn(cursor)`` on a pooled DBAPI connection, without SQLAlchemy's statement machinery (the hot reads
        of ``rawsql.py``). PostgreSQL: autocommit, each statement its own snapshot, like the Core reader;
        SQLite: one statement is its own transaction, ``snapshot`` puts several in one ``BEGIN … COMMIT``."""
        current = self._batch()
        if current is not None:
            def on_batch(conn: Connection) -> T:
                cur = conn.connection.cursor()
                try:
                    return fn(cur)
                finally:
                    cur.close()
            return current.run(on_batch)
        pg = self.dialect == "postgresql"

        def run() -> T:
            fairy = self.engine.raw_connection()
            dbapi: Any = fairy.driver_connection
            try:
                cur = dbapi.cursor()
                try:
                    if pg:
                        dbapi.autocommit = True
                        try:
                            return fn(cur)
                        finally:
                            if not dbapi.broken:
                                dbapi.autocommit = False
                    if not snapshot:
                        return fn(cur)
                    dbapi.execute("BEGIN")
                    try:
                        result = fn(cur)
                    except BaseException:
                        dbapi.execute("ROLLBACK")
                        raise
                    dbapi.execute("COMMIT")
                    return result
                finally:
                    cur.close()
            except Exception:
                if pg and dbapi.broken:
                    fairy.invalidate()        # a dead connection must not go back to the pool
                raise
            finally:
                fairy.close()
        return with_retries(run)

    def _write(self, fn: Callable[[Connection], T]) -> T:
        current = self._batch()
        if current is not None:
            return current.run(fn)

        def run() -> T:
            with self.engine.connect() as conn:
                conn.execution_options(**WRITE)
                with conn.begin():
                    return fn(conn)
        return with_retries(run)
