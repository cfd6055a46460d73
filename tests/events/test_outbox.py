"""The transactional outbox at the storage level, on SQLite and PostgreSQL: which events each change writes,
their payloads, sequence numbers, atomicity with the change, cursors, retention."""

from __future__ import annotations

import ast
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest

from scimgrip.scim.errors import InvalidValue
from scimgrip.storage.base import Change, MemberDelta, Storage, StoredResource
from scimgrip.storage.sql.events_store import CursorExpired, Event, EventStore

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def all_events(store: EventStore, tenant_id: int, after: int = 0) -> list[Event]:
    found, _ = store.list_events(tenant_id, after, limit=100_000)
    return found


def set_doc(doc: dict[str, Any]) -> Any:
    return lambda r: Change(doc)


def test_user_lifecycle_events(storage: Storage) -> None:
    store = EventStore(storage)
    t = storage.create_tenant("acme").id
    u = storage.create(t, "User", {"schemas": [USER], "userName": "bjensen", "active": True,
                                   ENTERPRISE: {"department": "Sales", "costCenter": "4"}})
    doc = {**u.doc, "displayName": "Babs", ENTERPRISE: {"department": "Ops", "costCenter": "4"}}
    storage.update(t, "User", u.id, set_doc(doc))
    storage.update(t, "User", u.id, set_doc(doc))                         # no-op: no event
    storage.update(t, "User", u.id, set_doc({**doc, "active": False}))
    storage.update(t, "User", u.id, set_doc({**doc, "active": True, "title": "Boss"}))
    storage.delete(t, "User", u.id)
    evs = all_events(store, t)
    assert [e.type for e in evs] == ["user.created", "user.updated", "user.disabled", "user.enabled",
                                     "user.updated", "user.deleted"]
    assert [e.seq for e in evs] == [1, 2, 3, 4, 5, 6]
    assert len({e.id for e in evs}) == 6 and all(e.id.startswith("evt_") for e in evs)
    created, renamed, disabled, enabled, titled, deleted = evs
    res = created.data["resource"]
    assert res["id"] == u.id and res["userName"] == "bjensen" and res["meta"]["version"] == 'W/"1"'
    assert renamed.data["changed_attributes"] == [ENTERPRISE, "displayName"]
    assert renamed.data["previous_attributes"] == {ENTERPRISE: {"department": "Sales"}, "displayName": None}
    assert renamed.data["resource"]["displayName"] == "Babs" and renamed.data["resource"]["meta"]["version"] == 'W/"2"'
    assert disabled.data["previous_attributes"] == {"active": True}
    assert disabled.data["resource"]["active"] is False
    assert enabled.data["previous_attributes"] == {"active": False}
    assert titled.data["previous_attributes"] == {"title": None}
    assert deleted.data["resource"]["title"] == "Boss"
    assert all(e.tenant == "acme" and e.payload()["sequence"] == e.seq for e in evs)


def test_one_event_per_member(storage: Storage) -> None:
    store = EventStore(storage)
    t = storage.create_tenant("acme").id
    users = [storage.create(t, "User", {"userName": f"u{i}"}) for i in range(1000)]
    ids = [u.id for u in users]
    g = storage.create(t, "Group", {"displayName": "all"}, ids[:3])
    start = store.last_seq(t)
    storage.update(t, "Group", g.id, lambda r: Change(r.doc, MemberDelta(add=ids)))      # 997 new
    storage.update(t, "Group", g.id, lambda r: Change(r.doc, MemberDelta(add=ids[:10])))  # all present: no-op
    evs = all_events(store, t, start)
    assert len(evs) == 997 and {e.type for e in evs} == {"group.member_added"}
    assert sorted(e.data["member"]["value"] for e in evs) == sorted(ids[3:])
    assert all(e.data["member"]["type"] == "User" and e.data["resource"]["id"] == g.id for e in evs)
    # replace the membership: removed ones and added ones, each once
    start = store.last_seq(t)
    storage.update(t, "Group", g.id, lambda r: Change({**r.doc, "displayName": "few"},
                                                      MemberDelta(add=ids[:2], remove_all=True)))
    evs = all_events(store, t, start)
    assert evs[0].type == "group.updated" and evs[0].data["previous_attributes"] == {"displayName": "all"}
    removed = [e for e in evs if e.type == "group.member_removed"]
    assert len(removed) == 998 and not [e for e in evs if e.type == "group.member_added"]
    # deleting a member reports its removal from the group, then the deletion
    start = store.last_seq(t)
    storage.delete(t, "User", ids[0])
    assert [(e.type, e.data["resource"]["id"]) for e in all_events(store, t, start)] == [
        ("group.member_removed", g.id), ("user.deleted", ids[0])]
    storage.delete(t, "Group", g.id)
    assert all_events(store, t, store.last_seq(t) - 1)[0].type == "group.deleted"


def test_group_created_with_members(storage: Storage) -> None:
    store = EventStore(storage)
    t = storage.create_tenant("acme").id
    a = storage.create(t, "User", {"userName": "a"})
    inner = storage.create(t, "Group", {"displayName": "inner"})
    g = storage.create(t, "Group", {"displayName": "outer"}, [a.id, inner.id, a.id])
    evs = all_events(store, t, 2)
    assert [e.type for e in evs] == ["group.created", "group.member_added", "group.member_added"]
    assert {(e.data["member"]["value"], e.data["member"]["type"]) for e in evs[1:]} == {(a.id, "User"),
                                                                                        (inner.id, "Group")}
    assert all(e.data["resource"]["id"] == g.id for e in evs)


def test_no_event_without_change(storage: Storage) -> None:
    store = EventStore(storage)
    t = storage.create_tenant("acme").id
    u = storage.create(t, "User", {"userName": "a"})
    storage.create(t, "User", {"userName": "b"})

    def boom(r: StoredResource) -> Change:
        raise InvalidValue("nope")

    with pytest.raises(InvalidValue):
        storage.update(t, "User", u.id, boom)
    with pytest.raises(Exception):  # noqa: B017 - uniqueness: the change and its event roll back together
        storage.update(t, "User", u.id, set_doc({"userName": "B"}))
    with pytest.raises(InvalidValue):
        storage.create(t, "Group", {"displayName": "g"}, ["missing"])
    assert [e.type for e in all_events(store, t)] == ["user.created", "user.created"]
    assert store.last_seq(t) == 2


def test_sequences_per_tenant_and_concurrent_writers(storage: Storage) -> None:
    store = EventStore(storage)
    a = storage.create_tenant("a").id
    b = storage.create_tenant("b").id
    errors: list[BaseException] = []

    def work(tenant: int, n: int, worker: int) -> None:
        try:   # names by worker number: a thread's ident is reused once it has ended
            for i in range(n):
                storage.create(tenant, "User", {"userName": f"w{worker}-{i}"})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t, 25, k)) for k, t in enumerate((a, a, a, b))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert [e.seq for e in all_events(store, a)] == list(range(1, 76))
    assert [e.seq for e in all_events(store, b)] == list(range(1, 26))


def test_cursor_types_and_retention(storage: Storage) -> None:
    store = EventStore(storage)
    t = storage.create_tenant("acme").id
    u = storage.create(t, "User", {"userName": "a"})
    for i in range(5):
        storage.update(t, "User", u.id, set_doc({"userName": "a", "title": str(i)}))
    found, cursor = store.list_events(t, 0, ["user.created"], 10)
    assert [e.seq for e in found] == [1] and cursor == 6        # the cursor moves past filtered-out events
    found, cursor = store.list_events(t, 2, (), 2)
    assert [e.seq for e in found] == [3, 4] and cursor == 4
    assert store.list_events(t, 6) == ([], 6)
    assert store.prune(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)) == 6
    with pytest.raises(CursorExpired):
        store.list_events(t, 3)
    storage.update(t, "User", u.id, set_doc({"userName": "a"}))
    assert [e.seq for e in all_events(store, t, 6)] == [7]      # numbering continues after pruning


def test_delete_tenant_purges_events(storage: Storage) -> None:
    store = EventStore(storage)
    t = storage.create_tenant("acme").id
    storage.create(t, "User", {"userName": "a"})
    store.add_endpoint("http://127.0.0.1:9/x", "whsec_" + "A" * 32, t)
    store.create_api_key(t)
    storage.delete_tenant(t)
    assert store.list_endpoints() == [] and store.list_api_keys() == [] and store.last_seq(t) == 0


def test_outbox_module_is_pure() -> None:
    path = Path(__file__).resolve().parents[2] / "src" / "scimgrip" / "events" / "outbox.py"
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    assert mods <= {"__future__", "datetime", "collections.abc", "dataclasses", "typing", "scimgrip.scim.model"}
