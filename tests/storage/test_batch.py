"""The SQL side of ``Storage.batch`` (one transaction per /Bulk request, RFC 7644 §3.7), on SQLite and
PostgreSQL: conflicts abort the whole batch, the outbox stays gap-free and ordered, and ``run_bulk`` falls back
to one transaction per operation with the same results."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from scimgrip.scim.errors import Uniqueness
from scimgrip.scim.messages import Limits
from scimgrip.scim.schema import CORE_GROUP, CORE_USER
from scimgrip.service.bulk import run_bulk
from scimgrip.service.scim import ScimService
from scimgrip.storage.base import BatchAborted, Storage
from scimgrip.storage.sql.events_store import EventStore
from scimgrip.storage.sql.repository import SqlStorage
from tests.storage.contract import q

BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


class _Conflict(Exception):
    """A driver error that reads as SQLite ``database is locked`` and PostgreSQL ``deadlock_detected``."""

    sqlstate = "40P01"

    def __str__(self) -> str:
        return "database is locked"


def _conflict(_conn: Connection) -> None:
    raise OperationalError("UPDATE …", {}, _Conflict())


def _user(storage: Storage, t: int, name: str) -> Any:
    return storage.create(t, "User", {"schemas": [CORE_USER], "userName": name})


@pytest.mark.parametrize("swallowed", [False, True])
def test_a_conflict_aborts_the_whole_batch(storage: Storage, swallowed: bool) -> None:
    assert isinstance(storage, SqlStorage)
    t = storage.create_tenant("acme").id
    with pytest.raises(BatchAborted), storage.batch():
        _user(storage, t, "first")
        try:
            storage._write(_conflict)
        except BatchAborted:
            if not swallowed:
                raise
        with pytest.raises(BatchAborted):        # a doomed batch runs nothing more
            _user(storage, t, "after")
    assert storage.search(t, "User", q()).total == 0
    _user(storage, t, "first")                  # nothing left locked or half-done


def test_outbox_in_a_batch_is_gap_free_and_in_call_order(storage: Storage) -> None:
    store = EventStore(storage)
    t = storage.create_tenant("acme").id
    with storage.batch():
        a = _user(storage, t, "a")
        with pytest.raises(Uniqueness):
            _user(storage, t, "A")                 # its event (and sequence number) is rolled back with it
        g = storage.create(t, "Group", {"schemas": [CORE_GROUP], "displayName": "g"}, [a.id])
        _user(storage, t, "b")
        assert EventStore(storage).list_events(t)[0] != []   # the batch reads its own outbox
    events, _ = store.list_events(t, limit=100)
    assert [(e.seq, e.type) for e in events] == [(1, "user.created"), (2, "group.created"),
                                                  (3, "group.member_added"), (4, "user.created")]
    assert events[1].data["resource"]["id"] == g.id


def _bulk_of(names: list[str]) -> dict[str, Any]:
    return {"schemas": [BULK_REQUEST], "Operations": [
        {"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": {"schemas": [CORE_USER], "userName": n}}
        for i, n in enumerate(names)]}


def test_run_bulk_after_an_aborted_batch_reruns_each_operation_alone(storage: Storage) -> None:
    service = ScimService(storage)
    tenant = storage.create_tenant("acme")
    real = storage.batch
    runs: list[int] = []

    @contextmanager
    def aborting() -> Iterator[None]:
        with real():
            yield
            runs.append(storage.search(tenant.id, "User", q()).total)
            raise BatchAborted("simulated conflict at the end of the batch")

    storage.batch = aborting  # type: ignore[method-assign]
    names = ["u0", "u1", "U1", "u3"]
    reply = run_bulk(service, tenant, _bulk_of(names), "http://x/scim/v2/acme", Limits())
    assert runs == [3]                           # the batch ran everything once, then was rolled back
    assert reply.body is not None
    assert [o["status"] for o in reply.body["Operations"]] == ["201", "201", "409", "201"]
    found = sorted(r.doc["userName"] for r in storage.search(tenant.id, "User", q()).resources)
    assert found == ["u0", "u1", "u3"]          # exactly once each
