"""Races: concurrent requests spread over three worker processes (``--workers 3``), SQLite and PostgreSQL.

* parallel creates with one ``userName`` (in different case: the uniqueness is case-insensitive) → exactly one
  ``201``, the rest ``409 uniqueness``, one stored user;
* 100 parallel member adds/removes on one group → the final membership is exactly the expected set and the
  group's version grew by exactly 100 (no membership change lost, none double-counted);
* conflicting PATCHes with the same ``If-Match`` → one ``200``, the rest ``412``; a read-modify-write counter
  incremented from several threads with ``If-Match`` and retry-on-412 loses no increment;
* PUT against PATCH on the same user → the final state equals one of the two serial orders, never a mix.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest

from tests.reliability.conftest import NO_RATE_LIMIT, SCALE, Proc, Tenant, client, make_tenant, report, spawn

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
T = TypeVar("T")


@pytest.fixture(scope="module")
def env(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Tenant]]:
    tenant = make_tenant(database, "races")
    srv = spawn(database, tmp_path_factory.mktemp("races"), workers=3, env=NO_RATE_LIMIT)
    try:
        yield srv, tenant
    finally:
        srv.stop()


def parallel(n: int, fn: Callable[[int, httpx.Client], T], srv: Proc, tenant: Tenant) -> list[T]:
    """Run ``fn(i, client)`` for i in range(n) at once: one connection each (spread over the workers), released
    together by a barrier."""
    barrier = threading.Barrier(n)
    clients = [client(srv.base, tenant, timeout=120) for _ in range(n)]
    for c in clients:          # open the connections first, so the barrier releases requests, not handshakes
        c.get("/ServiceProviderConfig")

    def run(i: int) -> T:
        barrier.wait(timeout=60)
        return fn(i, clients[i])

    try:
        with ThreadPoolExecutor(n) as ex:
            return list(ex.map(run, range(n)))
    finally:
        for c in clients:
            c.close()


def new_user(c: httpx.Client, **attrs: Any) -> dict[str, Any]:
    r = c.post("/Users", json={"schemas": [USER], "userName": f"race-{secrets.token_hex(5)}", **attrs})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_parallel_creates_with_one_username(env: tuple[Proc, Tenant]) -> None:
    srv, tenant = env
    rounds, n = 3 * SCALE, 12
    for _ in range(rounds):
        name = f"Same.Name.{secrets.token_hex(4)}"
        variants = [name, name.lower(), name.upper()]

        def create(i: int, c: httpx.Client, variants: list[str] = variants) -> httpx.Response:
            return c.post("/Users", json={"schemas": [USER], "userName": variants[i % 3]})

        results = parallel(n, create, srv, tenant)
        codes = Counter(r.status_code for r in results)
        assert codes[201] == 1 and codes[409] == n - 1, codes
        assert all(r.json().get("scimType") == "uniqueness" for r in results if r.status_code == 409)
        with client(srv.base, tenant) as c:
            found = c.get("/Users", params={"filter": f'userName eq "{name.lower()}"'}).json()
        assert found["totalResults"] == 1, found
    report("races: creates with one userName", rounds=rounds, parallel=n, result="one 201 and 409s each round")


def test_parallel_member_adds_and_removes(env: tuple[Proc, Tenant]) -> None:
    srv, tenant = env
    n = 100
    with client(srv.base, tenant) as c:
        r = c.post("/Bulk", json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": f"u{i}",
             "data": {"schemas": [USER], "userName": f"race-{secrets.token_hex(5)}"}} for i in range(n)]})
        assert r.status_code == 200 and all(op["status"] == "201" for op in r.json()["Operations"]), r.text[:300]
        users = [op["location"].rsplit("/", 1)[1] for op in r.json()["Operations"]]
        keep, drop = users[:n // 2], users[n // 2:]
        r = c.post("/Groups", json={"schemas": [GROUP], "displayName": f"race-group-{secrets.token_hex(4)}",
                                    "members": [{"value": u} for u in drop]})
        assert r.status_code == 201, r.text
        gid, v0 = r.json()["id"], int(r.json()["meta"]["version"].split('"')[1])

    def op(i: int, c: httpx.Client) -> int:
        if i < n // 2:
            body = {"op": "add", "path": "members", "value": [{"value": keep[i]}]}
        else:
            body = {"op": "remove", "path": f'members[value eq "{drop[i - n // 2]}"]'}
        return c.patch(f"/Groups/{gid}", json={"schemas": [PATCH_OP], "Operations": [body]}).status_code

    codes = Counter(parallel(n, op, srv, tenant))
    assert set(codes) <= {200, 204}, codes
    with client(srv.base, tenant) as c:
        group = c.get(f"/Groups/{gid}").json()
    members = {m["value"] for m in group.get("members", [])}
    assert members == set(keep), f"lost: {len(set(keep) - members)}, stale: {len(members - set(keep))}"
    version = int(group["meta"]["version"].split('"')[1])
    assert version == v0 + n, f"version {version}, expected {v0 + n}: a membership change was lost or merged"
    report("races: member adds/removes", parallel=n, final_members=len(members), version_bumps=version - v0)


def test_if_match_conflicts_and_no_lost_update(env: tuple[Proc, Tenant]) -> None:
    srv, tenant = env
    n = 10
    with client(srv.base, tenant) as c:
        user = new_user(c, nickName="start", title="0")
    etag = user["meta"]["version"]
    tokens = [secrets.token_hex(6) for _ in range(n)]

    def conflicting(i: int, c: httpx.Client) -> httpx.Response:
        return c.patch(f"/Users/{user['id']}", headers={"If-Match": etag}, json={
            "schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "nickName", "value": tokens[i]}]})

    results = parallel(n, conflicting, srv, tenant)
    codes = Counter(r.status_code for r in results)
    assert codes[200] == 1 and codes[412] == n - 1, codes
    winner = tokens[[r.status_code for r in results].index(200)]
    with client(srv.base, tenant) as c:
        now = c.get(f"/Users/{user['id']}").json()
    assert now["nickName"] == winner

    # read-modify-write counter: every increment must survive
    threads, per_thread = 4, 6 * SCALE
    retries = Counter[int]()

    def increment(i: int, c: httpx.Client) -> None:
        done = 0
        while done < per_thread:
            cur = c.get(f"/Users/{user['id']}")
            value = int(cur.json()["title"])
            r = c.patch(f"/Users/{user['id']}", headers={"If-Match": cur.headers["etag"]}, json={
                "schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": str(value + 1)}]})
            if r.status_code == 412:
                retries[i] += 1
                continue
            assert r.status_code == 200, r.text
            done += 1

    parallel(threads, increment, srv, tenant)
    with client(srv.base, tenant) as c:
        final = int(c.get(f"/Users/{user['id']}").json()["title"])
    assert final == threads * per_thread, f"lost updates: counter {final}, expected {threads * per_thread}"
    report("races: If-Match", conflicting=n, winners=codes[200], precondition_failed=codes[412],
           counter=final, retries_on_412=sum(retries.values()))


def test_put_against_patch_is_one_serial_order(env: tuple[Proc, Tenant]) -> None:
    srv, tenant = env
    n = 10 * SCALE
    with client(srv.base, tenant) as c:
        users = [new_user(c, nickName="orig", title="orig", displayName="orig") for _ in range(n)]

    def race(i: int, c: httpx.Client) -> int:
        u = users[i // 2]
        if i % 2 == 0:
            return c.put(f"/Users/{u['id']}", json={"schemas": [USER], "userName": u["userName"],
                                                    "nickName": "P", "title": "P", "displayName": "P"}).status_code
        return c.patch(f"/Users/{u['id']}", json={"schemas": [PATCH_OP], "Operations": [
            {"op": "replace", "path": "nickName", "value": "Q"},
            {"op": "replace", "path": "title", "value": "Q"}]}).status_code

    codes = Counter(parallel(2 * n, race, srv, tenant))
    assert codes == Counter({200: 2 * n}), codes
    orders = Counter[str]()
    with client(srv.base, tenant) as c:
        for u in users:
            got = c.get(f"/Users/{u['id']}").json()
            state = (got.get("nickName"), got.get("title"), got.get("displayName"))
            assert state in {("Q", "Q", "P"), ("P", "P", "P")}, f"{u['id']}: {state} is no serial order"
            orders["PUT→PATCH" if state[0] == "Q" else "PATCH→PUT"] += 1
            v0 = int(u["meta"]["version"].split('"')[1])
            assert got["meta"]["version"] == f'W/"{v0 + 2}"', got["meta"]
    report("races: PUT vs PATCH", pairs=n, **{k: v for k, v in orders.items()})
