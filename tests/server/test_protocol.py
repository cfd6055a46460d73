"""RFC 7644 behaviour beyond Entra's subset, against a real server: errors, limits, ETags, Bulk, search,
cursors, discovery, isolation, tokens and concurrency."""

from __future__ import annotations

import concurrent.futures as cf
import json
import uuid

import httpx
import pytest

from tests.server.conftest import Server, TenantHandle, cli, uid
from tests.server.test_entra_wire import ENT, ERROR, GROUP, PATCH, assert_scim, entra_user, patch

BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


def snapshot(client: httpx.Client) -> list[dict]:
    users = client.get("/Users", params={"count": 1000}).json()["Resources"]
    groups = client.get("/Groups", params={"count": 1000}).json()["Resources"]
    return sorted(users + groups, key=lambda r: r["id"])


# -- bad input: a SCIM 4xx with a useful detail, never a 5xx, nothing stored changes -------------------------------
BAD_BODIES: list[tuple[str, str, bytes, int, str | None]] = [
    ("POST", "/Users", b'{"userName": ', 400, "invalidSyntax"),
    ("POST", "/Users", b"\xff\xfe{}", 400, "invalidSyntax"),
    ("POST", "/Users", b'{"userName": "x\xc3\x28"}', 400, "invalidSyntax"),
    ("POST", "/Users", b"[]", 400, "invalidSyntax"),
    ("POST", "/Users", b"", 400, "invalidSyntax"),
    ("POST", "/Users", b'{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"]}', 400, "invalidValue"),
    ("POST", "/Users", b'{"userName": 42}', 400, "invalidValue"),
    ("POST", "/Users", b'{"userName": "a", "active": "maybe"}', 400, "invalidValue"),
    ("POST", "/Users", b'{"userName": "a", "emails": "x@y"}', 400, "invalidValue"),
    ("POST", "/Users", b'{"userName": "a", "favouriteColour": "blue"}', 400, "invalidValue"),
    ("POST", "/Users", b'{"userName": "a", "name": {"nope": 1}}', 400, "invalidValue"),
    ("POST", "/Groups", b'{"displayName": "g", "members": [{"value": "does-not-exist"}]}', 400, "invalidValue"),
    ("POST", "/Groups", b'{"displayName": "g", "members": "x"}', 400, "invalidValue"),
    ("POST", "/Users/.search", b'{"filter": 5}', 400, "invalidValue"),
    ("POST", "/Bulk", b'{"Operations": []}', 400, "invalidSyntax"),
]


@pytest.mark.parametrize(("method", "path", "raw", "status", "scim_type"), BAD_BODIES)
def test_bad_bodies_get_scim_errors_and_change_nothing(client: httpx.Client, method: str, path: str, raw: bytes,
                                                      status: int, scim_type: str | None) -> None:
    before = snapshot(client)
    r = client.request(method, path, content=raw)
    assert r.status_code == status, r.text
    assert_scim(r)
    err = r.json()
    assert err["schemas"] == [ERROR] and err["status"] == str(status) and err["detail"]
    if scim_type:
        assert err.get("scimType") == scim_type, err
    assert snapshot(client) == before


def test_bad_patches_change_nothing(client: httpx.Client) -> None:
    u = client.post("/Users", json=entra_user()).json()
    before = client.get(f"/Users/{u['id']}").json()
    bad = [
        {"Operations": [{"op": "replace", "path": "userName", "value": "x"}]},          # no schemas
        patch({"op": "frobnicate", "path": "userName", "value": "x"}),
        patch({"op": "replace", "path": "userName", "value": None}),
        patch({"op": "remove", "path": "userName"}),
        patch({"op": "replace", "path": "id", "value": "new"}),
        patch({"op": "replace", "path": "emails[type eq", "value": "x"}),
        patch({"op": "replace", "path": "active", "value": "perhaps"}),
        # atomic: first op fine, second broken → neither applied
        patch({"op": "replace", "path": "displayName", "value": "changed"},
              {"op": "replace", "path": "nosuchattr", "value": 1}),
    ]
    for body in bad:
        r = client.patch(f"/Users/{u['id']}", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["status"] == "400" and r.json()["detail"]
    assert client.get(f"/Users/{u['id']}").json() == before


@pytest.mark.parametrize("flt", [
    'userName eq', 'userName eq "x" and', '((((userName eq "x"', 'userName xx "x"', 'nosuch eq "x"',
    '"x" eq userName', 'userName eq "x"]', "(" * 40 + 'userName eq "x"' + ")" * 40,
    " or ".join(['userName eq "x"'] * 400), 'active gt true', 'name eq "x"', 'emails[value eq "x"',
])
def test_bad_filters_are_invalid_filter(client: httpx.Client, flt: str) -> None:
    r = client.get("/Users", params={"filter": flt})
    assert r.status_code == 400, r.text
    assert r.json()["scimType"] == "invalidFilter"


def test_filter_injection_is_just_a_value(client: httpx.Client) -> None:
    for flt in ['userName eq "x\\" or 1=1 --"', "userName eq \"x'); DROP TABLE resources;--\"",
                'userName co "%"', 'userName sw "_"']:
        r = client.get("/Users", params={"filter": flt})
        assert r.status_code == 200 and r.json()["totalResults"] == 0, (flt, r.text)
    assert client.get("/Users", params={"count": 0}).json()["totalResults"] > 0


def test_oversized_body_is_413(client: httpx.Client) -> None:
    r = client.post("/Users", content=b'{"userName": "' + b"a" * 2_000_000 + b'"}')
    assert r.status_code == 413
    assert_scim(r)
    assert r.json()["status"] == "413"


def test_too_many_patch_operations_is_413(client: httpx.Client) -> None:
    u = client.post("/Users", json=entra_user()).json()
    ops = [{"op": "replace", "path": "displayName", "value": str(i)} for i in range(1001)]
    r = client.patch(f"/Users/{u['id']}", json=patch(*ops))
    assert r.status_code == 413 and r.json()["status"] == "413"


def test_unknown_route_and_method_are_scim_errors(client: httpx.Client) -> None:
    r = client.get("/Widgets")
    assert r.status_code == 404 and r.json()["schemas"] == [ERROR]
    assert_scim(r)
    r = client.put("/Users")
    assert r.status_code == 405 and r.json()["status"] == "405"
    assert_scim(r)
    r = client.get("/Users/not-a-real-id")
    assert r.status_code == 404 and r.json()["detail"]


def test_me_is_501(client: httpx.Client) -> None:
    r = client.get("/Me")
    assert r.status_code == 501 and r.json()["status"] == "501"
    assert_scim(r)


# -- ETags ----------------------------------------------------------------------------------------------------------
def test_etags_if_match_and_if_none_match(client: httpx.Client) -> None:
    u = client.post("/Users", json=entra_user()).json()
    tag = u["meta"]["version"]
    r = client.get(f"/Users/{u['id']}", headers={"If-None-Match": tag})
    assert r.status_code == 304
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "replace", "path": "displayName", "value": "a"}),
                     headers={"If-Match": tag})
    assert r.status_code == 200
    new_tag = r.json()["meta"]["version"]
    assert new_tag != tag
    # the loser of a conflicting update gets 412 and changes nothing
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "replace", "path": "displayName", "value": "b"}),
                     headers={"If-Match": tag})
    assert r.status_code == 412 and r.json()["status"] == "412"
    assert client.get(f"/Users/{u['id']}").json()["displayName"] == "a"
    r = client.put(f"/Users/{u['id']}", json={**entra_user(u["userName"]), "displayName": "c"},
                   headers={"If-Match": tag})
    assert r.status_code == 412
    assert client.delete(f"/Users/{u['id']}", headers={"If-Match": tag}).status_code == 412
    assert client.delete(f"/Users/{u['id']}", headers={"If-Match": new_tag}).status_code == 204


def test_put_replaces_user(client: httpx.Client) -> None:
    u = client.post("/Users", json={**entra_user(), "title": "Boss", "nickName": "B"}).json()
    body = {"schemas": [u["schemas"][0]], "userName": u["userName"], "active": False, "title": "Worker"}
    r = client.put(f"/Users/{u['id']}", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["title"] == "Worker" and got["active"] is False and "nickName" not in got
    assert got["id"] == u["id"] and got["meta"]["created"] == u["meta"]["created"]


# -- search, sort, cursor -----------------------------------------------------------------------------------------
def test_post_search_and_sort(client: httpx.Client) -> None:
    tag = uid()
    for n in ("c", "a", "b"):
        client.post("/Users", json={**entra_user(f"{tag}-{n}@x.com"), "title": tag})
    r = client.post("/Users/.search", json={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "filter": f'title eq "{tag}"', "sortBy": "userName", "sortOrder": "descending",
        "attributes": ["userName"], "startIndex": 1, "count": 10})
    assert r.status_code == 200, r.text
    assert [x["userName"] for x in r.json()["Resources"]] == [f"{tag}-{n}@x.com" for n in ("c", "b", "a")]
    r = client.post("/.search", json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                                      "filter": f'userName sw "{tag}"'})
    assert r.status_code == 200 and r.json()["totalResults"] == 3


def test_cursor_pagination(client: httpx.Client) -> None:
    total = client.get("/Users", params={"count": 0}).json()["totalResults"]
    seen: list[str] = []
    r = client.get("/Users", params={"cursor": "", "count": 4}).json()
    pages = 0
    while True:
        pages += 1
        assert r["itemsPerPage"] == len(r["Resources"]) and "startIndex" not in r
        seen += [x["id"] for x in r["Resources"]]
        if "nextCursor" not in r:
            break
        r = client.get("/Users", params={"cursor": r["nextCursor"], "count": 4}).json()
    assert len(seen) == len(set(seen)) == total and pages >= 2
    bad = client.get("/Users", params={"cursor": "garbage!!", "count": 4})
    assert bad.status_code == 400 and bad.json()["scimType"] == "invalidCursor"


# -- bulk ---------------------------------------------------------------------------------------------------------
def test_bulk_with_bulkid_references(client: httpx.Client) -> None:
    name = f"bulk-{uid()}"
    r = client.post("/Bulk", json={"schemas": [BULK], "Operations": [
        {"method": "POST", "path": "/Groups", "bulkId": "g1",
         "data": {"schemas": [GROUP], "displayName": name, "members": [{"value": "bulkId:u1"}]}},
        {"method": "POST", "path": "/Users", "bulkId": "u1", "data": entra_user()},
        {"method": "PATCH", "path": "/Users/bulkId:u1",
         "data": patch({"op": "replace", "path": "title", "value": "via bulk"})},
        {"method": "POST", "path": "/Users", "bulkId": "bad", "data": {"userName": 7}},
    ]})
    assert r.status_code == 200, r.text
    ops = {o["bulkId"]: o for o in r.json()["Operations"] if "bulkId" in o}
    assert ops["u1"]["status"] == "201" and ops["g1"]["status"] == "201"
    assert ops["bad"]["status"] == "400" and ops["bad"]["response"]["scimType"] == "invalidValue"
    uid_ = ops["u1"]["location"].rsplit("/", 1)[1]
    gid = ops["g1"]["location"].rsplit("/", 1)[1]
    assert [m["value"] for m in client.get(f"/Groups/{gid}").json()["members"]] == [uid_]
    assert client.get(f"/Users/{uid_}").json()["title"] == "via bulk"


def test_bulk_duplicate_in_the_middle_fails_alone(client: httpx.Client) -> None:
    """One transaction per BulkRequest, one savepoint per operation: the 409 in the middle (which aborts a
    PostgreSQL transaction) is undone alone; the operations before and after it all commit (RFC 7644 §3.7)."""
    prefix = f"dup{uid()}-"
    names = [f"{prefix}{i}@example.com" for i in range(12)]
    names.insert(6, names[2].upper())                  # userName is caseExact false: a duplicate of #2
    ops: list[dict[str, object]] = [
        {"method": "POST", "path": "/Users", "bulkId": f"u{i}", "data": entra_user(n)}
        for i, n in enumerate(names)]
    ops.append({"method": "PATCH", "path": "/Users/bulkId:u7",
                "data": patch({"op": "replace", "path": "title", "value": "after the 409"})})
    r = client.post("/Bulk", json={"schemas": [BULK], "Operations": ops})
    assert r.status_code == 200, r.text
    results = r.json()["Operations"]
    assert [o["status"] for o in results] == ["201"] * 6 + ["409"] + ["201"] * 6 + ["200"]
    assert results[6]["response"]["scimType"] == "uniqueness"
    found = client.get("/Users", params={"filter": f'userName sw "{prefix}"', "count": 100}).json()
    assert sorted(u["userName"] for u in found["Resources"]) == sorted(names[:6] + names[7:])
    created = {o["bulkId"]: o["location"].rsplit("/", 1)[1] for o in results if o["status"] == "201"}
    assert client.get(f"/Users/{created['u7']}").json()["title"] == "after the 409"


# -- discovery ----------------------------------------------------------------------------------------------------
def test_discovery_documents(client: httpx.Client) -> None:
    spc = client.get("/ServiceProviderConfig").json()
    assert spc["patch"]["supported"] and spc["bulk"]["maxOperations"] == 1000
    assert spc["bulk"]["maxPayloadSize"] == 1_048_576 and spc["filter"]["maxResults"] == 1000
    assert spc["pagination"]["cursor"] is True
    schemas = client.get("/Schemas").json()
    ids = {s["id"] for s in schemas["Resources"]}
    assert {"urn:ietf:params:scim:schemas:core:2.0:User", GROUP, ENT} <= ids
    assert client.get(f"/Schemas/{ENT}").json()["id"] == ENT
    rts = client.get("/ResourceTypes").json()
    assert {r["name"] for r in rts["Resources"]} == {"User", "Group"}
    assert client.get("/ResourceTypes/User").json()["endpoint"] == "/Users"


# -- isolation and tokens -----------------------------------------------------------------------------------------
ROUTES = [
    ("GET", "/Users"), ("POST", "/Users"), ("GET", "/Users/{uid}"), ("PUT", "/Users/{uid}"),
    ("PATCH", "/Users/{uid}"), ("DELETE", "/Users/{uid}"), ("GET", "/Groups"), ("POST", "/Groups"),
    ("GET", "/Groups/{gid}"), ("PATCH", "/Groups/{gid}"), ("DELETE", "/Groups/{gid}"), ("POST", "/.search"),
    ("POST", "/Users/.search"), ("POST", "/Bulk"), ("GET", "/ServiceProviderConfig"), ("GET", "/Schemas"),
    ("GET", "/ResourceTypes"), ("GET", "/Me"),
]


def test_tenant_isolation_every_route(server: Server, acme: TenantHandle) -> None:
    other = server.tenant(f"other{uid()}")
    with other.client() as oc:
        ou = oc.post("/Users", json=entra_user()).json()["id"]
        og = oc.post("/Groups", json={"schemas": [GROUP], "displayName": "secret-group"}).json()["id"]
        before = snapshot(oc)
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {acme.token}"}) as c:
        for method, path in ROUTES:
            url = other.url + path.format(uid=ou, gid=og)
            r = c.request(method, url, json={"schemas": [PATCH], "Operations": []})
            assert r.status_code == 401, (method, path, r.status_code)
            assert "secret-group" not in r.text and ou not in r.text
            assert r.json()["status"] == "401"
    # B's ids through A's own URL: 404, never B's data
    with acme.client() as ac:
        for path in (f"/Users/{ou}", f"/Groups/{og}"):
            r = ac.get(path)
            assert r.status_code == 404 and "secret-group" not in r.text
        assert ac.delete(f"/Users/{ou}").status_code == 404
        assert ac.patch(f"/Groups/{og}", json=patch({"op": "replace", "path": "displayName", "value": "x"})
                        ).status_code == 404
        assert ac.get("/Groups", params={"filter": 'displayName eq "secret-group"'}).json()["totalResults"] == 0
    with other.client() as oc:
        assert snapshot(oc) == before


def test_missing_bad_revoked_expired_tokens(server: Server) -> None:
    t = server.tenant(f"tok{uid()}")
    with httpx.Client(timeout=10) as c:
        for headers in ({}, {"Authorization": "Basic Z3dhZG1pbjpwYXNzd29yZA=="},
                        {"Authorization": "Bearer " + "x" * 40}, {"Authorization": "Bearer"}):
            r = c.get(t.url + "/Users", headers=headers)
            assert r.status_code == 401 and r.json()["status"] == "401"
            assert_scim(r)
        r = c.get(t.url.replace(t.name, "no-such-tenant") + "/Users", headers={"Authorization": f"Bearer {t.token}"})
        assert r.status_code == 401
    # rotation: a second token works alongside the first; revoking one leaves the other
    second = json.loads(cli("token", "issue", t.name, "--json", database=server.database).stdout)
    with t.client() as c1, t.client(second["token"]) as c2:
        assert c1.get("/Users").status_code == 200 and c2.get("/Users").status_code == 200
        cli("token", "revoke", t.name, t.token_id, database=server.database)
        assert c1.get("/Users").status_code == 401
        assert c2.get("/Users").status_code == 200
    expired = json.loads(cli("token", "issue", t.name, "--expires-in", "0.0000001", "--json",
                             database=server.database).stdout)
    with t.client(expired["token"]) as c3:
        assert c3.get("/Users").status_code == 401
    listed = json.loads(cli("token", "list", t.name, "--json", database=server.database).stdout)
    statuses = {x["id"]: x["status"] for x in listed}
    assert statuses[t.token_id] == "revoked" and statuses[second["id"]] == "active"
    assert statuses[expired["id"]] == "expired"
    assert all("token" not in x for x in listed)


# -- concurrency ----------------------------------------------------------------------------------------------------
def test_concurrent_creates_same_username_exactly_one_wins(acme: TenantHandle) -> None:
    name = f"race-{uuid.uuid4()}@x.com"

    def create(i: int) -> int:
        with acme.client() as c:
            return c.post("/Users", json=entra_user(name if i % 2 else name.upper())).status_code

    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(create, range(8)))
    assert sorted(codes) == [201] + [409] * 7, codes


def test_concurrent_member_adds_and_removes_all_stick(acme: TenantHandle) -> None:
    with acme.client() as c:
        users = [c.post("/Users", json=entra_user()).json()["id"] for _ in range(40)]
        gid = c.post("/Groups", json={"schemas": [GROUP], "displayName": f"race-{uid()}",
                                      "members": [{"value": u} for u in users[:20]]}).json()["id"]

    def work(i: int) -> int:
        with acme.client() as c:
            if i < 20:   # remove the first 20, one PATCH each (Entra default form)
                body = patch({"op": "Remove", "path": "members", "value": [{"value": users[i]}]})
            else:        # add the other 20
                body = patch({"op": "Add", "path": "members", "value": [{"value": users[i]}]})
            return c.patch(f"/Groups/{gid}", json=body).status_code

    with cf.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(work, range(40)))
    assert set(codes) == {204}, codes
    with acme.client() as c:
        members = {m["value"] for m in c.get(f"/Groups/{gid}").json()["members"]}
    assert members == set(users[20:])


def test_request_log_records_requests(server: Server, acme: TenantHandle) -> None:
    # the writer flushes in the background; the server's own storage is read through the CLI-less path
    import time

    from scimgrip.storage import open_storage

    with acme.client() as c:
        c.get("/Users", params={"filter": 'userName eq "logged"'})
        c.post("/Users", json={**entra_user(), "password": "hunter2-secret"})
        assert c.get("/Users", params={"filter": 'userName zz "x"'}).status_code == 400   # fails after auth
        assert c.patch("/Users/no-such-user", json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                                    "Operations": []}).status_code in (400, 404)
    time.sleep(1.0)
    storage = open_storage(server.database)
    try:
        tenant = storage.get_tenant("acme")
        assert tenant is not None
        rows = storage.list_request_log(tenant.id, limit=50)
    finally:
        storage.close()
    assert any(r["method"] == "GET" and "logged" in r["path"] for r in rows)
    posts = [r for r in rows if r["method"] == "POST" and r["status"] == 201]
    assert posts and all("hunter2-secret" not in (r["request_body"] or "") for r in rows)
    # failures of an authenticated request are the debugger's main material: they are logged too
    bad = [r for r in rows if "zz" in r["path"]]
    assert bad and bad[0]["status"] == 400 and "invalidFilter" in (bad[0]["response_body"] or "")
    assert any(r["method"] == "PATCH" and r["status"] >= 400 and r["detail"] for r in rows)
    assert all(acme.token not in json.dumps(r, default=str) for r in rows)
