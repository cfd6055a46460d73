"""The §18.2 acceptance rows the engine implements, one test each, against scimgrip's own SCIM app behind the
fault-injecting middleware of :mod:`tests.engine.faulty_target` (real HTTP on loopback, real storage).

Every request the target receives is in ``faults.seen``; every request the engine makes is in the ``on_call``
records, so the tests assert exact counts. Each test uses its own names (users and groups are matched by
``userName`` / ``displayName``), so the tests share one target.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest

from scimgrip.engine.bulk_batcher import BulkBatcher
from scimgrip.engine.config import load_job_config
from scimgrip.engine.cycle import CycleReport, Engine, reconcile
from scimgrip.engine.model import Assignments, ChangeSet, Source, SourceObject
from scimgrip.engine.notify import SmtpNotifier
from scimgrip.engine.state import Escrow, Link
from scimgrip.engine.state import Job as StoredJob
from scimgrip.engine.target import CallRecord, ScimTarget
from scimgrip.storage.sql.engine_store import SqlEngineStore, open_engine_store
from tests.engine.faulty_target import FaultyTarget, Seen
from tests.server.conftest import uid

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


# -- an in-memory directory ---------------------------------------------------------------------------------------
class MemorySource(Source):
    """Users, groups and assignments in dicts. ``complete``: ``read_changes`` returns everything (like a file);
    otherwise only the objects touched since the last read (like a Graph delta)."""

    kind = "memory"

    def __init__(self, *, complete: bool = True) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.assigned_users: set[str] = set()
        self.assigned_groups: set[str] = set()
        self.complete = complete
        self.touched: set[str] = set()
        self.mark = 0

    def user(self, oid: str, upn: str, *, assign: bool = True, **attrs: Any) -> dict[str, Any]:
        self.users[oid] = {"objectId": oid, "userPrincipalName": upn, "displayName": upn.split("@")[0],
                           "mailNickname": upn.split("@")[0], "accountEnabled": True, **attrs}
        if assign:
            self.assigned_users.add(oid)
        self.touched.add(oid)
        return self.users[oid]

    def group(self, oid: str, name: str, members: list[str], *, assign: bool = True) -> None:
        self.groups[oid] = {"objectId": oid, "displayName": name, "members": list(members)}
        if assign:
            self.assigned_groups.add(oid)
        self.touched.add(oid)

    def update(self, oid: str, **attrs: Any) -> None:
        target = self.users.get(oid) or self.groups[oid]
        for k, v in attrs.items():
            if v is None:
                target.pop(k, None)
            else:
                target[k] = v
        self.touched.add(oid)

    def _objects(self, ids: set[str] | None = None) -> list[SourceObject]:
        out = [SourceObject("User", k, dict(v)) for k, v in self.users.items() if ids is None or k in ids]
        out += [SourceObject("Group", k, {a: b for a, b in v.items() if a != "members"}, tuple(v["members"]))
                for k, v in self.groups.items() if ids is None or k in ids]
        return out

    def read_all(self) -> Iterator[SourceObject]:
        self.touched.clear()
        yield from self._objects()

    def assignments(self) -> Assignments:
        return Assignments(frozenset(self.assigned_users), frozenset(self.assigned_groups))

    def watermark(self) -> str:
        self.mark += 1
        return str(self.mark)

    def read_changes(self, watermark: str) -> ChangeSet:
        objects = self._objects(None if self.complete else set(self.touched))
        self.touched.clear()
        return ChangeSet(objects, self.watermark(), self.assignments(), complete=self.complete)


# -- harness ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyTarget]:
    target = FaultyTarget(tmp_path_factory.mktemp("catalogue")).start()
    try:
        yield target
    finally:
        target.stop()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += dt.timedelta(**kw)


@dataclass
class Job:
    faulty: FaultyTarget
    store: SqlEngineStore
    source: MemorySource
    yaml_extra: str = ""
    token: str | None = None
    clock: Clock = field(default_factory=Clock)
    notifier: Any = None
    calls: list[CallRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Engine | None = None

    def config_text(self) -> str:
        return (f"source: {{kind: file, path: unused.json}}\n"
                f"target: {{base_url: {json.dumps(self.faulty.url)}, token: x, rate: {{per_second: 5000}}}}\n"
                + self.yaml_extra)

    def build(self, *, dry_run: bool = False, members_per_patch: int = 100, use_bulk: str = "never",
              timeout: float = 30.0) -> Engine:
        """The engine against the faulty target; ``use_bulk`` "never" by default, so the request counts of the
        catalogue are those of single requests (the Bulk tests pass "auto")."""
        cfg = load_job_config(self.config_text())

        def on_call(call: CallRecord) -> None:
            with self.lock:
                self.calls.append(call)
            if self.engine is not None:
                self.engine.on_call(call)

        target = ScimTarget(self.faulty.url, self.token or self.faulty.token, concurrency=4, on_call=on_call,
                            backoff_base=0.01, members_per_patch=members_per_patch,
                            max_retries=cfg.target.retries, use_bulk=use_bulk, timeout=timeout)
        self.engine = Engine("job", cfg, self.store, self.source, target, dry_run=dry_run, clock=self.clock,
                             notifier=self.notifier)
        return self.engine

    def run(self, *, initial: bool | None = None, **kw: Any) -> CycleReport:
        self.faulty.faults.seen.clear()
        with self.lock:
            self.calls.clear()
        engine = self.build(**kw)
        try:
            return engine.run_cycle(initial=initial)
        finally:
            engine.target.close()

    def seen(self, method: str | None = None) -> list[Seen]:
        return self.faulty.faults.requests(method)

    def methods(self) -> collections.Counter[str]:
        return collections.Counter(s.method for s in self.seen())


@pytest.fixture()
def job(faulty: FaultyTarget, tmp_path: Path) -> Iterator[Job]:
    faulty.faults.clear()
    store = open_engine_store(f"sqlite:///{tmp_path / 'engine.db'}")
    store.create_job("job", "{}", "fp")
    j = Job(faulty, store, MemorySource())
    try:
        yield j
    finally:
        faulty.faults.clear()
        store.close()


def users_job(job: Job, n: int = 3, **attrs: Any) -> list[str]:
    """``n`` assigned users with unique names; returns their objectIds."""
    tag = uid()
    ids = []
    for i in range(n):
        oid = f"{tag}-u{i}"
        job.source.user(oid, f"u{i}.{tag}@example.com", **attrs)
        ids.append(oid)
    return ids


def request_bodies(job: Job, method: str) -> list[Any]:
    with job.lock:
        return [json.loads(c.request_body) for c in job.calls if c.method == method and c.request_body]


def target_user(job: Job, user_name: str) -> dict[str, Any]:
    with httpx.Client(base_url=job.faulty.url, headers={"Authorization": f"Bearer {job.faulty.token}"}) as c:
        found = c.get("/Users", params={"filter": f'userName eq "{user_name}"'}).json()["Resources"]
    assert len(found) == 1
    result: dict[str, Any] = found[0]
    return result


def create_on_target(job: Job, resource: dict[str, Any], kind: str = "Users") -> str:
    with httpx.Client(base_url=job.faulty.url, headers={"Authorization": f"Bearer {job.faulty.token}",
                                                         "Content-Type": "application/scim+json"}) as c:
        r = c.post(f"/{kind}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def job_state(job: Job) -> StoredJob:
    found = job.store.get_job("job")
    assert found is not None
    return found


def link_of(job: Job, object_type: str, source_id: str) -> Link:
    found = job.store.get_link("job", object_type, source_id)
    assert found is not None, f"no link for {object_type} {source_id}"
    return found


def escrow_of(job: Job, source_id: str) -> Escrow:
    found = job.store.get_escrow("job", "User", source_id)
    assert found is not None
    return found


def records_of(report: CycleReport, source_id: str) -> list[tuple[str, str, str | None]]:
    return [(r.action, r.status, r.reason) for r in report.records if r.source_id == source_id]


# -- CYC ----------------------------------------------------------------------------------------------------------
def test_t_cyc_1_initial_cycle(job: Job) -> None:
    ids = users_job(job)
    report = job.run()
    assert report.kind == "initial"
    assert [(s.method, s.path) for s in job.seen()].count(("GET", "/Users")) == 3
    assert collections.Counter((s.method, s.path) for s in job.seen()) == {("GET", "/Users"): 3,
                                                                            ("POST", "/Users"): 3}
    assert all("filter=userName" in s.query for s in job.seen("GET"))
    assert {r.source_id for r in report.records if (r.action, r.status) == ("create", "success")} == set(ids)
    stored = job_state(job)
    assert stored.watermark and stored.status == "Active"
    links = job.store.get_links("job", "User", ids)
    assert set(links) == set(ids) and all(link.target_id for link in links.values())


def test_t_cyc_2_one_attribute_one_patch(job: Job) -> None:
    ids = users_job(job)
    job.run()
    job.source.update(ids[1], displayName="Renamed")
    report = job.run()
    assert report.kind == "incremental"
    assert job.methods() == {"PATCH": 1}
    assert request_bodies(job, "PATCH") == [{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                             "Operations": [{"op": "replace", "path": "displayName",
                                                             "value": "Renamed"}]}]
    assert records_of(report, ids[0]) == [("other", "skipped", "RedundantExport")]


def test_t_cyc_3_mapping_saved_next_cycle_initial(job: Job) -> None:
    ids = users_job(job, jobTitle="Engineer")
    job.run()
    before = job.store.get_links("job", "User", ids)
    job.yaml_extra = ("object_mappings:\n  users:\n    attribute_mappings:\n"
                      "      - {target: userName, source: userPrincipalName, matching_priority: 1}\n"
                      "      - {target: displayName, source: displayName}\n"
                      "      - {target: active, source: 'Not([IsSoftDeleted])'}\n"
                      "      - {target: externalId, source: mailNickname}\n"
                      "      - {target: title, source: jobTitle}\n")
    cfg = load_job_config(job.config_text())
    job.store.update_job_config("job", job.config_text(), cfg.mapping_fingerprint())   # what `job update` does
    assert job_state(job).watermark is None
    report = job.run()
    assert report.kind == "initial"
    assert job.methods() == {"PATCH": 3}                 # links kept: no GET, no duplicate POST
    assert all(b["Operations"] == [{"op": "replace", "path": "title", "value": "Engineer"}]
               for b in request_bodies(job, "PATCH"))
    after = job.store.get_links("job", "User", ids)
    assert {k: v.target_id for k, v in after.items()} == {k: v.target_id for k, v in before.items()}


# -- MAT ----------------------------------------------------------------------------------------------------------
MATCH3 = ("object_mappings:\n  users:\n    attribute_mappings:\n"
          "      - {target: userName, source: userPrincipalName, matching_priority: 1}\n"
          "      - {target: externalId, source: mailNickname, matching_priority: 2}\n"
          "      - {target: displayName, source: displayName, matching_priority: 3}\n")


def test_t_mat_1_precedence(job: Job) -> None:
    job.yaml_extra = MATCH3
    (oid,) = users_job(job, 1)
    nick = job.source.users[oid]["mailNickname"]
    existing = create_on_target(job, {"userName": f"other-{nick}@example.com", "externalId": nick,
                                      "displayName": "somebody else"})
    report = job.run()
    queries = [s.query for s in job.seen("GET")]
    assert len(queries) == 2 and "userName" in queries[0] and "externalId" in queries[1]   # attr3 never queried
    assert job.methods() == {"GET": 2, "PATCH": 1}
    assert link_of(job, "User", oid).target_id == existing
    assert records_of(report, oid) == [("update", "success", None)]


def test_t_mat_2_two_hits(job: Job) -> None:
    job.yaml_extra = ("object_mappings:\n  users:\n    attribute_mappings:\n"
                      "      - {target: displayName, source: displayName, matching_priority: 1}\n"
                      "      - {target: userName, source: userPrincipalName}\n")
    (oid,) = users_job(job, 1)
    name = job.source.users[oid]["displayName"]
    for i in range(2):
        create_on_target(job, {"userName": f"dup{i}-{name}@example.com", "displayName": name})
    report = job.run()
    assert records_of(report, oid) == [("other", "failure", "DuplicateTargetEntries")]
    assert set(job.methods()) == {"GET"}
    assert job.store.get_link("job", "User", oid) is None
    assert escrow_of(job, oid).reason_code == "DuplicateTargetEntries"


def test_t_mat_3_post_409_rematch(job: Job) -> None:
    (oid,) = users_job(job, 1)
    upn = job.source.users[oid]["userPrincipalName"]
    engine_calls: list[str] = []

    def racer(call: CallRecord) -> None:     # someone else creates the user between our GET and our POST
        engine_calls.append(call.method)
        if call.method == "GET" and engine_calls.count("GET") == 1:
            create_on_target(job, {"userName": upn, "displayName": "created elsewhere"})

    engine = job.build()
    original = engine.target.on_call
    engine.target.on_call = lambda c: (racer(c), original(c) if original else None)  # type: ignore[func-returns-value]
    job.faulty.faults.seen.clear()
    report = engine.run_cycle()
    engine.target.close()
    ours = [s for s in job.seen() if s.headers.get("user-agent", "").startswith("scimgrip/")]
    assert [(s.method, s.status) for s in ours] == [("GET", 200), ("POST", 409), ("GET", 200), ("PATCH", 200)]
    (rec,) = [r for r in report.records if r.source_id == oid]
    assert (rec.action, rec.status) == ("update", "success")
    assert target_user(job, upn)["displayName"] == job.source.users[oid]["displayName"]
    assert link_of(job, "User", oid).target_id == target_user(job, upn)["id"]


def test_t_mat_4_invalid_anchor_recovered(job: Job) -> None:
    (oid,) = users_job(job, 1)
    job.run()
    old = link_of(job, "User", oid).target_id
    with httpx.Client(base_url=job.faulty.url, headers={"Authorization": f"Bearer {job.faulty.token}"}) as c:
        assert c.delete(f"/Users/{old}").status_code == 204
    job.source.update(oid, displayName="Changed")
    report = job.run()
    assert [(s.method, s.status) for s in job.seen()] == [("PATCH", 404), ("GET", 200), ("POST", 201)]
    (rec,) = [r for r in report.records if r.source_id == oid]
    assert (rec.action, rec.status) == ("create", "success")
    assert any("InvalidAnchor" in st["description"] for st in rec.steps)
    new = link_of(job, "User", oid).target_id
    assert new != old and target_user(job, job.source.users[oid]["userPrincipalName"])["id"] == new


# -- MAP / EXP ----------------------------------------------------------------------------------------------------
TITLE = ("object_mappings:\n  users:\n    attribute_mappings:\n"
         "      - {target: userName, source: userPrincipalName, matching_priority: 1}\n"
         "      - {target: displayName, source: displayName}\n")


def test_t_map_1_default_on_create_only(job: Job) -> None:
    job.yaml_extra = TITLE + "      - {target: title, source: jobTitle, default: Employee}\n"
    a, b = users_job(job, 2)
    job.source.update(b, jobTitle="Engineer")
    job.run()
    titles = {x["userName"]: x.get("title") for x in request_bodies(job, "POST")}
    assert titles == {job.source.users[a]["userPrincipalName"]: "Employee",
                      job.source.users[b]["userPrincipalName"]: "Engineer"}
    job.source.update(b, jobTitle=None)                  # becomes null later ⇒ nothing is sent
    job.run()
    assert job.methods() == {}


def test_log_4_redacted_values_never_reach_the_provisioning_log(job: Job) -> None:
    job.yaml_extra = TITLE + '      - {target: title, source: "Redact([jobTitle])"}\n'
    (oid,) = users_job(job, 1, jobTitle="Secret Agent")
    report = job.run()
    assert request_bodies(job, "POST")[0]["title"] == "Secret Agent"     # the target gets the value ...
    logs = job.store.query_logs("job", cycle_id=report.cycle_id, limit=10)
    modified = {m.name: m.new for x in logs for m in x.modified}
    assert modified["title"] == "[Redact]"                               # ... the log does not (LOG-4)
    assert "Secret Agent" not in repr(logs)


def test_t_map_2_object_add_only_never_patched(job: Job) -> None:
    job.yaml_extra = TITLE + "      - {target: title, source: jobTitle, flow_type: ObjectAddOnly}\n"
    (oid,) = users_job(job, 1, jobTitle="Intern")
    job.run()
    assert request_bodies(job, "POST")[0]["title"] == "Intern"
    job.source.update(oid, jobTitle="Director")
    job.run()
    assert job.methods() == {}
    job.source.update(oid, jobTitle="CEO", displayName="Boss")
    job.run()
    assert [b["Operations"] for b in request_bodies(job, "PATCH")] == [
        [{"op": "replace", "path": "displayName", "value": "Boss"}]]


def test_t_exp_sw_switch_not_wiped(job: Job) -> None:
    job.yaml_extra = TITLE + ("      - {target: title, source: 'Switch([department], \"Other\", \"Sales\", "
                              "\"Seller\", \"Engineering\", \"Builder\")'}\n")
    (oid,) = users_job(job, 1, department="Sales")
    job.run()
    job.source.update(oid, displayName="Only the name changes")
    job.run()
    assert [b["Operations"] for b in request_bodies(job, "PATCH")] == [
        [{"op": "replace", "path": "displayName", "value": "Only the name changes"}]]
    assert target_user(job, job.source.users[oid]["userPrincipalName"])["title"] == "Seller"


# -- DEL ----------------------------------------------------------------------------------------------------------
def test_t_del_1_threshold_and_force_deletes(job: Job) -> None:
    job.yaml_extra = "accidental_deletions: {enabled: true, threshold: 3}\n"
    ids = users_job(job, 7)
    job.run()
    for oid in ids[:3]:                                   # 3 disables: at the threshold ⇒ applied
        job.source.assigned_users.discard(oid)
    report = job.run()
    assert job.methods() == {"PATCH": 3}
    assert sum(1 for r in report.records if (r.action, r.status) == ("disable", "success")) == 3
    for oid in ids[3:]:                                   # 4 disables: above ⇒ held, quarantined
        job.source.assigned_users.discard(oid)
    report = job.run()
    assert job.methods() == {}
    assert sorted(records_of(report, oid)[0] for oid in ids[3:]) == [("stagedDelete", "skipped",
                                                                      "TooManyDeletes")] * 4
    stored = job_state(job)
    assert stored.status == "Quarantine" and stored.quarantine is not None
    assert stored.quarantine.reason == "TooManyDeletes"
    assert len(job.store.staged("job")) == 4
    job.store.restart("job", {"ForceDeletes"})            # `scimgrip job restart job --force-deletes`
    report = job.run()
    assert job.methods() == {"PATCH": 4}
    assert sorted(records_of(report, oid)[0] for oid in ids[3:]) == [("disable", "success", None)] * 4
    stored = job_state(job)
    assert stored.status == "Active" and stored.quarantine is None and job.store.staged("job") == []


# -- GRP ----------------------------------------------------------------------------------------------------------
def test_t_grp_1_2_create_then_member_chunks_and_413(job: Job) -> None:
    ids = users_job(job, 25)
    tag = ids[0].split("-")[0]
    job.source.group(f"{tag}-g", f"Group {tag}", ids)
    job.run(members_per_patch=10)
    posts = request_bodies(job, "POST")
    (group_post,) = [b for b in posts if "displayName" in b and "userName" not in b]
    assert group_post["members"] == []                   # T-GRP-1: created empty
    assert [s.members for s in job.seen("PATCH")] == [10, 10, 5]   # ≤ members_per_patch per PATCH
    # T-GRP-2: the target caps member values (413): the chunk halves and the smaller size sticks
    more = users_job(job, 12)
    job.source.update(f"{tag}-g", members=ids + more)
    job.faulty.faults.member_cap = 6
    job.run(members_per_patch=10)
    assert [(s.members, s.status) for s in job.seen("PATCH")] == [(10, 413), (5, 204), (5, 204), (2, 204)]
    gid = link_of(job, "Group", f"{tag}-g").target_id
    with httpx.Client(base_url=job.faulty.url, headers={"Authorization": f"Bearer {job.faulty.token}"}) as c:
        members = c.get(f"/Groups/{gid}").json()["members"]
    assert len(members) == 37


def test_t_grp_3_member_enters_scope_later(job: Job) -> None:
    ids = users_job(job, 3, assign=False)
    tag = ids[0].split("-")[0]
    job.source.update(ids[2], accountEnabled=False)      # a member that is out of scope (disabled)
    job.source.group(f"{tag}-g", f"Team {tag}", ids)
    job.run()
    assert [s.members for s in job.seen("PATCH")] == [2]
    job.source.update(ids[2], accountEnabled=True)       # enters scope: created and added in this cycle
    report = job.run()
    assert records_of(report, ids[2]) == [("create", "success", None)]
    patches = request_bodies(job, "PATCH")
    new_id = link_of(job, "User", ids[2]).target_id
    assert [b["Operations"] for b in patches] == [[{"op": "add", "path": "members", "value": [{"value": new_id}]}]]


def test_t_grp_3_incremental_source_member_enters_scope(job: Job) -> None:
    """CYC-9 with a delta source: the group itself does not change, only the member does."""
    job.source = MemorySource(complete=False)
    ids = users_job(job, 2, assign=False)
    tag = ids[0].split("-")[0]
    job.source.update(ids[1], accountEnabled=False)
    job.source.group(f"{tag}-g", f"Delta {tag}", ids)
    job.run()
    assert [s.members for s in job.seen("PATCH")] == [1]
    job.source.update(ids[1], accountEnabled=True)       # only this user is in the next delta
    report = job.run()
    assert {r.source_id for r in report.records} == {ids[1], f"{tag}-g"}
    new_id = link_of(job, "User", ids[1]).target_id
    assert [b["Operations"] for b in request_bodies(job, "PATCH")] == [
        [{"op": "add", "path": "members", "value": [{"value": new_id}]}]]
    assert job.store.count_pending_refs("job") == 0


# -- ERR ----------------------------------------------------------------------------------------------------------
def test_t_err_1_retry_after_pauses_the_job(job: Job) -> None:
    users_job(job, 4)
    job.faulty.faults.add("status", method="POST", path="^/Users$", status=429, retry_after="2", times=1)
    report = job.run()
    assert sum(1 for r in report.records if r.status == "success") == 4
    seen = job.seen()
    (throttled,) = [s for s in seen if s.status == 429]
    assert throttled.t_end is not None
    later = [s for s in seen if s.t > throttled.t_end + 0.05]
    assert later and min(s.t for s in later) >= throttled.t_end + 1.9     # nothing sent during the pause
    assert [s.status for s in job.seen("POST")].count(201) == 4          # the throttled POST was retried


def test_t_err_2_503_twice_then_success(job: Job) -> None:
    (oid,) = users_job(job, 1)
    job.faulty.faults.add("status", method="POST", path="^/Users$", status=503, times=2)
    report = job.run()
    assert [s.status for s in job.seen("POST")] == [503, 503, 201]
    assert records_of(report, oid) == [("create", "success", None)]


def test_err_3e_dropped_post_rematched_before_retry(job: Job) -> None:
    (oid,) = users_job(job, 1)
    job.faulty.faults.add("reset", method="POST", path="^/Users$", times=1)
    report = job.run()
    # the outcome is unknown: match again; nothing visible yet, so no second POST in this change (a slow target
    # could still apply the first one and a second would duplicate a group) — escrow, match first next time
    assert [(s.method, s.status) for s in job.seen()] == [("GET", 200), ("POST", None), ("GET", 200)]
    assert records_of(report, oid) == [("create", "failure", "Timeout")]
    job.clock.advance(minutes=41)
    report = job.run()
    assert [(s.method, s.status) for s in job.seen()] == [("GET", 200), ("POST", 201)]
    assert records_of(report, oid) == [("create", "success", None)]
    target_user(job, job.source.users[oid]["userPrincipalName"])        # exactly one


@pytest.mark.parametrize("use_bulk", ["always", "never"])
def test_err_3e_timed_out_post_still_landing_is_not_created_twice(job: Job, use_bulk: str) -> None:
    """A POST the target answers after our timeout but still applies (a slow handler): matching at once finds
    nothing, and the next cycle — right behind this one — POSTed the groups again before the first write landed
    (4 groups in one BulkRequest, so nothing else delayed it). The engine waits the timeout out before matching."""
    tag = uid()
    names = [f"Slow group {i} {tag}" for i in range(4)]
    for i, name in enumerate(names):
        job.source.group(f"{tag}-g{i}", name, [])
    slow = job.faulty.faults.add("delay", method="POST", path="^/(Bulk|Groups)$", delay=0.75, times=1)
    report = job.run(use_bulk=use_bulk, timeout=0.5)       # lands 0.25 s after we gave up
    assert slow.fired == 1
    posts = job.seen("POST")
    job.clock.advance(minutes=41)
    job.run(use_bulk=use_bulk, timeout=0.5)                   # at once: escrows due, as in a back-to-back run
    deadline = time.monotonic() + 5
    while any(p.t_end is None for p in posts) and time.monotonic() < deadline:   # the slow write has landed
        time.sleep(0.02)
    with httpx.Client(base_url=job.faulty.url, headers={"Authorization": f"Bearer {job.faulty.token}"}) as c:
        found = [g["displayName"] for g in c.get("/Groups", params={"count": 1000}).json()["Resources"]
                 if g["displayName"] in names]
    assert sorted(found) == names                             # each exactly once
    late = [r for r in report.records if any("outcome unknown" in st["description"] for st in r.steps)]
    assert late and all((r.action, r.status) in (("create", "success"), ("other", "skipped")) for r in late)
    assert all(link_of(job, "Group", f"{tag}-g{i}").target_id for i in range(4))


def test_t_err_3_escrow_then_next_eligible_cycle(job: Job) -> None:
    (bad,) = users_job(job, 1)
    job.faulty.faults.add("status", method="POST", path="^/Users$", status=500, times=4)
    report = job.run()
    assert records_of(report, bad) == [("create", "failure", "InternalServerError")]
    esc = escrow_of(job, bad)
    assert esc.reason_code == "InternalServerError" and esc.attempts == 1
    assert [s.status for s in job.seen("POST")] == [500] * 4              # 1 try + 3 retries (ERR-3c)
    # before the back-off has passed: the object waits, no request for it
    report = job.run()
    assert records_of(report, bad) == [("other", "skipped", "Escrowed")]
    assert job.methods() == {}
    # the next eligible cycle: retried, succeeds, leaves escrow
    job.clock.advance(minutes=41)
    report = job.run()
    assert records_of(report, bad) == [("create", "success", None)]
    assert [(s.method, s.status) for s in job.seen()] == [("GET", 200), ("POST", 201)]
    assert job.store.get_escrow("job", "User", bad) is None


def test_t_err_3_delta_source_escrow_redriven_without_a_change(job: Job) -> None:
    """A delta source does not report the failed object again; the engine retries it from its snapshot."""
    job.source = MemorySource(complete=False)
    (bad,) = users_job(job, 1)
    job.faulty.faults.add("status", method="POST", path="^/Users$", status=500, times=4)
    report = job.run()
    assert records_of(report, bad) == [("create", "failure", "InternalServerError")]
    report = job.run()                                   # not due yet, and not in the delta: nothing happens
    assert report.records == [] and job.methods() == {}
    job.clock.advance(minutes=41)
    report = job.run()
    assert records_of(report, bad) == [("create", "success", None)]
    assert job.store.get_escrow("job", "User", bad) is None
    assert job_state(job).state.get("escrow_objects") == {}


# -- QUA ----------------------------------------------------------------------------------------------------------
@pytest.fixture()
def smtp_sink() -> Iterator[tuple[int, list[Message]]]:
    from aiosmtpd.controller import Controller

    from tests.server.conftest import free_port

    received: list[Message] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
            import email

            received.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def test_t_qua_401_quarantine_one_email_per_series(job: Job, smtp_sink: tuple[int, list[Message]]) -> None:
    port, received = smtp_sink
    job.notifier = SmtpNotifier(to="ops@example.com", host="127.0.0.1", port=port)
    ids = users_job(job, 3)
    job.token = "not-the-token"
    report = job.run()
    assert report.quarantine == "EncounteredQuarantineException"
    assert {s.status for s in job.seen()} == {401} and len(job.seen()) <= 4   # the cycle stops at once
    stored = job_state(job)
    assert stored.status == "Quarantine" and stored.quarantine is not None
    assert stored.quarantine.reason == "EncounteredQuarantineException"
    assert stored.next_cycle_at == stored.quarantine.since + dt.timedelta(hours=6)     # QUA-2
    assert len(received) == 1
    assert "EncounteredQuarantineException" in received[0]["Subject"] and received[0]["To"] == "ops@example.com"
    job.clock.advance(hours=6)
    job.run()                                            # same series, same reason ⇒ no second e-mail
    assert len(received) == 1
    assert job_state(job).next_cycle_at == stored.quarantine.since + dt.timedelta(hours=12)
    job.token = None                                     # credentials fixed: the next cycle lifts quarantine
    report = job.run()
    assert report.quarantine is None and job_state(job).status == "Active"
    job.token = "revoked-again"                          # a new series ⇒ a new e-mail
    job.source.update(ids[0], displayName="needs a PATCH")
    assert job.run().quarantine == "EncounteredQuarantineException"
    assert len(received) == 2


def test_t_qua_disabled_after_28_days(job: Job) -> None:
    ids = users_job(job, 1)
    job.token = "bad"
    assert job.run().quarantine == "EncounteredQuarantineException"
    for hours in (6, 6, 12):                             # +6 h, +12 h, +24 h: still failing
        job.clock.advance(hours=hours)
        job.source.update(ids[0], displayName=f"try {hours}")
        job.run()
        assert job_state(job).status == "Quarantine"
    job.clock.advance(days=27)
    job.source.update(ids[0], displayName="last try")
    job.run()
    stored = job_state(job)
    assert stored.status == "Paused" and stored.next_cycle_at is None
    assert job.store.count_escrows("job") == 0


# -- LOG / OND / CYC-9 --------------------------------------------------------------------------------------------
def test_t_log_1_every_call_has_one_change_id(job: Job) -> None:
    ids = users_job(job, 4)
    job.source.update(ids[1], manager=ids[0])
    tag = ids[0].split("-")[0]
    job.source.group(f"{tag}-g", f"Log {tag}", ids[:3])
    job.faulty.faults.add("status", method="POST", path="^/Groups$", status=503, times=1)
    report = job.run()
    with job.lock:
        calls = list(job.calls)
    assert len(calls) == len(job.seen())                 # every request the target saw was reported
    by_change = {r.change_id: r for r in report.records}
    assert len(by_change) == len(report.records)
    assert all(c.context.get("change_id") in by_change for c in calls)
    assert sum(len(r.calls) for r in report.records) == len(calls)
    for r in report.records:
        assert all(c.context["change_id"] == r.change_id for c in calls if c.context.get("record") is r)
    logs = job.store.query_logs("job", cycle_id=report.cycle_id, limit=100)
    assert sorted(x.change_id for x in logs) == sorted(by_change)
    manager_rec = next(x for x in logs if x.source_id == ids[1])
    # the manager goes into the POST when it was created first, else a PATCH follows (workers run concurrently)
    assert [c.method for c in manager_rec.calls] in (["GET", "POST", "PATCH"], ["GET", "POST"])
    assert [s.type for s in manager_rec.steps][:3] == ["import", "scoping", "matching"]
    group_rec = next(x for x in logs if x.object_type == "Group")
    assert [(c.method, c.status) for c in group_rec.calls] == [("GET", 200), ("POST", 503), ("POST", 201),
                                                               ("GET", 200), ("PATCH", 204)]


def test_t_ond_1_unchanged_user(job: Job) -> None:
    (oid,) = users_job(job, 1)
    job.run()
    engine = job.build()
    job.faulty.faults.seen.clear()
    (rec,) = engine.provision_on_demand([oid])
    engine.target.close()
    assert (rec.action, rec.status, rec.reason) == ("other", "skipped", "RedundantExport")
    assert job.methods() == {}


def test_cyc_9_manager_enters_scope_later(job: Job) -> None:
    job.source = MemorySource(complete=False)            # incremental reads: only what changed
    tag = uid()
    job.source.user(f"{tag}-m", f"boss.{tag}@example.com", assign=False)
    job.source.user(f"{tag}-u", f"worker.{tag}@example.com", manager=f"{tag}-m")
    report = job.run()
    assert records_of(report, f"{tag}-m") == [("other", "skipped", "EntrySynchronizationSkipped")]
    assert ENT not in target_user(job, f"worker.{tag}@example.com")
    job.source.assigned_users.add(f"{tag}-m")            # the manager is assigned; the worker does not change
    job.source.touched.add(f"{tag}-m")
    report = job.run()
    assert {r.source_id for r in report.records} >= {f"{tag}-m", f"{tag}-u"}
    boss = link_of(job, "User", f"{tag}-m").target_id
    assert target_user(job, f"worker.{tag}@example.com")[ENT]["manager"]["value"] == boss
    assert job.store.count_pending_refs("job") == 0


# -- reconcile (what Entra lacks, QA-DRIFT) ---------------------------------------------------------------------
PATCHOP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def _admin_client(job: Job) -> httpx.Client:
    return httpx.Client(base_url=job.faulty.url, headers={"Authorization": f"Bearer {job.faulty.token}",
                                                          "Content-Type": "application/scim+json"})


def test_reconcile_reports_and_repairs_drift(job: Job) -> None:
    ids = users_job(job, 3)
    gid = f"g-{uid()}"
    job.source.group(gid, f"Reconcile {gid}", ids)
    job.run()
    u0 = link_of(job, "User", ids[0])
    u1 = link_of(job, "User", ids[1])
    g = link_of(job, "Group", gid)
    gone = link_of(job, "User", ids[2])
    orphan = create_on_target(job, {"userName": f"orphan-{uid()}@example.com"})
    with _admin_client(job) as c:
        # someone edits the target behind the engine's back
        assert c.patch(f"/Users/{u0.target_id}", json={"schemas": [PATCHOP], "Operations": [
            {"op": "replace", "path": "displayName", "value": "Changed At Target"}]}).status_code == 200
        assert c.patch(f"/Groups/{g.target_id}", json={"schemas": [PATCHOP], "Operations": [
            {"op": "remove", "path": f'members[value eq "{u1.target_id}"]'},
            {"op": "add", "path": "members", "value": [{"value": orphan}]}]}).status_code == 204
        assert c.delete(f"/Users/{gone.target_id}").status_code == 204

    engine = job.build()
    drifts = [d for d in reconcile(engine) if d.target_id in {u0.target_id, g.target_id, gone.target_id, orphan}]
    kinds = sorted((d.kind, d.target_id) for d in drifts)
    assert kinds == sorted([("attribute", u0.target_id), ("member_missing", g.target_id),
                            ("member_extra", g.target_id), ("missing", gone.target_id), ("orphan", orphan)])
    attr = next(d for d in drifts if d.kind == "attribute")
    assert attr.path == "displayName" and attr.actual == "Changed At Target"
    assert not any(d.repaired for d in drifts)

    engine = job.build()
    repaired = [d for d in reconcile(engine, repair=True)
                if d.target_id in {u0.target_id, g.target_id, gone.target_id, orphan}]
    assert all(d.repaired for d in repaired if d.kind != "orphan")
    assert target_user(job, u0.exported["userName"])["displayName"] == u0.exported["displayName"]
    with _admin_client(job) as c:
        members = {m["value"] for m in c.get(f"/Groups/{g.target_id}").json()["members"]}
    assert u1.target_id in members and orphan not in members
    assert job.store.get_link("job", "User", ids[2]) is None     # the next cycle matches or re-creates it
    job.run()
    assert link_of(job, "User", ids[2]).target_id != gone.target_id

    engine = job.build()
    left = [d for d in reconcile(engine) if d.target_id in {u0.target_id, g.target_id, orphan}]
    assert [(d.kind, d.target_id) for d in left] == [("orphan", orphan)]


# -- Bulk, matching from one listing, reference escrows (WIRE-4, MAT-1, ERR-1) --------------------------------
def _poison(user_name: str) -> Any:
    """A request rewrite that blanks ``userName`` in the create of ``user_name`` — inside a BulkRequest or a
    plain POST — so the real server rejects just that operation with 400."""
    def rewrite(method: str, path: str, body: bytes) -> bytes:
        if method != "POST" or path not in ("/Bulk", "/Users") or user_name.encode() not in body:
            return body
        doc = json.loads(body)
        for data in ([op.get("data") or {} for op in doc.get("Operations", [])] if path == "/Bulk" else [doc]):
            if data.get("userName") == user_name:
                data["userName"] = ""
        return json.dumps(doc).encode()
    return rewrite


def test_bulk_initial_cycle_with_listing_and_managers(job: Job) -> None:
    tag = uid()
    job.source.user(f"{tag}-boss", f"boss.{tag}@example.com")
    ids = users_job(job, 59, manager=f"{tag}-boss")
    report = job.run(use_bulk="auto")
    assert {r.source_id for r in report.records if (r.action, r.status) == ("create", "success")} == \
        set(ids) | {f"{tag}-boss"}
    seen = job.seen()
    assert not [s for s in seen if "filter=" in s.query]          # matched in the listing, not per object
    assert [s.path for s in seen].count("/Bulk") >= 1
    assert len(seen) < 30                                          # 60 creates + 59 managers in a few requests
    assert sum("in a BulkRequest" in json.dumps(r.steps) for r in report.records) >= 30       # LOG says how
    boss = link_of(job, "User", f"{tag}-boss").target_id
    assert all(target_user(job, job.source.users[i]["userPrincipalName"])[ENT]["manager"]["value"] == boss
               for i in ids[:5])
    report = job.run(use_bulk="auto")                             # nothing changed: nothing sent
    assert job.methods() == {} and report.kind == "incremental"


@pytest.mark.parametrize("use_bulk", ["always", "auto"])
def test_bulk_unreadable_service_provider_config_does_not_end_the_cycle(job: Job, use_bulk: str,
                                                                        patient_bulk: list[BulkBatcher]) -> None:
    """A 5xx on ``GET /ServiceProviderConfig`` (every attempt of one read) when the batcher starts used to escape
    ``run_cycle``; now the cycle runs — "always" in BulkRequests of the default size, "auto" (nothing known to be
    advertised) as single requests."""
    ids = users_job(job, 3)
    spc = job.faulty.faults.add("status", method="GET", path="^/ServiceProviderConfig$", status=500, times=4)
    report = job.run(use_bulk=use_bulk)                      # retries: 3, so the first read fails for good
    assert spc.fired == 4
    assert [records_of(report, oid) for oid in ids] == [[("create", "success", None)]] * 3
    assert (("POST", "/Bulk") in {(s.method, s.path) for s in job.seen()}) == (use_bulk == "always")
    assert len(patient_bulk) == (1 if use_bulk == "always" else 0)


@pytest.mark.parametrize("use_bulk", ["auto", "never"])
def test_bulk_failed_operation_escrowed_like_a_single_request(job: Job, use_bulk: str,
                                                              patient_bulk: list[BulkBatcher]) -> None:
    """One rejected operation inside a BulkRequest fails, is escrowed and recovers exactly as the same rejected
    single POST does (the "never" run is the reference)."""
    ids = users_job(job, 6)
    bad = ids[2]
    job.faulty.faults.rewrite = _poison(job.source.users[bad]["userPrincipalName"])
    report = job.run(use_bulk=use_bulk)
    assert (("POST", "/Bulk") in {(s.method, s.path) for s in job.seen()}) == (use_bulk == "auto")
    (failed,) = [r for r in report.records if r.source_id == bad]
    assert (failed.action, failed.status, failed.reason) == ("create", "failure", "SchemaPropertyCanOnlyAcceptValue")
    assert failed.detail == "attribute 'userName' is required"
    assert all(records_of(report, i) == [("create", "success", None)] for i in ids if i != bad)
    esc = escrow_of(job, bad)
    assert esc.attempts == 1 and not esc.is_reference
    job.faulty.faults.rewrite = None
    job.clock.advance(minutes=41)
    report = job.run(use_bulk=use_bulk)
    assert records_of(report, bad) == [("create", "success", None)]
    assert job.store.get_escrow("job", "User", bad) is None
    target_user(job, job.source.users[bad]["userPrincipalName"])


@pytest.mark.parametrize("status", [404, 501])
def test_bulk_advertised_but_absent_falls_back_to_single_requests(job: Job, status: int) -> None:
    ids = users_job(job, 6)
    job.faulty.faults.add("status", method="POST", path="^/Bulk$", status=status, times=None)
    report = job.run(use_bulk="auto")
    assert all(records_of(report, i) == [("create", "success", None)] for i in ids)
    posts = collections.Counter(s.path for s in job.seen("POST"))
    assert posts["/Bulk"] <= 4 and posts["/Users"] == 6      # at most one failed BulkRequest per connection


def test_listing_matches_existing_users_case_insensitively(job: Job) -> None:
    ids = users_job(job, 60)
    existing = {}
    for oid in ids:
        u = job.source.users[oid]
        existing[oid] = create_on_target(job, {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                               "userName": u["userPrincipalName"].upper(),
                                               "displayName": u["displayName"]})
    report = job.run()
    assert not [s for s in job.seen("GET") if "filter=" in s.query]    # one listing, no per-object query
    assert "POST" not in job.methods()                                   # userName is caseExact=false
    assert {i: link_of(job, "User", i).target_id for i in ids} == existing
    assert all("in the listing of the target" in json.dumps(r.steps) for r in report.records)


def test_reference_escrow_cleared_after_later_success(job: Job) -> None:
    tag = uid()
    job.source.user(f"{tag}-m", f"boss.{tag}@example.com")
    job.source.user(f"{tag}-u", f"worker.{tag}@example.com")
    job.run()
    job.source.update(f"{tag}-u", manager=f"{tag}-m")
    job.faulty.faults.add("status", method="PATCH", path="^/Users/", status=500, times=4)
    report = job.run()
    assert records_of(report, f"{tag}-u") == [("other", "failure", "ReferenceFailure")]
    esc = job.store.get_escrow("job", "User", f"{tag}-u", is_reference=True)
    assert esc is not None and esc.is_reference
    job.clock.advance(minutes=41)
    report = job.run()
    assert records_of(report, f"{tag}-u") == [("update", "success", None)]
    boss = link_of(job, "User", f"{tag}-m").target_id
    assert target_user(job, f"worker.{tag}@example.com")[ENT]["manager"]["value"] == boss
    assert job.store.get_escrow("job", "User", f"{tag}-u", is_reference=True) is None
    assert job.store.count_escrows("job") == 0


def test_bulk_respects_max_operations_and_max_payload_size(job: Job) -> None:
    """The target's advertised ``bulk.maxOperations`` and ``maxPayloadSize`` bound every BulkRequest (RFC 7644
    §3.7.4). The SPC is the one the engine keeps in the job state (WIRE-4), here a stricter one than the server's."""
    spc = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"], "patch": {"supported": True},
           "bulk": {"supported": True, "maxOperations": 5, "maxPayloadSize": 2500},
           "filter": {"supported": True, "maxResults": 200}}
    job.store.save_job_state("job", state={"service_provider_config": {"fetched": job.clock().isoformat(),
                                                                      "config": spc}})
    ids = users_job(job, 30)
    report = job.run(use_bulk="auto")
    assert all(records_of(report, i) == [("create", "success", None)] for i in ids)
    with job.lock:
        bulks = [c.request_body or "" for c in job.calls if c.path == "/Bulk"]
    assert len(bulks) >= 6                                          # 30 creates, at most 5 per request
    assert all(len(b.encode()) <= 2500 and len(json.loads(b)["Operations"]) <= 5 for b in bulks)
    assert ("GET", "/ServiceProviderConfig") not in {(s.method, s.path) for s in job.seen()}
