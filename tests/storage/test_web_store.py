"""The web layer's SQL store on SQLite and PostgreSQL: accounts, single-use setup links and pending logins,
sessions, the request-log search of the debugger, the connection-test lookup, cascades on tenant delete."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from scimgrip.scim.errors import Uniqueness
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.web_store import OPERATOR, TENANT_ADMIN, RequestLogFilter, WebStore

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture()
def store(storage: Storage) -> WebStore:
    return WebStore(storage)


def test_accounts_are_unique_per_scope_case_insensitively(storage: Storage, store: WebStore) -> None:
    a = storage.create_tenant("a")
    b = storage.create_tenant("b")
    store.create_account("acc_1", OPERATOR, None, "Op@Example.com", "h")
    with pytest.raises(Uniqueness):
        store.create_account("acc_2", OPERATOR, None, "op@example.COM", "h")
    store.create_account("acc_3", TENANT_ADMIN, a.id, "op@example.com", "h")    # other scope: fine
    store.create_account("acc_4", TENANT_ADMIN, b.id, "op@example.com", "h")
    with pytest.raises(Uniqueness):
        store.create_account("acc_5", TENANT_ADMIN, a.id, "OP@example.com", "h")
    assert store.find_account(TENANT_ADMIN, a.id, "OP@EXAMPLE.COM").id == "acc_3"  # type: ignore[union-attr]
    assert store.find_account(TENANT_ADMIN, b.id, "op@example.com").id == "acc_4"  # type: ignore[union-attr]
    assert store.find_account(OPERATOR, None, "nobody@example.com") is None


def test_setup_link_is_used_exactly_once_under_a_race(storage: Storage, store: WebStore) -> None:
    t = storage.create_tenant("a")
    store.add_setup_link("h1", t.id, NOW + dt.timedelta(hours=1), None)
    wins: list[object] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        if store.use_setup_link("h1", dt.datetime.now(dt.UTC)) is not None:
            wins.append(1)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(wins) == 1
    store.add_setup_link("h2", t.id, NOW - dt.timedelta(seconds=1), None)
    assert store.use_setup_link("h2", dt.datetime.now(dt.UTC)) is None          # expired


def test_pending_login_is_taken_once_and_only_by_its_tenant(storage: Storage, store: WebStore) -> None:
    a, b = storage.create_tenant("a"), storage.create_tenant("b")
    store.put_pending("k", a.id, {"state": "s", "nonce": "n"}, NOW + dt.timedelta(minutes=5))
    assert store.take_pending("k", b.id, NOW) is None
    assert store.take_pending("k", a.id, NOW) == {"state": "s", "nonce": "n"}
    assert store.take_pending("k", a.id, NOW) is None                          # replay
    store.put_pending("old", a.id, {}, NOW - dt.timedelta(seconds=1))
    assert store.take_pending("old", a.id, NOW) is None                        # expired


def test_sessions_end_with_their_user_and_their_tenant(storage: Storage, store: WebStore) -> None:
    t = storage.create_tenant("a")
    store.create_session("s1", "user", csrf="c", tenant_id=t.id, user_id="u1")
    store.create_session("s2", "user", csrf="c", tenant_id=t.id, user_id="u2")
    assert store.delete_user_sessions(t.id, "u1") == 1
    assert store.get_session("s1") is None and store.get_session("s2") is not None
    store.create_account("acc_1", TENANT_ADMIN, t.id, "it@a.example", "h")
    store.create_session("s3", TENANT_ADMIN, csrf="c", account_id="acc_1", tenant_id=t.id)
    store.add_setup_link("h", t.id, NOW + dt.timedelta(hours=1), None)
    storage.delete_tenant(t.id)                                                 # cascades
    assert store.get_session("s2") is None and store.get_session("s3") is None
    assert store.get_account("acc_1") is None and store.get_setup_link("h") is None


def test_prune_sessions(storage: Storage, store: WebStore) -> None:
    store.create_session("old", OPERATOR, csrf="c", now=NOW - dt.timedelta(hours=2))
    store.create_session("new", OPERATOR, csrf="c", now=NOW)
    assert store.prune_sessions(NOW - dt.timedelta(hours=1), NOW - dt.timedelta(hours=12)) == 1
    assert store.get_session("new") is not None


def _log(tenant_id: int, method: str, path: str, status: int, at: dt.datetime) -> dict[str, object]:
    return {"tenant_id": tenant_id, "at": at, "method": method, "path": path, "status": status, "duration_ms": 1.0,
            "outcome": "success" if status < 400 else "failure", "detail": None, "request_body": None,
            "response_body": None}


def test_request_log_search_filters_and_pages(storage: Storage, store: WebStore) -> None:
    a, b = storage.create_tenant("a"), storage.create_tenant("b")
    old = NOW - dt.timedelta(days=2)
    storage.append_request_log([
        _log(a.id, "GET", "/scim/v2/tenants/a/Users", 200, old),
        _log(a.id, "POST", "/scim/v2/tenants/a/Users", 409, NOW),
        _log(a.id, "PATCH", "/scim/v2/tenants/a/Users/1", 200, NOW),
        _log(a.id, "GET", "/scim/v2/tenants/a/Groups?x=100%_", 401, NOW),
        _log(b.id, "GET", "/scim/v2/tenants/b/Users", 500, NOW),
    ])
    def paths(flt: RequestLogFilter, limit: int = 50) -> list[str]:
        return [f"{r['method']} {r['status']}" for r in store.search_request_log(a.id, flt, limit)]

    assert paths(RequestLogFilter()) == ["GET 401", "PATCH 200", "POST 409", "GET 200"]
    assert paths(RequestLogFilter(outcome="failure")) == ["GET 401", "POST 409"]
    assert paths(RequestLogFilter(outcome="success")) == ["PATCH 200", "GET 200"]
    assert paths(RequestLogFilter(status=409)) == ["POST 409"]
    assert paths(RequestLogFilter(method="patch")) == ["PATCH 200"]
    assert paths(RequestLogFilter(path_contains="Groups")) == ["GET 401"]
    assert paths(RequestLogFilter(path_contains="100%_")) == ["GET 401"]           # LIKE wildcards are data
    assert paths(RequestLogFilter(path_contains="%")) == ["GET 401"]
    assert paths(RequestLogFilter(since=NOW - dt.timedelta(hours=1))) == ["GET 401", "PATCH 200", "POST 409"]
    assert paths(RequestLogFilter(until=NOW - dt.timedelta(hours=1))) == ["GET 200"]
    first = store.search_request_log(a.id, RequestLogFilter(), 2)
    rest = store.search_request_log(a.id, RequestLogFilter(before_id=first[-1]["id"]), 10)
    assert [r["status"] for r in first + rest] == [401, 200, 409, 200]
    assert store.request_log_entry(b.id, first[0]["id"]) is None                 # other tenant's id
    assert store.request_log_entry(a.id, first[0]["id"])["status"] == 401  # type: ignore[index]
    assert sorted(s for _, s in store.request_outcomes_since(a.id, NOW - dt.timedelta(hours=1))) == [200, 401, 409]


def test_last_connection_test_is_the_newest_guid_lookup(storage: Storage, store: WebStore) -> None:
    a = storage.create_tenant("a")
    assert store.last_connection_test(a.id) is None
    guid = "cf4d78e8-cc4f-4d5d-b8b9-183561c0104a"
    storage.append_request_log([
        _log(a.id, "GET", f"/scim/v2/tenants/a/Users?filter=userName+eq+%22{guid}%22", 401, NOW),
        _log(a.id, "GET", f"/scim/v2/tenants/a/Users?filter=externalId+eq+%22{guid.upper()}%22", 200, NOW),
        _log(a.id, "GET", "/scim/v2/tenants/a/Users?filter=userName+eq+%22alice%22", 200, NOW),
        _log(a.id, "POST", "/scim/v2/tenants/a/Users", 201, NOW),
    ])
    found = store.last_connection_test(a.id)
    assert found is not None and found["status"] == 200 and "externalId" in found["path"]
