"""The shared single-use key store (storage/sql/sso_store.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from scimgrip.storage.base import Storage
from scimgrip.storage.sql.sso_store import SqlReplayCache


def test_seen_once_and_take(storage: Storage) -> None:
    cache = SqlReplayCache(storage)
    later = time.time() + 60
    assert cache.seen_once("saml:a", later)
    assert not cache.seen_once("saml:a", later)
    assert cache.seen_once("saml:b", later)
    assert cache.take("saml:a")
    assert not cache.take("saml:a")
    assert not cache.take("never-registered")


def test_expired_keys_are_forgotten(storage: Storage) -> None:
    now = [1000.0]
    cache = SqlReplayCache(storage, clock=lambda: now[0])
    assert cache.seen_once("k", 1010.0)
    assert cache.seen_once("state", 1010.0)
    assert not cache.seen_once("k", 1010.0)
    now[0] = 1011.0
    assert not cache.take("state")                 # expired: a late callback is refused
    assert cache.seen_once("k", 1100.0)            # an expired key may be recorded again
    assert not cache.seen_once("k", 1100.0)
    assert cache.seen_once("old", 1005.0) and cache.prune() == 1


def test_key_length_is_bounded(storage: Storage) -> None:
    cache = SqlReplayCache(storage)
    with pytest.raises(ValueError):
        cache.seen_once("x" * 201, time.time())
    with pytest.raises(ValueError):
        cache.take("")


def test_one_winner_under_concurrency(storage: Storage) -> None:
    """Eight threads present the same assertion ID at once: exactly one is admitted."""
    cache = SqlReplayCache(storage)
    barrier = threading.Barrier(8)
    results: list[bool] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        first = cache.seen_once("saml:race", time.time() + 60)
        with lock:
            results.append(first)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
