"""Engine state (``scimgrip.engine.state`` + ``storage.sql.engine_store``) on SQLite and PostgreSQL.

Covers every ``EngineStore`` method: jobs and CYC-4/CYC-5 restart scopes, the CYC-8 run lock across threads and
processes, links (the CDS) singly and in bulk, escrow and the ERR-3f / QUA-2 schedules, CYC-9 pending references,
DEL-1 staged deletes, LOG-1/2/4 records (filters, paging, CSV/JSON export, retention), and bulk performance.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from scimgrip.engine.state import (
    PORTAL_RESTART,
    EngineStore,
    Job,
    JobExists,
    JobNotFound,
    Link,
    LogRecord,
    LogStep,
    ModifiedProperty,
    Quarantine,
    TargetCall,
    merge_exported,
    next_retry,
    parse_reset_scope,
    quarantine_next_attempt,
)
from scimgrip.storage import open_storage
from scimgrip.storage.sql.engine_store import SqlEngineStore, open_engine_store

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[SqlEngineStore]:
    s = open_engine_store(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def job(store: EngineStore) -> Job:
    return store.create_job("hr-to-app", "mappings: {}", "fp1")


# ---------------------------------------------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------------------------------------------
def test_create_get_list_jobs(store: EngineStore) -> None:
    a = store.create_job("b-job", "cfg-b", "fb")
    b = store.create_job("a-job", "cfg-a", "fa", status="NotConfigured")
    assert a.status == "NotRun" and b.status == "NotConfigured"
    assert a.watermark is None and a.quarantine is None and a.counters == {} and a.state == {}
    assert a.created.tzinfo is not None
    assert store.get_job("b-job") == a
    assert store.get_job_by_id(b.id) == b
    assert store.get_job("nope") is None and store.get_job_by_id(999_999) is None
    assert [j.name for j in store.list_jobs()] == ["a-job", "b-job"]
    with pytest.raises(JobExists):
        store.create_job("a-job", "x", "y")
    with pytest.raises(ValueError):
        store.create_job("c", "x", "y", status="Running")  # type: ignore[arg-type]


def test_set_status(store: EngineStore, job: Job) -> None:
    for status in ("Active", "Paused", "Quarantine", "NotConfigured", "NotRun"):
        assert store.set_status(job.name, status).status == status
    with pytest.raises(ValueError):
        store.set_status(job.name, "Stopped")  # type: ignore[arg-type]
    with pytest.raises(JobNotFound):
        store.set_status("missing", "Active")


def test_save_job_state_round_trips_every_field(store: EngineStore, job: Job) -> None:
    q = Quarantine(reason="EncounteredEscrowProportionThreshold", since=T0, level=2,
                   last_email_reason="EncounteredEscrowProportionThreshold", error="5000 failures")
    saved = store.save_job_state(
        job.name, watermark="delta-token-1", last_cycle_id="c1", last_cycle_started=T0,
        last_cycle_ended=T0 + dt.timedelta(minutes=3), last_successful_cycle=T0,
        last_successful_cycle_with_exports=T0, next_cycle_at=T0 + dt.timedelta(minutes=40),
        steady_state_first=T0, steady_state_last=T0 + dt.timedelta(hours=1),
        counters={"countSuccessiveCompleteFailures": 1, "escrowsPruned": 0},
        progress={"pages": 3, "of": 10}, state={"snapshot": {"u1": "h1"}}, quarantine=q)
    again = store.get_job(job.name)
    assert again == saved
    assert saved.watermark == "delta-token-1" and saved.last_cycle_id == "c1"
    assert saved.last_cycle_ended == T0 + dt.timedelta(minutes=3)
    assert saved.counters == {"countSuccessiveCompleteFailures": 1, "escrowsPruned": 0}
    assert saved.progress == {"pages": 3, "of": 10} and saved.state == {"snapshot": {"u1": "h1"}}
    assert saved.quarantine == q
    assert saved.updated >= job.updated
    # partial update leaves the rest alone; quarantine=None lifts it
    lifted = store.save_job_state(job.name, quarantine=None, watermark=None)
    assert lifted.quarantine is None and lifted.watermark is None and lifted.counters == saved.counters
    with pytest.raises(TypeError):
        store.save_job_state(job.name, colour="red")
    with pytest.raises(JobNotFound):
        store.save_job_state("missing", watermark="w")


def test_update_config_clears_watermark_only_when_fingerprint_changes(store: EngineStore, job: Job) -> None:
    """CYC-4: a mapping/scope change clears the watermark and keeps the links."""
    store.save_job_state(job.name, watermark="w1")
    store.put_link(Link(job.id, "User", "u1", "t1"))
    same = store.update_job_config(job.name, "mappings: {} # comment", "fp1")
    assert same.watermark == "w1" and same.config_text == "mappings: {} # comment"
    changed = store.update_job_config(job.name, "mappings: {x: 1}", "fp2")
    assert changed.watermark is None and changed.fingerprint == "fp2"
    assert store.count_links(job) == 1
    with pytest.raises(JobNotFound):
        store.update_job_config("missing", "", "")


def test_delete_job_removes_all_its_state(store: EngineStore, job: Job) -> None:
    other = store.create_job("other", "", "f")
    for j in (job, other):
        store.put_link(Link(j.id, "User", "u1", "t1"))
        store.put_escrow(j, "User", "u1", "Conflict", None, 1, T0)
        store.put_pending_ref(j, "manager", "u1", "m1")
        store.stage_delete(j, "User", "u1", "disable")
        store.append_logs([_rec(j.id, "u1")])
    assert store.try_lock(job.name, "me", 60)
    assert store.delete_job(job.name) is True
    assert store.delete_job(job.name) is False
    assert store.get_job(job.name) is None
    for jid in (job.id,):
        assert store.count_links(jid) == 0 and store.count_escrows(jid) == 0
        assert store.count_pending_refs(jid) == 0 and store.staged(jid) == [] and store.count_logs(jid) == 0
    assert store.lock_holder(job.name) is None
    assert store.count_links(other) == 1 and store.count_escrows(other) == 1 and store.count_logs(other) == 1
    assert store.count_pending_refs(other) == 1 and len(store.staged(other)) == 1


def test_job_given_by_name_id_or_job(store: EngineStore, job: Job) -> None:
    store.put_escrow(job.name, "User", "u1", "Conflict", None, 1, T0)
    assert store.count_escrows(job.id) == store.count_escrows(job) == store.count_escrows(job.name) == 1
    with pytest.raises(JobNotFound):
        store.count_escrows("missing")


# ---------------------------------------------------------------------------------------------------------------
# restart scopes (CYC-5)
# ---------------------------------------------------------------------------------------------------------------
def _populate(store: EngineStore, job: Job) -> None:
    store.put_link(Link(job.id, "User", "u1", "t1"))
    store.put_escrow(job, "User", "u2", "Conflict", "dup", 1, T0)
    store.put_pending_ref(job, "manager", "u1", "m1")
    store.stage_delete(job, "User", "u1", "disable")
    store.set_status(job.name, "Quarantine")
    store.save_job_state(job.name, watermark="w", last_successful_cycle=T0,
                         quarantine=Quarantine("TooManyDeletes", T0))


def _snapshot(store: EngineStore, job: Job) -> dict[str, object]:
    j = store.get_job(job.name)
    assert j is not None
    return {"links": store.count_links(job), "escrows": store.count_escrows(job),
            "refs": store.count_pending_refs(job), "staged": [s.approved for s in store.staged(job)],
            "watermark": j.watermark, "quarantine": j.quarantine is not None, "status": j.status}


FULL_STATE = {"links": 1, "escrows": 1, "refs": 1, "staged": [False], "watermark": "w", "quarantine": True,
              "status": "Quarantine"}


@pytest.mark.parametrize(("scopes", "changes"), [
    (set(), {"escrows": 0, "watermark": None, "quarantine": False, "status": "Active", "staged": []}),
    ({"None"}, {}),
    ({"ConnectorDataStore"}, {"links": 0, "refs": 0, "staged": [], "watermark": None}),
    ({"Escrows"}, {"escrows": 0}),
    ({"Watermark"}, {"watermark": None, "staged": []}),
    ({"QuarantineState"}, {"quarantine": False, "status": "Active"}),
    ({"Full"}, {"links": 0, "refs": 0, "staged": [], "escrows": 0, "watermark": None, "quarantine": False,
                "status": "Active"}),
    ({"ForceDeletes"}, {"staged": [True], "quarantine": False, "status": "Active"}),
    ({"Escrows", "Watermark"}, {"escrows": 0, "watermark": None, "staged": []}),
])
def test_restart_scopes(store: EngineStore, job: Job, scopes: set[str], changes: dict[str, object]) -> None:
    _populate(store, job)
    assert _snapshot(store, job) == FULL_STATE
    store.restart(job.name, scopes)
    assert _snapshot(store, job) == {**FULL_STATE, **changes}


def test_restart_details(store: EngineStore, job: Job) -> None:
    # ForceDeletes lifts only a TooManyDeletes quarantine
    store.set_status(job.name, "Quarantine")
    store.save_job_state(job.name, quarantine=Quarantine("EncounteredQuarantineException", T0))
    j = store.restart(job.name, {"ForceDeletes"})
    assert j.quarantine is not None and j.status == "Quarantine"
    # a job that never succeeded goes back to NotRun when its quarantine is lifted
    assert store.restart(job.name, {"QuarantineState"}).status == "NotRun"
    # a paused job stays paused
    store.set_status(job.name, "Paused")
    assert store.restart(job.name, set()).status == "Paused"
    store.save_job_state(job.name, watermark="w")
    assert store.restart(job.name, "escrows, watermark").watermark is None     # Graph's comma-separated form
    with pytest.raises(ValueError):
        store.restart(job.name, {"Everything"})
    with pytest.raises(JobNotFound):
        store.restart("missing", set())
    assert {"QuarantineState", "Watermark", "Escrows"} == PORTAL_RESTART


def test_parse_reset_scope() -> None:
    assert parse_reset_scope("") == set()
    assert parse_reset_scope(None) == set()
    assert parse_reset_scope("escrows, Watermark ,FORCEDELETES") == {"Escrows", "Watermark", "ForceDeletes"}
    with pytest.raises(ValueError):
        parse_reset_scope("Escrows,Bogus")


# ---------------------------------------------------------------------------------------------------------------
# run lock (CYC-8)
# ---------------------------------------------------------------------------------------------------------------
def test_lock_basics(store: EngineStore) -> None:
    assert store.lock_holder("job") is None
    assert store.try_lock("job", "a", 60)
    assert store.try_lock("job", "a", 60)            # re-entrant for the same owner
    assert not store.try_lock("job", "b", 60)
    holder = store.lock_holder("job")
    assert holder is not None and holder[0] == "a"
    assert store.refresh_lock("job", "a", 120)
    assert not store.refresh_lock("job", "b", 120)
    assert not store.release_lock("job", "b")
    assert store.release_lock("job", "a")
    assert not store.release_lock("job", "a")
    assert store.try_lock("job", "b", 60)
    assert store.try_lock("other-job", "a", 60)       # locks are per name


def test_stale_lock_expires(store: EngineStore) -> None:
    assert store.try_lock("job", "crashed", 0.2)
    assert not store.try_lock("job", "b", 60)
    time.sleep(0.3)
    assert store.lock_holder("job") is None
    assert store.try_lock("job", "b", 60)
    assert not store.refresh_lock("job", "crashed", 60)


def test_lock_race_between_threads(db_url: str) -> None:
    stores = [open_engine_store(db_url) for _ in range(2)]
    try:
        for round_ in range(5):
            name = f"job-{round_}"
            barrier = threading.Barrier(8)
            wins: list[str] = []

            def contend(owner: str, s: EngineStore, name: str = name, barrier: threading.Barrier = barrier,
                        wins: list[str] = wins) -> None:
                barrier.wait()
                if s.try_lock(name, owner, 60):
                    wins.append(owner)

            threads = [threading.Thread(target=contend, args=(f"w{i}", stores[i % 2])) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(wins) == 1, wins
            holder = stores[0].lock_holder(name)
            assert holder is not None and holder[0] == wins[0]
    finally:
        for s in stores:
            s.close()


_LOCK_SCRIPT = """
import sys
from scimgrip.storage.sql.engine_store import open_engine_store
s = open_engine_store(sys.argv[1])
print("got" if s.try_lock(sys.argv[2], sys.argv[3], float(sys.argv[4])) else "busy")
s.close()
"""


def _lock_in_process(url: str, name: str, owner: str, ttl: float) -> str:
    out = subprocess.run([sys.executable, "-c", _LOCK_SCRIPT, url, name, owner, str(ttl)], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_lock_across_processes(store: SqlEngineStore, db_url: str) -> None:
    assert store.try_lock("job", "parent", 60)
    assert _lock_in_process(db_url, "job", "child", 60) == "busy"
    assert store.release_lock("job", "parent")
    assert _lock_in_process(db_url, "job", "child", 60) == "got"     # exits without releasing
    assert not store.try_lock("job", "parent", 60)
    holder = store.lock_holder("job")
    assert holder is not None and holder[0] == "child"


# ---------------------------------------------------------------------------------------------------------------
# links (the connector data store)
# ---------------------------------------------------------------------------------------------------------------
def test_link_crud(store: EngineStore, job: Job) -> None:
    link = Link(job.id, "User", "src-1", "tgt-1", exported={"userName": "a@x", "active": True,
                                                            'emails[type eq "work"].value': "a@x"},
                source_hash="h1", display_name="Alice")
    put = store.put_link(link)
    assert put.updated is not None
    got = store.get_link(job, "User", "src-1")
    assert got == put
    assert got is not None and got.exported["active"] is True and got.in_scope and got.state == "active"
    assert store.get_link(job, "Group", "src-1") is None
    assert store.find_link_by_target(job, "User", "tgt-1") == got
    assert store.find_link_by_target(job, "User", "tgt-x") is None
    # upsert replaces
    store.put_link(Link(job.id, "User", "src-1", "tgt-1", exported={"userName": "b@x"}, in_scope=False,
                        state="disabled"))
    got2 = store.get_link(job.name, "User", "src-1")
    assert got2 is not None and got2.exported == {"userName": "b@x"} and not got2.in_scope
    assert got2.state == "disabled" and got2.source_hash is None
    assert store.count_links(job) == 1
    assert store.delete_link(job, "User", "src-1") is True
    assert store.delete_link(job, "User", "src-1") is False
    assert store.count_links(job) == 0
    with pytest.raises(ValueError):
        store.put_link(Link(job.id, "User", "x", None, state="gone"))  # type: ignore[arg-type]


def test_links_bulk_iter_and_count(store: EngineStore, job: Job) -> None:
    other = store.create_job("other", "", "f")
    users = [Link(job.id, "User", f"u{i:03d}", f"t{i}", exported={"n": i}, in_scope=i % 3 != 0)
             for i in range(25)]
    groups = [Link(job.id, "Group", f"g{i}", None) for i in range(4)]
    store.put_links(users + groups + [Link(other.id, "User", "u000", "other")])
    store.put_links([])
    assert store.count_links(job) == 29
    assert store.count_links(job, "User") == 25
    assert store.count_links(job, "User", in_scope=False) == 9
    assert store.count_links(other) == 1
    got = store.get_links(job, "User", ["u001", "u002", "missing", "u001"])
    assert set(got) == {"u001", "u002"} and got["u002"].exported == {"n": 2}
    assert store.get_links(job, "User", []) == {}
    # streamed in small batches across the batch boundaries, ordered by type then source id
    streamed = list(store.iter_links(job, batch=4))
    assert [(lk.object_type, lk.source_id) for lk in streamed] == \
        [("Group", f"g{i}") for i in range(4)] + [("User", f"u{i:03d}") for i in range(25)]
    assert [lk.source_id for lk in store.iter_links(job, "User", in_scope=False, batch=2)] == \
        [f"u{i:03d}" for i in range(25) if i % 3 == 0]
    assert [lk.source_id for lk in store.iter_links(job, "Group", batch=4)] == [f"g{i}" for i in range(4)]
    assert store.link_source_ids(job, "Group") == {f"g{i}" for i in range(4)}
    assert store.link_source_ids(job, "User") == {f"u{i:03d}" for i in range(25)}      # other jobs' not included
    # duplicates within one batch: the last wins
    store.put_links([Link(job.id, "User", "u001", "a"), Link(job.id, "User", "u001", "b")])
    linked = store.get_link(job, "User", "u001")
    assert linked is not None and linked.target_id == "b"
    assert store.delete_links(job, "User", ["u001", "u002", "nope"]) == 2
    assert store.count_links(job, "User") == 23


def test_merge_exported() -> None:
    assert merge_exported({"a": 1, "b": 2}, {"b": None, "c": 3}) == {"a": 1, "c": 3}


def test_bulk_links_performance(store: EngineStore, job: Job, db_url: str) -> None:
    """A 10,000-user cycle's state costs a few round trips, not 10,000."""
    n = 10_000
    links = [Link(job.id, "User", f"{i:032x}", f"target-{i}",
                  exported={"userName": f"user{i}@example.com", "active": True, "displayName": f"User {i}",
                            "name.givenName": "Given", "name.familyName": f"Family{i}"},
                  source_hash=f"{i:064x}") for i in range(n)]
    t0 = time.perf_counter()
    store.put_links(links)
    t_put = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = store.get_links(job, "User", [lk.source_id for lk in links])
    t_get = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.put_links(links)                      # second cycle: every row an update
    t_update = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert sum(1 for _ in store.iter_links(job, "User")) == n
    t_iter = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.append_logs([_rec(job.id, lk.source_id) for lk in links])
    t_logs = time.perf_counter() - t0
    assert len(got) == n and got[links[-1].source_id].exported == links[-1].exported
    print(f"\n10k links on {db_url.split(':')[0]}: put {t_put:.2f}s get {t_get:.2f}s update {t_update:.2f}s "
          f"iter {t_iter:.2f}s logs {t_logs:.2f}s")
    limit = 3.0 if db_url.startswith("sqlite") else 10.0
    for t in (t_put, t_get, t_update, t_iter, t_logs):
        assert t < limit


def test_from_storage_shares_the_engine(db_url: str) -> None:
    storage = open_storage(db_url)
    try:
        es = SqlEngineStore.from_storage(storage)
        es.create_job("shared", "", "f")
        es.close()                               # does not dispose the storage's engine
        assert storage.count_tenants() == 0
        assert SqlEngineStore.from_storage(storage).get_job("shared") is not None
    finally:
        storage.close()
    with pytest.raises(TypeError):
        SqlEngineStore.from_storage(object())


# ---------------------------------------------------------------------------------------------------------------
# escrow (ERR-1, ERR-3f, QUA-2)
# ---------------------------------------------------------------------------------------------------------------
def test_escrow(store: EngineStore, job: Job) -> None:
    e1 = store.put_escrow(job, "User", "u1", "Conflict", "userName taken", 1, T0)
    assert e1.attempts == 1 and e1.first_failed is not None and not e1.is_reference
    time.sleep(0.01)
    e1b = store.put_escrow(job, "User", "u1", "Conflict", "still taken", 2, T0 + dt.timedelta(hours=1))
    assert e1b.first_failed == e1.first_failed and e1b.last_failed is not None
    assert e1.last_failed is not None and e1b.last_failed > e1.last_failed
    assert e1b.attempts == 2 and e1b.detail == "still taken"
    store.put_escrow(job, "User", "u1", "ReferenceFailure", "manager", 1, T0, is_reference=True)
    store.put_escrow(job, "Group", "g1", "InternalServerError", None, 1, T0 - dt.timedelta(minutes=5))
    assert store.get_escrow(job, "User", "u1") == e1b
    ref = store.get_escrow(job, "User", "u1", is_reference=True)
    assert ref is not None and ref.is_reference and ref.reason_code == "ReferenceFailure"
    assert store.get_escrow(job, "User", "nobody") is None
    assert store.count_escrows(job) == 3
    assert store.count_escrows(job, is_reference=True) == 1
    assert store.count_escrows(job, is_reference=False) == 2
    due = store.due_escrows(job, T0)
    assert [(e.object_type, e.source_id, e.is_reference) for e in due] == [("Group", "g1", False),
                                                                          ("User", "u1", True)]
    assert len(store.due_escrows(job, T0 + dt.timedelta(hours=2))) == 3
    assert len(store.due_escrows(job, T0 + dt.timedelta(hours=2), limit=1)) == 1
    assert store.due_escrows(job, T0 - dt.timedelta(hours=1)) == []
    assert len(store.list_escrows(job)) == 3
    assert store.clear_escrow(job, "User", "u1", is_reference=True) == 1
    assert store.clear_escrow(job, "User", "u1") == 1
    assert store.clear_escrow(job, "User", "u1") == 0
    assert store.clear_all_escrows(job) == 1
    assert store.count_escrows(job) == 0


def test_escrow_schedule_err_3f() -> None:
    m = dt.timedelta(minutes=1)
    assert next_retry(0) == dt.timedelta(0)
    assert [next_retry(a) for a in range(1, 6)] == [40 * m, 80 * m, 160 * m, 320 * m, 640 * m]
    assert next_retry(6) == 1280 * m
    assert next_retry(7) == dt.timedelta(hours=24)          # capped
    assert next_retry(500) == dt.timedelta(hours=24)
    assert next_retry(3, interval=5 * m) == 20 * m


def test_quarantine_schedule_qua_2() -> None:
    h = dt.timedelta(hours=1)
    assert [quarantine_next_attempt(T0, a) - T0 for a in range(6)] == [6 * h, 12 * h, 24 * h, 48 * h, 72 * h,
                                                                      96 * h]


# ---------------------------------------------------------------------------------------------------------------
# pending references (CYC-9) and staged deletes (DEL-1)
# ---------------------------------------------------------------------------------------------------------------
def test_pending_refs(store: EngineStore, job: Job) -> None:
    store.put_pending_ref(job, "manager", "u1", "m1")
    store.put_pending_ref(job, "manager", "u1", "m1")       # idempotent
    store.put_pending_ref(job, "manager", "u2", "m1")
    store.put_pending_ref(job, "member", "g1", "m1")
    store.put_pending_ref(job, "member", "g1", "u9")
    assert store.count_pending_refs(job) == 4
    refs = store.pending_for(job, "m1")
    assert [(r.kind, r.holder_source_id) for r in refs] == [("manager", "u1"), ("manager", "u2"), ("member", "g1")]
    assert refs[0].created is not None
    assert store.pending_for(job, "nobody") == []
    many = store.pending_for_many(job, ["m1", "u9", "x"])
    assert set(many) == {"m1", "u9"} and len(many["m1"]) == 3
    assert store.clear_pending_ref(job, "manager", "u1", "m1") == 1
    assert store.clear_pending_ref(job, "member", "g1") == 2      # all of g1's
    assert [r.holder_source_id for r in store.pending_for(job, "m1")] == ["u2"]
    with pytest.raises(ValueError):
        store.put_pending_ref(job, "owner", "a", "b")  # type: ignore[arg-type]


def test_staged_deletes(store: EngineStore, job: Job) -> None:
    store.stage_delete(job, "User", "u1", "disable")
    store.stage_delete(job, "User", "u2", "delete")
    store.stage_delete(job, "Group", "g1", "delete")
    store.stage_delete(job, "User", "u1", "delete")          # re-staging replaces the action
    staged = store.staged(job)
    assert sorted((s.object_type, s.source_id, s.action) for s in staged) == [
        ("Group", "g1", "delete"), ("User", "u1", "delete"), ("User", "u2", "delete")]
    assert staged[-1].source_id == "u1"                        # staging order
    assert all(not s.approved and s.staged_at is not None for s in staged)
    store.restart(job.name, {"ForceDeletes"})
    assert len(store.staged(job, approved=True)) == 3 and store.staged(job, approved=False) == []
    store.stage_delete(job, "User", "u1", "disable")          # re-staged: approval reset
    assert len(store.staged(job, approved=False)) == 1
    assert store.clear_staged(job, "User", "u1") == 1
    assert store.clear_staged(job) == 2
    assert store.staged(job) == []
    with pytest.raises(ValueError):
        store.stage_delete(job, "User", "u1", "purge")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# provisioning logs (LOG)
# ---------------------------------------------------------------------------------------------------------------
def _rec(job_id: int, source_id: str, **kw: object) -> LogRecord:
    fields: dict[str, object] = {"cycle_id": "c1", "change_id": f"ch-{source_id}", "object_type": "User",
                                 "action": "create", "status": "success", "at": T0}
    fields.update(kw)
    return LogRecord(job_id=job_id, source_id=source_id, **fields)  # type: ignore[arg-type]


def _seed_logs(store: EngineStore, job: Job) -> None:
    full = _rec(
        job.id, "u1", source_display="Alice Example", target_id="t1", duration_ms=12.5,
        steps=(LogStep("EntryImport", "import", details={"objectId": "u1"}),
               LogStep("EntrySynchronizationScoping", "scoping", details={"ScopeEvaluationResult": "in scope"}),
               LogStep("EntryImport", "matching", description="matched on userName"),
               LogStep("EntryExportAdd", "export", description="created")),
        modified=(ModifiedProperty("userName", None, "alice@x"), ModifiedProperty("active", None, True)),
        calls=(TargetCall("GET", "/Users?filter=userName eq \"alice@x\"", 200, 3.0),
               TargetCall("POST", "/Users", 201, 9.0)))
    store.append_logs([
        full,
        _rec(job.id, "u2", source_display="Bob", target_id="t2", action="update", at=T0 + dt.timedelta(minutes=1),
             modified=(ModifiedProperty("displayName", "Bob", "Bobby"),)),
        _rec(job.id, "u3", action="other", status="skipped", reason="RedundantExport",
             at=T0 + dt.timedelta(minutes=2)),
        _rec(job.id, "u4", action="create", status="failure", reason="Conflict", detail="userName taken, \"x\"",
             at=T0 + dt.timedelta(minutes=3), cycle_id="c2"),
        _rec(job.id, "g1", object_type="Group", action="update", at=T0 + dt.timedelta(minutes=4), cycle_id="c2"),
    ])
    store.append_logs([])


def test_log_round_trip_and_query_filters(store: EngineStore, job: Job) -> None:
    other = store.create_job("other", "", "f")
    store.append_logs([_rec(other.id, "u1")])
    _seed_logs(store, job)
    all_ = store.query_logs(job)
    assert [r.source_id for r in all_] == ["u1", "u2", "u3", "u4", "g1"]
    first = all_[0]
    assert first.id is not None and first.job_id == job.id and first.at == T0 and first.duration_ms == 12.5
    assert first.steps[1] == LogStep("EntrySynchronizationScoping", "scoping",
                                     details={"ScopeEvaluationResult": "in scope"})
    assert first.modified == (ModifiedProperty("userName", None, "alice@x"), ModifiedProperty("active", None, True))
    assert first.calls[1] == TargetCall("POST", "/Users", 201, 9.0)

    def ids(**kw: object) -> list[str]:
        return [r.source_id for r in store.query_logs(job, **kw)]  # type: ignore[arg-type]

    assert ids(user="u2") == ["u2"]                       # source id
    assert ids(user="t1") == ["u1"]                       # target id
    assert ids(user="alice example") == ["u1"]            # display name, case-insensitive
    assert ids(action="update") == ["u2", "g1"]
    assert ids(action=["create", "other"]) == ["u1", "u3", "u4"]
    assert ids(status="failure") == ["u4"]
    assert ids(status={"skipped", "failure"}) == ["u3", "u4"]
    assert ids(since=T0 + dt.timedelta(minutes=1)) == ["u2", "u3", "u4", "g1"]
    assert ids(until=T0 + dt.timedelta(minutes=1)) == ["u1"]
    assert ids(since=T0 + dt.timedelta(minutes=1), until=T0 + dt.timedelta(minutes=3)) == ["u2", "u3"]
    assert ids(cycle_id="c2") == ["u4", "g1"]
    assert ids(change_id="ch-u3") == ["u3"]
    assert ids(object_type="Group") == ["g1"]
    assert ids(cycle_id="c2", action="create") == ["u4"]
    assert ids(user="nobody") == []
    # paging
    page1 = store.query_logs(job, limit=2)
    page2 = store.query_logs(job, limit=2, after_id=page1[-1].id)
    page3 = store.query_logs(job, limit=2, after_id=page2[-1].id)
    assert [r.source_id for r in page1 + page2 + page3] == ["u1", "u2", "u3", "u4", "g1"]
    newest = store.query_logs(job, limit=2, newest_first=True)
    assert [r.source_id for r in newest] == ["g1", "u4"]
    assert [r.source_id for r in store.query_logs(job, limit=2, newest_first=True, after_id=newest[-1].id)] == \
        ["u3", "u2"]
    assert store.count_logs(job) == 5 and store.count_logs(other) == 1
    assert [r.source_id for r in store.query_logs(other)] == ["u1"]


def test_export_csv(store: EngineStore, job: Job) -> None:
    _seed_logs(store, job)
    text = "".join(store.export_logs(job, "csv"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["sourceId"] for r in rows] == ["u1", "u2", "u3", "u4", "g1"]
    assert rows[0]["jobId"] == job.name and rows[0]["provisioningAction"] == "create"
    assert rows[0]["activityDateTime"] == "2026-01-01T12:00:00.000000Z"
    assert rows[0]["targetCalls"] == 'GET /Users?filter=userName eq "alice@x" 200; POST /Users 201'
    assert rows[3]["errorCode"] == "Conflict" and rows[3]["reason"] == 'userName taken, "x"'
    assert rows[2]["errorCode"] == "RedundantExport" and rows[2]["status"] == "skipped"
    steps = list(csv.DictReader(io.StringIO("".join(store.export_logs(job, "csv", part="steps")))))
    assert [(s["changeId"], s["provisioningStepType"]) for s in steps] == [
        ("ch-u1", "import"), ("ch-u1", "scoping"), ("ch-u1", "matching"), ("ch-u1", "export")]
    assert json.loads(steps[0]["details"]) == {"objectId": "u1"}
    modified = list(csv.DictReader(io.StringIO("".join(store.export_logs(job, "csv", part="modified")))))
    assert [(m["changeId"], m["displayName"], m["oldValue"], m["newValue"]) for m in modified] == [
        ("ch-u1", "userName", "", "alice@x"), ("ch-u1", "active", "", "true"), ("ch-u2", "displayName", "Bob",
                                                                               "Bobby")]
    filtered = list(csv.DictReader(io.StringIO("".join(store.export_logs(job, "csv", status="failure")))))
    assert [r["sourceId"] for r in filtered] == ["u4"]
    empty = "".join(store.export_logs(job, "csv", user="nobody"))
    assert empty.splitlines()[0].startswith("id,jobId,cycleId,changeId")
    assert len(empty.splitlines()) == 1


def test_export_json(store: EngineStore, job: Job) -> None:
    _seed_logs(store, job)
    docs = json.loads("".join(store.export_logs(job, "json")))
    assert [d["sourceIdentity"]["id"] for d in docs] == ["u1", "u2", "u3", "u4", "g1"]
    d = docs[0]
    assert d["jobId"] == job.name and d["cycleId"] == "c1" and d["changeId"] == "ch-u1"
    assert d["activityDateTime"] == "2026-01-01T12:00:00.000000Z" and d["durationInMilliseconds"] == 12
    assert d["provisioningAction"] == "create" and d["provisioningStatusInfo"]["status"] == "success"
    assert d["provisioningSteps"][0] == {"name": "EntryImport", "provisioningStepType": "import",
                                         "status": "success", "description": "", "details": {"objectId": "u1"}}
    assert d["modifiedProperties"][1] == {"displayName": "active", "oldValue": None, "newValue": True}
    assert d["sourceIdentity"] == {"id": "u1", "type": "User", "displayName": "Alice Example"}
    assert d["targetIdentity"] == {"id": "t1", "type": "User"}
    assert d["targetCalls"][1]["method"] == "POST"
    assert docs[3]["provisioningStatusInfo"]["errorInformation"] == {"errorCode": "Conflict",
                                                                      "reason": 'userName taken, "x"'}
    assert json.loads("".join(store.export_logs(job, "json", cycle_id="c2")))[1]["sourceIdentity"]["id"] == "g1"
    assert json.loads("".join(store.export_logs(job, "json", user="nobody"))) == []
    with pytest.raises(ValueError):
        list(store.export_logs(job, "xml"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        list(store.export_logs(job, "json", colour="red"))


def test_export_streams_many_pages(store: EngineStore, job: Job) -> None:
    store.append_logs([_rec(job.id, f"u{i}") for i in range(2500)])
    chunks = list(store.export_logs(job, "csv"))
    assert len(chunks) >= 3                                # streamed, not one string
    assert len("".join(chunks).splitlines()) == 2501
    assert len(json.loads("".join(store.export_logs(job, "json")))) == 2500


def test_prune_logs(store: EngineStore, job: Job) -> None:
    other = store.create_job("other", "", "f")
    store.append_logs([_rec(job.id, "old", at=T0 - dt.timedelta(days=40)), _rec(job.id, "new", at=T0),
                       _rec(other.id, "old", at=T0 - dt.timedelta(days=40))])
    assert store.prune_logs(T0 - dt.timedelta(days=30), job) == 1
    assert [r.source_id for r in store.query_logs(job)] == ["new"]
    assert store.count_logs(other) == 1
    assert store.prune_logs(T0 - dt.timedelta(days=30)) == 1      # every job
    assert store.count_logs(other) == 0
