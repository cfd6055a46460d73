"""End to end: the engine against a real ``scimgrip serve`` on loopback (SQLite).

The expectations are computed from the directory JSON alone (SCP-1/SCP-4: directly assigned users and *direct*
user members of assigned groups, minus disabled and soft-deleted users; group objects only when the group itself
is assigned), never by calling engine code. Every target request is counted through ``ScimTarget``'s ``on_call``
hook, so the tests assert exact numbers of writes (T-CYC-2, T-DEP-1/2/3, T-DRY-1), and the CLI path is run as
subprocesses, including a SIGKILL in the middle of an initial cycle.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scimgrip.engine.bulk_batcher import BulkBatcher
from scimgrip.engine.config import load_job_config
from scimgrip.engine.cycle import CycleReport, Engine
from scimgrip.engine.sources.file import FileSource
from scimgrip.engine.sources.generate import generate_file
from scimgrip.engine.target import CallRecord, ScimTarget
from scimgrip.storage.sql.engine_store import SqlEngineStore, open_engine_store
from tests.server.conftest import SCIMGRIP, Server, TenantHandle, start_server, stop_server

SAMPLE = Path(__file__).resolve().parents[2] / "src/scimgrip/engine/sources/sample/directory.json"
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LOCALITY = 'addresses[type eq "work"].locality'


# -- the expectation, from the JSON only --------------------------------------------------------------------------
@dataclass
class Expected:
    users: dict[str, dict[str, Any]]            # objectId -> user, in scope
    groups: dict[str, dict[str, Any]]           # objectId -> group, provisioned
    members: dict[str, set[str]]                # group displayName -> userNames / group displayNames
    managers: dict[str, str | None]             # userName -> manager's userName (None: no manager)


def expected(doc: dict[str, Any]) -> Expected:
    users = {u["objectId"]: u for u in doc["users"]}
    groups = {g["objectId"]: g for g in doc["groups"]}
    assigned = doc.get("assignments") or {}
    candidates = set(assigned.get("users") or [])
    for gid in assigned.get("groups") or []:
        candidates |= {m for m in groups[gid].get("members") or [] if m in users}   # direct members only
    in_scope = {uid: users[uid] for uid in candidates
                if users[uid].get("accountEnabled") is not False and not users[uid].get("softDeleted")}
    provisioned = {gid: groups[gid] for gid in assigned.get("groups") or []}
    members: dict[str, set[str]] = {}
    for g in provisioned.values():
        names = set()
        for m in g.get("members") or []:
            if m in in_scope:
                names.add(in_scope[m]["userPrincipalName"])
            elif m in provisioned:
                names.add(provisioned[m]["displayName"])
        members[g["displayName"]] = names
    managers = {u["userPrincipalName"]: (in_scope[u["manager"]]["userPrincipalName"]
                                         if u.get("manager") in in_scope else None) for u in in_scope.values()}
    return Expected(in_scope, provisioned, members, managers)


# -- harness ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("e2e")
    srv = start_server(f"sqlite:///{tmp / 'target.db'}", tmp)
    try:
        yield srv
    finally:
        stop_server(srv)


def job_yaml(path: Path, tenant: TenantHandle, extra: str = "") -> str:
    return (f"source: {{kind: file, path: {json.dumps(str(path))}}}\n"
            f"target: {{base_url: {json.dumps(tenant.url)}, token: {json.dumps(tenant.token)},\n"
            f"         rate: {{per_second: 5000, concurrency: 8}}}}\n" + extra)


@dataclass
class Harness:
    tenant: TenantHandle
    store: SqlEngineStore
    directory: Path
    calls: list[CallRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    extra: str = ""
    use_bulk: str = "never"      # the request counts below are those of single requests

    def run(self, *, dry_run: bool = False, initial: bool | None = None, extra: str | None = None) -> CycleReport:
        cfg = load_job_config(job_yaml(self.directory, self.tenant, self.extra if extra is None else extra))
        with self.lock:
            self.calls.clear()
        holder: dict[str, Engine] = {}

        def on_call(call: CallRecord) -> None:
            with self.lock:
                self.calls.append(call)
            holder["engine"].on_call(call)

        target = ScimTarget(self.tenant.url, self.tenant.token, concurrency=8, on_call=on_call,
                            use_bulk=self.use_bulk)
        try:
            engine = Engine("job", cfg, self.store, FileSource(self.directory), target, dry_run=dry_run)
            holder["engine"] = engine
            return engine.run_cycle(initial=initial)
        finally:
            target.close()

    def methods(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(c.method for c in self.calls)

    def writes(self) -> list[CallRecord]:
        with self.lock:
            return [c for c in self.calls if c.method != "GET"]

    def write_directory(self, doc: dict[str, Any]) -> None:
        self.directory.write_text(json.dumps(doc))
        st = self.directory.stat()   # a new mtime even within the same clock tick (the source caches by stamp)
        os.utime(self.directory, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def make_harness(server: Server, tmp: Path, tenant: str, doc: dict[str, Any]) -> Harness:
    store = open_engine_store(f"sqlite:///{tmp / 'engine.db'}")
    store.create_job("job", "{}", "fp")
    h = Harness(server.tenant(tenant), store, tmp / "directory.json")
    h.write_directory(doc)
    return h


def target_state(tenant: TenantHandle) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with ScimTarget(tenant.url, tenant.token) as t:
        users = list(t.list_all("User"))
        groups = list(t.list_all("Group", attributes="displayName,members"))
    return users, groups


def assert_target_matches(tenant: TenantHandle, exp: Expected) -> dict[str, dict[str, Any]]:
    users, groups = target_state(tenant)
    names = [u["userName"] for u in users]
    assert len(names) == len(set(names)), "duplicate users on the target"
    assert set(names) == {u["userPrincipalName"] for u in exp.users.values()}
    by_id = {u["id"]: u for u in users}
    by_name = {u["userName"]: u for u in users}
    for u in exp.users.values():
        got = by_name[u["userPrincipalName"]]
        assert got["active"] is True
        assert got["displayName"] == u["displayName"]
        assert got.get("externalId") == u["mailNickname"]
        manager = (got.get(ENT) or {}).get("manager")
        want = exp.managers[u["userPrincipalName"]]
        assert (by_id[manager["value"]]["userName"] if manager else None) == want, u["userPrincipalName"]
    group_names = {g["id"]: g["displayName"] for g in groups}
    assert sorted(group_names.values()) == sorted(g["displayName"] for g in exp.groups.values())
    for g in groups:
        got_members = {by_id[m["value"]]["userName"] if m["value"] in by_id else group_names[m["value"]]
                       for m in g.get("members") or []}
        assert got_members == exp.members[g["displayName"]], g["displayName"]
    return by_name


def patch_paths(call: CallRecord) -> list[tuple[str, str]]:
    body = json.loads(call.request_body or "{}")
    return sorted((op["op"], op["path"]) for op in body["Operations"])


def actions(report: CycleReport, status: str) -> set[tuple[str, str, str]]:
    return {(r.object_type, r.source_id, r.action) for r in report.records if r.status == status}


# -- the sample directory, cycle after cycle ----------------------------------------------------------------------
def test_sample_directory_lifecycle(server: Server, tmp_path: Path) -> None:
    doc = json.loads(SAMPLE.read_text())
    exp = expected(doc)
    assert (len(exp.users), len(exp.groups)) == (211, 11)      # the sample's shape, from the JSON alone
    h = make_harness(server, tmp_path, "lifecycle", doc)

    # CYC-1: initial cycle into an empty target
    report = h.run()
    assert report.kind == "initial"
    creates = [r for r in report.records if r.action == "create"]
    assert {(r.object_type, r.source_id) for r in creates if r.status == "success"} == \
        {("User", u) for u in exp.users} | {("Group", g) for g in exp.groups}
    assert not [r for r in report.records if r.status == "failure"]
    assert h.methods()["POST"] == len(exp.users) + len(exp.groups)
    assert "DELETE" not in h.methods()
    by_name = assert_target_matches(h.tenant, exp)
    assert h.store.count_links("job", "User") == len(exp.users)
    stored = h.store.get_job("job")
    assert stored is not None and stored.watermark

    # MAP-6: nothing changed ⇒ not one request
    report = h.run()
    assert report.kind == "incremental"
    assert h.methods() == {}
    assert {(r.action, r.status, r.reason) for r in report.records} <= {
        ("other", "skipped", "RedundantExport"), ("other", "skipped", "EntrySynchronizationSkipped")}

    # T-CYC-2 at scale: 10 users changed ⇒ exactly 10 PATCHes carrying only the changed paths
    changed = sorted(exp.users)[:10]
    doc2 = copy.deepcopy(doc)
    want_paths: dict[str, list[tuple[str, str]]] = {}
    for i, uid in enumerate(changed):
        u = next(x for x in doc2["users"] if x["objectId"] == uid)
        u["displayName"] += " (changed)"
        paths = [("replace", "displayName")]
        if i % 2 == 0:
            u["city"] = "Gouda"
            paths.append(("replace", LOCALITY))
        want_paths[by_name[u["userPrincipalName"]]["id"]] = sorted(paths)
    h.write_directory(doc2)
    report = h.run()
    assert h.methods() == {"PATCH": 10}
    got = {c.path.rsplit("/", 1)[-1]: patch_paths(c) for c in h.writes()}
    assert got == want_paths
    assert sum(1 for r in report.records if r.action == "update" and r.status == "success") == 10
    exp2 = expected(doc2)
    by_name = assert_target_matches(h.tenant, exp2)
    gouda = {u["userPrincipalName"] for i, uid in enumerate(changed) if i % 2 == 0
             for u in [exp2.users[uid]]}
    assert {n for n, u in by_name.items() if (u.get("addresses") or [{}])[0].get("locality") == "Gouda"} >= gouda

    # T-DEP-1: unassign a directly assigned user (no assigned group holds it) ⇒ PATCH active=false, nothing else
    group_members = {m for g in exp2.groups.values() for m in g.get("members") or []}
    direct = sorted(u for u in doc2["assignments"]["users"] if u in exp2.users and u not in group_members)
    assert len(direct) == 3
    gone, deleted, kept_out = direct[0], direct[1], direct[2]
    doc3 = copy.deepcopy(doc2)
    doc3["assignments"]["users"].remove(gone)
    h.write_directory(doc3)
    report = h.run()
    assert h.methods() == {"PATCH": 1}
    (call,) = h.writes()
    gone_target = by_name[exp2.users[gone]["userPrincipalName"]]["id"]
    assert call.path.endswith(f"/Users/{gone_target}")
    assert json.loads(call.request_body or "{}")["Operations"] == [{"op": "replace", "path": "active",
                                                                     "value": False}]
    assert [(r.action, r.status) for r in report.records if r.source_id == gone] == [("disable", "success")]
    link = h.store.get_link("job", "User", gone)
    assert link is not None and link.state == "disabled"   # DEP-1 DECISION: the link is kept

    # T-DEP-2: hard delete in the source ⇒ DELETE, link removed
    doc4 = copy.deepcopy(doc3)
    doc4["users"] = [u for u in doc4["users"] if u["objectId"] != deleted]
    doc4["assignments"]["users"].remove(deleted)
    for g in doc4["groups"]:
        g["members"] = [m for m in g.get("members") or [] if m != deleted]
    h.write_directory(doc4)
    report = h.run()
    deleted_target = by_name[exp2.users[deleted]["userPrincipalName"]]["id"]
    assert h.methods() == {"DELETE": 1}
    assert h.writes()[0].path.endswith(f"/Users/{deleted_target}")
    assert [(r.action, r.status) for r in report.records if r.source_id == deleted] == [("delete", "success")]
    assert h.store.get_link("job", "User", deleted) is None
    with h.tenant.client() as c:
        assert c.get(f"/Users/{deleted_target}").status_code == 404

    # T-DEP-3: skip_out_of_scope_deletions ⇒ an unassignment sends nothing; a skipped record says why
    doc5 = copy.deepcopy(doc4)
    doc5["assignments"]["users"].remove(kept_out)
    h.write_directory(doc5)
    report = h.run(extra="skip_out_of_scope_deletions: true\n")
    assert h.writes() == []
    assert [(r.action, r.status, r.reason) for r in report.records if r.source_id == kept_out] == \
        [("other", "skipped", "OutOfScopeDeletionSkipped")]
    kept_link = h.store.get_link("job", "User", kept_out)
    assert kept_link is not None and kept_link.state == "active"

    # T-DRY-1: a mixed change set; the dry run sends only GETs and its plan is what the real cycle then does
    doc6 = copy.deepcopy(doc5)
    # kept_out is still unassigned: without skip_out_of_scope_deletions it is disabled now
    victims = sorted(exp2.users)[20:23]
    for uid in victims:
        next(x for x in doc6["users"] if x["objectId"] == uid)["mobile"] = "+31 6 0000 0000"
    newcomer = copy.deepcopy(doc["users"][0])
    newcomer.update(objectId="00000000-0000-4000-8000-000000000001", userPrincipalName="new.hire@contoso.example",
                    mailNickname="new.hire", displayName="New Hire", manager=sorted(exp2.users)[30])
    doc6["users"].append(newcomer)
    doc6["assignments"]["users"].append(newcomer["objectId"])
    h.write_directory(doc6)
    plan = h.run(dry_run=True)
    assert set(h.methods()) <= {"GET"}
    planned = actions(plan, "planned")
    assert planned == {("User", v, "update") for v in victims} | {("User", newcomer["objectId"], "create"),
                                                                  ("User", kept_out, "disable")}
    assert h.store.get_link("job", "User", newcomer["objectId"]) is None      # a plan writes no state
    real = h.run()
    assert {a for a in actions(real, "success") if a[2] != "other"} == planned
    # 3 updates + 1 disable; the new hire's manager exists, so it is in the POST (no follow-up PATCH, GRP-4)
    assert h.methods()["POST"] == 1 and h.methods()["PATCH"] == 4
    (post,) = [json.loads(c.request_body or "{}") for c in h.writes() if c.method == "POST"]
    assert post[ENT]["manager"]["value"] == h.store.get_link("job", "User", sorted(exp2.users)[30]).target_id
    assert not [r for r in real.records if r.status == "failure"]


def test_sample_directory_through_bulk(server: Server, tmp_path: Path, patient_bulk: list[BulkBatcher]) -> None:
    """The same sample directory with ``/Bulk`` (WIRE-4): the target ends up exactly as with single requests —
    users, managers, groups, memberships — in a fraction of the requests; then 10 changed users cost a few
    requests (their PATCHes share BulkRequests; one that arrives alone goes as the plain PATCH) and no read."""
    doc = json.loads(SAMPLE.read_text())
    exp = expected(doc)
    h = make_harness(server, tmp_path, "bulk", doc)
    h.use_bulk = "auto"
    report = h.run()
    assert report.kind == "initial" and not [r for r in report.records if r.status == "failure"]
    assert_target_matches(h.tenant, exp)
    with h.lock:
        posts = collections.Counter(c.path for c in h.calls if c.method == "POST")
    assert posts["/Bulk"] >= 1 and sum(posts.values()) < (len(exp.users) + len(exp.groups)) / 5
    changed = sorted(exp.users)[:10]
    doc2 = copy.deepcopy(doc)
    for uid in changed:
        next(x for x in doc2["users"] if x["objectId"] == uid)["displayName"] += " (bulk)"
    h.write_directory(doc2)
    report = h.run()
    assert {r.source_id for r in report.records if (r.action, r.status) == ("update", "success")} == set(changed)
    assert "GET" not in h.methods() and 1 <= len(h.writes()) <= 4
    assert [c.path for c in h.writes()].count("/Bulk") >= 1
    by_name = {u["userName"]: u for u in target_state(h.tenant)[0]}
    assert all(by_name[exp.users[u]["userPrincipalName"]]["displayName"].endswith(" (bulk)") for u in changed)


# -- the CLI, as subprocesses -------------------------------------------------------------------------------------
def scimgrip(*args: str, database: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCIMGRIP, *args, "--database", database], capture_output=True, text=True,
                          timeout=timeout)


def generate(path: Path, users: int, groups: int) -> dict[str, Any]:
    generate_file(path, users=users, groups=groups, seed=7)     # `python -m scimgrip.engine.sources.generate`
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_cli_job_sync_logs(server: Server, tmp_path: Path) -> None:
    doc = generate(tmp_path / "directory.json", 60, 4)
    exp = expected(doc)
    assert exp.users
    tenant = server.tenant("cli")
    (tmp_path / "job.yaml").write_text(job_yaml(tmp_path / "directory.json", tenant))
    db = f"sqlite:///{tmp_path / 'engine.db'}"
    created = scimgrip("job", "create", "hr", "--config", str(tmp_path / "job.yaml"), "--json", database=db)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout) == {"job": "hr", "status": "NotRun"}
    run = scimgrip("sync", "hr", "--once", "--json", database=db)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["kind"] == "initial"
    assert result["counts"].get("create:success") == len(exp.users) + len(exp.groups)
    assert "failure" not in json.dumps(result["counts"])
    assert_target_matches(tenant, exp)
    logs = scimgrip("logs", "hr", "--json", database=db)
    assert logs.returncode == 0, logs.stderr
    records = json.loads(logs.stdout)
    cycle = [r for r in records if r["cycleId"] == result["cycle_id"]]
    creates = [r for r in cycle if r["provisioningAction"] == "create"]
    assert len(creates) == len(exp.users) + len(exp.groups)
    assert {r["sourceIdentity"]["id"] for r in creates} == set(exp.users) | set(exp.groups)
    assert all([c["method"] for c in r["targetCalls"]].count("POST") == 1 for r in creates)
    change_ids = [r["changeId"] for r in cycle]
    assert len(change_ids) == len(set(change_ids))
    status = json.loads(scimgrip("job", "status", "hr", "--json", database=db).stdout)
    assert status["status"] == "Active" and status["users"] == len(exp.users)
    drift = scimgrip("sync", "hr", "--reconcile", "--json", database=db)
    assert drift.returncode == 0 and json.loads(drift.stdout) == [], drift.stdout + drift.stderr


def test_sigkill_mid_initial_cycle_then_rerun(server: Server, tmp_path: Path) -> None:
    """A ``scimgrip sync`` killed with SIGKILL half way through an initial cycle on a 2,000-user directory leaves
    created-but-unlinked objects and a held job lock; the next run takes the dead process's lock over, matches
    what exists (MAT-1) instead of creating it again, and finishes: every user exactly once, nothing lost."""
    doc = generate(tmp_path / "directory.json", 2000, 20)
    # keep the target work within the module's time budget: 150 users assigned directly, groups not pushed
    enabled = [u["objectId"] for u in doc["users"] if u.get("accountEnabled") is not False
               and not u.get("softDeleted")]
    doc["assignments"] = {"users": enabled[:150], "groups": []}
    (tmp_path / "directory.json").write_text(json.dumps(doc))
    exp = expected(doc)
    assert len(doc["users"]) == 2000 and len(exp.users) == 150
    tenant = server.tenant("killed")
    # single requests at a modest rate, so that the kill lands mid-cycle however fast the machine is (through /Bulk
    # the 150 creates are two requests)
    text = job_yaml(tmp_path / "directory.json", tenant, "object_mappings:\n  groups: {enabled: false}\n")
    text = text.replace("rate: {per_second: 5000, concurrency: 8}", "rate: {per_second: 60, concurrency: 2}, "
                        "use_bulk: never")
    assert "use_bulk: never" in text
    (tmp_path / "job.yaml").write_text(text)
    db = f"sqlite:///{tmp_path / 'engine.db'}"
    assert scimgrip("job", "create", "big", "--config", str(tmp_path / "job.yaml"), database=db).returncode == 0
    proc = subprocess.Popen([*SCIMGRIP, "sync", "big", "--once", "--quiet", "--database", db],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        with tenant.client() as c:
            while time.monotonic() < deadline:
                total = c.get("/Users", params={"count": 0}).json()["totalResults"]
                if total >= 40:
                    break
                assert proc.poll() is None, "the sync finished before it could be killed"
                time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    users, _ = target_state(tenant)
    assert 40 <= len(users) < len(exp.users), "killed mid-cycle"
    rerun = scimgrip("sync", "big", "--once", "--json", database=db, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    counts = json.loads(rerun.stdout)["counts"]
    assert "failure" not in json.dumps(counts)
    users, _ = target_state(tenant)
    names = [u["userName"] for u in users]
    assert len(names) == len(set(names)) == len(exp.users)
    assert set(names) == {u["userPrincipalName"] for u in exp.users.values()}
    store = open_engine_store(db)
    try:
        assert store.count_links("big", "User") == len(exp.users)
    finally:
        store.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_t_cyc_4_stop_during_a_cycle(server: Server, tmp_path: Path, signum: int) -> None:
    """T-CYC-4: ``scimgrip sync JOB`` (on its schedule, no ``--once``) stopped while its first cycle runs: the
    cycle finishes — every user provisioned, watermark stored — and no new cycle starts (the process exits
    instead of waiting for the next one)."""
    doc = generate(tmp_path / "directory.json", 400, 4)
    enabled = [u["objectId"] for u in doc["users"] if u.get("accountEnabled") is not False
               and not u.get("softDeleted")]
    doc["assignments"] = {"users": enabled[:120], "groups": []}
    (tmp_path / "directory.json").write_text(json.dumps(doc))
    exp = expected(doc)
    tenant = server.tenant(f"stop{int(signum)}")
    (tmp_path / "job.yaml").write_text(
        job_yaml(tmp_path / "directory.json", tenant, "object_mappings:\n  groups: {enabled: false}\n")
        .replace("per_second: 5000, concurrency: 8", "per_second: 60, concurrency: 2"))    # ~2 s of cycle
    db = f"sqlite:///{tmp_path / 'engine.db'}"
    assert scimgrip("job", "create", "stop", "--config", str(tmp_path / "job.yaml"), database=db).returncode == 0
    proc = subprocess.Popen([*SCIMGRIP, "sync", "stop", "--json", "--quiet", "--database", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        with tenant.client() as c:
            while (created := c.get("/Users", params={"count": 0}).json()["totalResults"]) < 10:
                assert time.monotonic() < deadline and proc.poll() is None, "the cycle never started"
                time.sleep(0.05)
        proc.send_signal(signum)
        assert created < 120, "the cycle had finished before the stop"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    cycles = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(cycles) == 1                                     # the running cycle only; no new one
    assert cycles[0]["counts"].get("create:success") == len(exp.users) == 120
    users, _ = target_state(tenant)
    assert len(users) == 120
    store = open_engine_store(db)
    try:
        job = store.get_job("stop")
        assert job is not None and job.watermark and job.last_cycle_id == cycles[0]["cycle_id"]
    finally:
        store.close()
