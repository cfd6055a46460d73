"""Crash durability: a write load against ``scimgrip serve``, SIGKILL at random moments, restart, check.

Each load thread owns its users and one group and has at most one request in flight, so after a crash the
expected state is exact up to that one request:

* every acknowledged (2xx) create exists afterwards; a create in flight exists at most once;
* every PATCH sets ``nickName`` and ``title`` to the same fresh token in one request: both or neither —
  afterwards each user's pair is equal and is the last acknowledged token or the one in flight;
* every acknowledged member add/remove is reflected in the group; only the member in flight may differ.

CI size: 3 rounds per backend (``SCIMGRIP_RELIABILITY_SCALE`` multiplies the rounds).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.reliability.conftest import NO_RATE_LIMIT, SCALE, Tenant, client, make_tenant, report, spawn

ROUNDS = 3 * SCALE
THREADS = 6
WORKERS = 2 if SCALE > 1 else 1   # the larger run kills a master and its workers
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"


@dataclass
class UserState:
    id: str
    token: str                      # last acknowledged nickName == title
    pending: str | None = None      # a PATCH in flight when the server died


@dataclass
class Lane:
    """One load thread's resources and what it knows was acknowledged."""

    n: int
    group_id: str
    users: dict[str, UserState] = field(default_factory=dict)
    members: set[str] = field(default_factory=set)
    maybe_created: list[tuple[str, str]] = field(default_factory=list)   # (userName, token) in flight
    maybe_member: tuple[str, str] | None = None                          # ("add"|"remove", user id) in flight
    seq: int = 0
    acked: dict[str, int] = field(default_factory=lambda: {"create": 0, "patch": 0, "add": 0, "remove": 0})


def _patch(nick: str) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "nickName", "value": nick},
                                                   {"op": "replace", "path": "title", "value": nick}]}


def _run_lane(c: httpx.Client, lane: Lane, rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        choice = rng.random()
        try:
            if choice < 0.35 or len(lane.users) < 3:
                lane.seq += 1
                name, tok = f"crash-{lane.n}-{lane.seq}-{secrets.token_hex(3)}", secrets.token_hex(8)
                lane.maybe_created = [(name, tok)]
                r = c.post("/Users", json={"schemas": [USER], "userName": name, "nickName": tok, "title": tok})
                assert r.status_code == 201, r.text
                lane.users[r.json()["id"]] = UserState(r.json()["id"], tok)
                lane.maybe_created = []
                lane.acked["create"] += 1
            elif choice < 0.7:
                u = lane.users[rng.choice(sorted(lane.users))]
                tok = secrets.token_hex(8)
                u.pending = tok
                r = c.patch(f"/Users/{u.id}", json=_patch(tok))
                assert r.status_code == 200, r.text
                u.token, u.pending = tok, None
                lane.acked["patch"] += 1
            else:
                outside = sorted(set(lane.users) - lane.members)
                if outside and (choice < 0.88 or not lane.members):
                    uid = rng.choice(outside)
                    lane.maybe_member = ("add", uid)
                    r = c.patch(f"/Groups/{lane.group_id}", json={"schemas": [PATCH_OP], "Operations": [
                        {"op": "add", "path": "members", "value": [{"value": uid}]}]})
                    assert r.status_code in (200, 204), r.text
                    lane.members.add(uid)
                    lane.acked["add"] += 1
                elif lane.members:
                    uid = rng.choice(sorted(lane.members))
                    lane.maybe_member = ("remove", uid)
                    r = c.patch(f"/Groups/{lane.group_id}", json={"schemas": [PATCH_OP], "Operations": [
                        {"op": "remove", "path": f'members[value eq "{uid}"]'}]})
                    assert r.status_code in (200, 204), r.text
                    lane.members.discard(uid)
                    lane.acked["remove"] += 1
                lane.maybe_member = None
        except httpx.TransportError:
            return          # the server is gone: this request's outcome is unknown


def _verify(c: httpx.Client, lanes: list[Lane]) -> dict[str, int]:
    """Check the restarted server against what was acknowledged; fold the in-flight outcomes into the state."""
    figures = {"users": 0, "inflight_create_applied": 0, "inflight_patch_applied": 0, "inflight_member_applied": 0}
    everyone: dict[str, dict[str, Any]] = {}
    start = 1
    while True:
        page = c.get("/Users", params={"startIndex": start, "count": 1000}).json()
        for u in page["Resources"]:
            everyone[u["id"]] = u
        if start + len(page["Resources"]) > page["totalResults"] or not page["Resources"]:
            break
        start += len(page["Resources"])
    for u in everyone.values():     # no half-applied PATCH anywhere
        assert u.get("nickName") == u.get("title"), f"half-applied PATCH on {u['id']}: {u}"
    known = {uid for lane in lanes for uid in lane.users}
    for lane in lanes:
        for u in lane.users.values():
            got = everyone.get(u.id)
            assert got is not None, f"acknowledged user {u.id} is missing after the crash"
            allowed = {u.token} | ({u.pending} if u.pending else set())
            assert got["nickName"] in allowed, f"user {u.id}: {got['nickName']!r} not in {allowed}"
            if u.pending and got["nickName"] == u.pending:
                figures["inflight_patch_applied"] += 1
            u.token, u.pending = got["nickName"], None
        for name, tok in lane.maybe_created:
            found = [x for x in everyone.values() if x["userName"] == name]
            assert len(found) <= 1, f"in-flight create of {name} stored {len(found)} times"
            if found:
                assert found[0]["nickName"] == tok
                lane.users[found[0]["id"]] = UserState(found[0]["id"], tok)
                known.add(found[0]["id"])
                figures["inflight_create_applied"] += 1
        lane.maybe_created = []
        group = c.get(f"/Groups/{lane.group_id}")
        assert group.status_code == 200, group.text
        actual = {m["value"] for m in group.json().get("members", [])}
        expected = set(lane.members)
        if lane.maybe_member is not None:
            kind, uid = lane.maybe_member
            alt = expected | {uid} if kind == "add" else expected - {uid}
            assert actual in (expected, alt), f"group {lane.group_id}: {sorted(actual ^ expected)} differ"
            figures["inflight_member_applied"] += int(actual == alt and alt != expected)
        else:
            assert actual == expected, f"group {lane.group_id}: members {sorted(actual ^ expected)} differ"
        lane.members, lane.maybe_member = actual, None
    assert set(everyone) == known, f"unexpected users after the crash: {sorted(set(everyone) - known)}"
    figures["users"] = len(everyone)
    return figures


def test_acknowledged_writes_survive_sigkill(database: str, tmp_path: Path) -> None:
    tenant: Tenant = make_tenant(database, "crash")
    rng = random.Random(secrets.randbits(32))
    srv = spawn(database, tmp_path, workers=WORKERS, env=NO_RATE_LIMIT)
    try:
        with client(srv.base, tenant) as c:
            lanes = []
            for n in range(THREADS):
                r = c.post("/Groups", json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                            "displayName": f"crash-group-{n}"})
                assert r.status_code == 201, r.text
                lanes.append(Lane(n, r.json()["id"]))
        totals = {"inflight_create_applied": 0, "inflight_patch_applied": 0, "inflight_member_applied": 0}
        kills = []
        for _ in range(ROUNDS):
            stop = threading.Event()
            clients = [client(srv.base, tenant, timeout=10) for _ in lanes]
            threads = [threading.Thread(target=_run_lane, args=(clients[i], lane, random.Random(rng.random()), stop))
                       for i, lane in enumerate(lanes)]
            for t in threads:
                t.start()
            at = rng.uniform(0.4, 1.5)
            time.sleep(at)
            srv.kill()                  # SIGKILL mid-load: master and workers, no shutdown
            kills.append(round(at, 2))
            stop.set()
            for t in threads:
                t.join(timeout=30)
            for cl in clients:
                cl.close()
            srv = spawn(database, tmp_path, workers=WORKERS, env=NO_RATE_LIMIT)
            with client(srv.base, tenant) as c:
                figures = _verify(c, lanes)
            for k in totals:
                totals[k] += figures[k]
    finally:
        srv.stop()
    acked = {k: sum(lane.acked[k] for lane in lanes) for k in ("create", "patch", "add", "remove")}
    report(f"crash ({database.split(':')[0]})", rounds=ROUNDS, kill_after_s=kills, acknowledged=acked,
           users_at_end=figures["users"], **totals)
    assert sum(acked.values()) > 0


class _Stub:
    """A stand-in for the restarted server: answers the verifier's list and group reads from dicts."""

    def __init__(self, users: list[dict[str, Any]], groups: dict[str, list[str]]) -> None:
        self.users, self.groups = users, groups

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        if path == "/Users":
            return httpx.Response(200, json={"totalResults": len(self.users), "Resources": self.users})
        gid = path.rsplit("/", 1)[1]
        return httpx.Response(200, json={"id": gid, "members": [{"value": m} for m in self.groups[gid]]})


def test_the_verifier_can_fail() -> None:
    """The checks are not vacuous: a lost write, a half-applied PATCH, a lost member change, a phantom user."""
    def lanes() -> list[Lane]:
        lane = Lane(0, "g1", users={"u1": UserState("u1", "t1", pending="t2")}, members={"u1"})
        return [lane]

    good = [{"id": "u1", "userName": "a", "nickName": "t2", "title": "t2"}]
    assert _verify(_Stub(good, {"g1": ["u1"]}), lanes())["inflight_patch_applied"] == 1   # type: ignore[arg-type]
    broken = {
        "lost user": ([], {"g1": ["u1"]}),
        "half-applied PATCH": ([{"id": "u1", "userName": "a", "nickName": "t2", "title": "t1"}], {"g1": ["u1"]}),
        "stale value": ([{"id": "u1", "userName": "a", "nickName": "t0", "title": "t0"}], {"g1": ["u1"]}),
        "lost member": (good, {"g1": []}),
        "phantom user": ([*good, {"id": "u9", "userName": "z", "nickName": "x", "title": "x"}], {"g1": ["u1"]}),
    }
    for what, (users, groups) in broken.items():
        try:
            _verify(_Stub(users, groups), lanes())  # type: ignore[arg-type]
        except AssertionError:
            continue
        raise AssertionError(f"the verifier missed: {what}")


def test_bulk_creates_survive_sigkill_right_after_the_response(database: str, tmp_path: Path) -> None:
    """A BulkRequest is one transaction, committed before the response is sent: SIGKILL the server the moment
    the response arrives, and every operation it acknowledged is there after the restart."""
    tenant: Tenant = make_tenant(database, "bulkcrash")
    names = [f"bulk-crash-{i}-{secrets.token_hex(3)}" for i in range(100)]
    srv = spawn(database, tmp_path, env=NO_RATE_LIMIT)
    try:
        with client(srv.base, tenant) as c:
            r = c.post("/Bulk", json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                                      "Operations": [{"method": "POST", "path": "/Users", "bulkId": f"b{i}",
                                                      "data": {"userName": n}} for i, n in enumerate(names)]})
            srv.kill()
        assert r.status_code == 200, r.text
        assert [o["status"] for o in r.json()["Operations"]] == ["201"] * len(names)
        srv = spawn(database, tmp_path, env=NO_RATE_LIMIT)
        with client(srv.base, tenant) as c:
            found = c.get("/Users", params={"filter": 'userName sw "bulk-crash-"', "count": 1000}).json()
        assert sorted(u["userName"] for u in found["Resources"]) == sorted(names)
    finally:
        srv.stop()
