"""SQLite: the writers of one process queue on ``dialects.WriterQueue`` before ``BEGIN IMMEDIATE``.

Checked: the queue is left after every way a write transaction ends (commit, a constraint error, an exception
in the caller's code, a batch rolled back), so the next writer never waits; concurrent writers all land; the
request-log engine shares the queue; the rate-limit counter does not (it gives up instead of waiting).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scimgrip.scim.errors import Uniqueness
from scimgrip.scim.schema import CORE_USER
from scimgrip.storage import open_storage
from scimgrip.storage.sql.dialects import WriterQueue
from scimgrip.storage.sql.ratelimit import RateLimitStore
from scimgrip.storage.sql.repository import SqlStorage
from tests.storage.contract import q


@pytest.fixture
def sqlite_storage(tmp_path: Path) -> Iterator[SqlStorage]:
    s = open_storage(f"sqlite:///{tmp_path / 'queue.db'}")
    assert isinstance(s, SqlStorage)
    try:
        yield s
    finally:
        s.close()


def _queue(storage: SqlStorage) -> threading.Lock:
    return WriterQueue.for_file(storage.engine.url.database or "")


def _free(lock: threading.Lock) -> bool:
    if lock.acquire(timeout=2):
        lock.release()
        return True
    return False


def test_the_queue_is_left_however_a_write_ends(sqlite_storage: SqlStorage) -> None:
    s = sqlite_storage
    lock = _queue(s)
    t = s.create_tenant("acme").id
    s.create(t, "User", {"schemas": [CORE_USER], "userName": "a"})
    assert _free(lock)
    with pytest.raises(Uniqueness):
        s.create(t, "User", {"schemas": [CORE_USER], "userName": "A"})
    assert _free(lock)

    def boom(_current: object) -> object:
        raise RuntimeError("the caller's code fails mid-transaction")

    user = s.search(t, "User", q()).resources[0]
    with pytest.raises(RuntimeError):
        s.update(t, "User", user.id, boom)  # type: ignore[arg-type]
    assert _free(lock)
    with pytest.raises(RuntimeError), s.batch():
        s.create(t, "User", {"schemas": [CORE_USER], "userName": "in-batch"})
        assert not _free_now(lock)          # the batch holds the queue until it ends
        raise RuntimeError("batch aborted by the caller")
    assert _free(lock)
    assert [u.doc["userName"] for u in s.iter_all(t, "User")] == ["a"]


def _free_now(lock: threading.Lock) -> bool:
    """Whether another thread could take the queue right now."""
    got: list[bool] = []
    th = threading.Thread(target=lambda: got.append(_try(lock)))
    th.start()
    th.join()
    return got[0]


def _try(lock: threading.Lock) -> bool:
    if lock.acquire(blocking=False):
        lock.release()
        return True
    return False


def test_concurrent_writers_all_land(sqlite_storage: SqlStorage) -> None:
    s = sqlite_storage
    t = s.create_tenant("acme").id
    n = 200
    started = time.monotonic()
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: s.create(t, "User", {"schemas": [CORE_USER], "userName": f"u{i}"}), range(n)))
    assert sum(1 for _ in s.iter_all(t, "User")) == n
    assert time.monotonic() - started < 60
    assert _free(_queue(s))


def test_a_writer_waits_in_the_queue_for_the_holder(sqlite_storage: SqlStorage) -> None:
    """While another thread holds the queue, a write waits (it does not fail at once), then lands."""
    s = sqlite_storage
    t = s.create_tenant("acme").id
    lock = _queue(s)
    assert lock.acquire(timeout=2)
    threading.Timer(0.3, lock.release).start()
    started = time.monotonic()
    s.create(t, "User", {"schemas": [CORE_USER], "userName": "waited"})
    assert time.monotonic() - started >= 0.25
    assert _free(lock)


def test_request_log_shares_the_queue_and_the_rate_limit_counter_does_not(sqlite_storage: SqlStorage) -> None:
    s = sqlite_storage
    t = s.create_tenant("acme").id
    lock = _queue(s)
    assert lock.acquire(timeout=2)
    done = threading.Event()

    def log() -> None:
        s.append_request_log([{"tenant_id": t, "method": "GET", "path": "/x", "status": 200,
                               "outcome": "success"}])
        done.set()

    th = threading.Thread(target=log)
    th.start()
    assert not done.wait(0.3)               # queued behind the holder
    counters = RateLimitStore(s)
    try:
        assert counters.take("k", 10.0, 10.0, time.time()) == 0.0   # not queued: answers at once
    finally:
        lock.release()
        counters.close()
    assert done.wait(5)
    th.join()
    assert len(s.list_request_log(t)) == 1
