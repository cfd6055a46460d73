"""Entra's wire behaviour end to end (entra-scim-wire.md), against a real server on loopback.

Both Entra modes are exercised: the default dialect (capitalised ops, "False" strings, remove-members with a
value list) and the ``?aadOptscim062020`` flag mode (lower-case ops, path-less replace with dotted keys,
``members[value eq "…"]``). Every response must be ``application/scim+json`` with RFC shapes.
"""

from __future__ import annotations

import uuid

import httpx

from tests.server.conftest import TenantHandle, uid

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def assert_scim(resp: httpx.Response) -> None:
    assert resp.headers["content-type"].startswith("application/scim+json"), resp.headers


def entra_user(name: str | None = None) -> dict:
    """TUT 'Create User' request, verbatim shape (meta, roles: [], enterprise URN without attributes)."""
    n = name or f"Test_User_{uuid.uuid4()}"
    return {
        "schemas": [USER, ENT],
        "externalId": str(uuid.uuid4()),
        "userName": n,
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": f"{n}@testuser.com"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": [],
    }


def patch(*ops: dict) -> dict:
    return {"schemas": [PATCH], "Operations": list(ops)}


def test_test_connection_form_encoded_filter_returns_empty_list(client: httpx.Client) -> None:
    # entra-scim-wire.md §3: exact wire form, '+' for spaces, %22 for quotes; never 404.
    r = client.get(f"/Users?filter=userName+eq+%22{uuid.uuid4()}%22")
    assert r.status_code == 200, r.text
    assert_scim(r)
    body = r.json()
    assert body["schemas"] == [LIST]
    assert body["totalResults"] == 0 and body["Resources"] == [] and body["startIndex"] == 1
    assert body["itemsPerPage"] == 0


def test_feature_flag_query_parameter_is_ignored(acme: TenantHandle) -> None:
    # The admin appends ?aadOptscim062020 to the Tenant URL; Entra then calls <url>?flag/Users… or Users?flag&…
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {acme.token}"}) as c:
        r = c.get(f"{acme.url}/Users?aadOptscim062020&filter=externalId+eq+%22{uuid.uuid4()}%22")
        assert r.status_code == 200 and r.json()["totalResults"] == 0
        r = c.get(f"{acme.url}/Groups?aadOptscim062020&excludedAttributes=members&filter=displayName+eq+%22x%22")
        assert r.status_code == 200


def test_trailing_slash_tenant_url(acme: TenantHandle) -> None:
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {acme.token}"}) as c:
        r = c.get(f"{acme.url}//Users?filter=userName+eq+%22nobody%22")
        assert r.status_code == 200 and r.json()["totalResults"] == 0


def test_create_user_as_tut_then_read_filter_and_conflict(client: httpx.Client) -> None:
    body = entra_user()
    r = client.post("/Users", json=body)
    assert r.status_code == 201, r.text
    assert_scim(r)
    u = r.json()
    assert u["id"] and u["externalId"] == body["externalId"] and u["userName"] == body["userName"]
    assert u["meta"]["resourceType"] == "User" and u["meta"]["created"] and u["meta"]["lastModified"]
    assert u["meta"]["location"].endswith(f"/Users/{u['id']}")
    assert r.headers["location"] == u["meta"]["location"]
    assert r.headers["etag"] == u["meta"]["version"]
    assert u["emails"] == body["emails"] and u["name"] == body["name"] and u["active"] is True
    assert "roles" not in u  # an empty list is unassigned (RFC 7643 §2.4)

    # GET by id; filter by userName in another case (caseExact false), externalId, work email
    assert client.get(f"/Users/{u['id']}").json()["userName"] == body["userName"]
    for flt in (f'userName eq "{body["userName"].upper()}"',
                f'externalId eq "{body["externalId"]}"',
                f'emails[type eq "work"].value eq "{body["emails"][0]["value"]}"'):
        res = client.get("/Users", params={"filter": flt}).json()
        assert res["totalResults"] == 1 and res["Resources"][0]["id"] == u["id"], flt
    # externalId is case-exact
    res = client.get("/Users", params={"filter": f'externalId eq "{body["externalId"].upper()}"'}).json()
    assert res["totalResults"] == 0

    dup = client.post("/Users", json={**entra_user(body["userName"].lower())})
    assert dup.status_code == 409
    assert_scim(dup)
    err = dup.json()
    assert err["schemas"] == [ERROR] and err["status"] == "409" and err["scimType"] == "uniqueness"
    assert err["detail"]


def test_default_mode_patch_dialect(client: httpx.Client) -> None:
    u = client.post("/Users", json=entra_user()).json()
    r = client.patch(f"/Users/{u['id']}", json=patch(
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "updatedEmail@microsoft.com"},
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
    ))
    assert r.status_code == 200, r.text
    assert_scim(r)
    got = r.json()
    assert [e["value"] for e in got["emails"]] == ["updatedEmail@microsoft.com"]
    assert got["name"]["familyName"] == "updatedFamilyName" and got["name"]["givenName"] == "givenName"
    assert got["meta"]["version"] != u["meta"]["version"]

    # single-valued replace of userName
    new_name = f"{uuid.uuid4()}@testuser.com"
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "Replace", "path": "userName", "value": new_name}))
    assert r.json()["userName"] == new_name

    # disable with the string "False" (COMPAT default mode) → JSON boolean false; re-enable "True"
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "Replace", "path": "active", "value": "False"}))
    assert r.status_code == 200 and r.json()["active"] is False
    # disabled users stay readable and filterable (TUT)
    assert client.get(f"/Users/{u['id']}").json()["active"] is False
    assert client.get("/Users", params={"filter": f'userName eq "{new_name}"'}).json()["totalResults"] == 1
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "Replace", "path": "active", "value": "True"}))
    assert r.json()["active"] is True
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "replace", "path": "active", "value": "false"}))
    assert r.json()["active"] is False

    # Add on an existing work email is an upsert, never a second work email
    r = client.patch(f"/Users/{u['id']}", json=patch(
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "again@microsoft.com"}))
    works = [e for e in r.json()["emails"] if e.get("type") == "work"]
    assert [e["value"] for e in works] == ["again@microsoft.com"]

    # Add a single-valued string and an extension attribute by URN path
    r = client.patch(f"/Users/{u['id']}", json=patch(
        {"op": "Add", "path": "nickName", "value": "Babs"},
        {"op": "Add", "path": f"{ENT}:employeeNumber", "value": "E-1"},
    ))
    assert r.json()["nickName"] == "Babs" and r.json()[ENT]["employeeNumber"] == "E-1"
    assert ENT in r.json()["schemas"]


def test_flag_mode_pathless_replace_with_dotted_and_urn_keys(client: httpx.Client) -> None:
    u = client.post("/Users", json=entra_user()).json()
    r = client.patch(f"/Users/{u['id']}", json=patch(
        {"op": "replace", "path": 'emails[type eq "work"].value', "value": "flag@contoso.com"},
        {"op": "replace", "value": {"displayName": "Bjfe", "name.givenName": "Kkom", "name.familyName": "Unua",
                                    f"{ENT}:employeeNumber": "Aklq"}},
    ))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["displayName"] == "Bjfe"
    assert got["name"]["givenName"] == "Kkom" and got["name"]["familyName"] == "Unua"
    assert got[ENT]["employeeNumber"] == "Aklq"
    assert "name.givenName" not in got and f"{ENT}:employeeNumber" not in got
    assert got["emails"][0]["value"] == "flag@contoso.com"


def test_add_work_email_when_user_has_none_creates_it(client: httpx.Client) -> None:
    body = entra_user()
    del body["emails"]
    u = client.post("/Users", json=body).json()
    for op in ("Add", "Replace"):
        r = client.patch(f"/Users/{u['id']}", json=patch(
            {"op": op, "path": 'emails[type eq "work"].value', "value": f"{op}@contoso.com"}))
        assert r.status_code == 200, r.text
        assert r.json()["emails"] == [{"type": "work", "value": f"{op}@contoso.com"}]


def test_manager_bare_string_in_post_and_patch_returned_as_object(client: httpx.Client) -> None:
    boss = client.post("/Users", json=entra_user()).json()
    body = entra_user()
    body[ENT] = {"manager": boss["id"], "employeeNumber": "42"}
    r = client.post("/Users", json=body)
    assert r.status_code == 201, r.text
    u = r.json()
    assert u[ENT]["manager"] == {"value": boss["id"]} and u[ENT]["employeeNumber"] == "42"

    other = client.post("/Users", json=entra_user()).json()
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "Add", "path": f"{ENT}:manager", "value": other["id"]}))
    assert r.json()[ENT]["manager"] == {"value": other["id"]}
    # historical TUT form: list of objects with $ref
    r = client.patch(f"/Users/{u['id']}", json=patch(
        {"op": "Replace", "path": f"{ENT}:manager", "value": [{"$ref": None, "value": boss["id"]}]}))
    assert r.json()[ENT]["manager"] == {"value": boss["id"]}
    # clear: Replace with "" (LOGICAPP test 25)
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "Replace", "path": f"{ENT}:manager", "value": ""}))
    assert "manager" not in r.json().get(ENT, {})
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "Add", "path": f"{ENT}:manager", "value": boss["id"]}))
    r = client.patch(f"/Users/{u['id']}", json=patch({"op": "Remove", "path": f"{ENT}:manager"}))
    assert "manager" not in r.json().get(ENT, {})


def test_group_lifecycle_default_mode(client: httpx.Client) -> None:
    users = [client.post("/Users", json=entra_user()).json()["id"] for _ in range(4)]
    name = f"group-{uid()}"
    r = client.post("/Groups", json={
        "schemas": [GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
        "externalId": str(uuid.uuid4()), "displayName": name, "meta": {"resourceType": "Group"}})
    assert r.status_code == 201, r.text
    assert_scim(r)
    g = r.json()
    assert g["members"] == [] and g["displayName"] == name and g["schemas"] == [GROUP]

    r = client.get(f"/Groups/{g['id']}", params={"excludedAttributes": "members"})
    assert r.status_code == 200 and "members" not in r.json()
    res = client.get("/Groups", params={"excludedAttributes": "members", "filter": f'displayName eq "{name}"'})
    assert res.json()["totalResults"] == 1 and "members" not in res.json()["Resources"][0]

    r = client.patch(f"/Groups/{g['id']}", json=patch(
        {"op": "Add", "path": "members", "value": [{"$ref": None, "value": u} for u in users]}))
    assert r.status_code == 204, r.text
    # repeating an Add never duplicates
    client.patch(f"/Groups/{g['id']}", json=patch({"op": "Add", "path": "members", "value": [{"value": users[0]}]}))
    members = {m["value"] for m in client.get(f"/Groups/{g['id']}").json()["members"]}
    assert members == set(users)

    # Entra default remove: path "members" with a value list removes exactly those
    r = client.patch(f"/Groups/{g['id']}", json=patch(
        {"op": "Remove", "path": "members", "value": [{"$ref": None, "value": users[0]}]}))
    assert r.status_code == 204
    members = {m["value"] for m in client.get(f"/Groups/{g['id']}").json()["members"]}
    assert members == set(users[1:])
    # flag mode remove
    client.patch(f"/Groups/{g['id']}", json=patch({"op": "remove", "path": f'members[value eq "{users[1]}"]'}))
    members = {m["value"] for m in client.get(f"/Groups/{g['id']}").json()["members"]}
    assert members == set(users[2:])
    # filter groups by member
    res = client.get("/Groups", params={"filter": f'members[value eq "{users[2]}"]',
                                        "excludedAttributes": "members"}).json()
    assert [x["id"] for x in res["Resources"]] == [g["id"]]

    # rename
    r = client.patch(f"/Groups/{g['id']}", json=patch(
        {"op": "Replace", "path": "displayName", "value": f"{name}updatedDisplayName"}))
    assert r.status_code == 204
    assert client.get(f"/Groups/{g['id']}").json()["displayName"] == f"{name}updatedDisplayName"

    # user shows its groups
    assert [x["value"] for x in client.get(f"/Users/{users[2]}").json()["groups"]] == [g["id"]]

    # delete the group: 204, then 404
    assert client.delete(f"/Groups/{g['id']}").status_code == 204
    r = client.get(f"/Groups/{g['id']}")
    assert r.status_code == 404 and r.json()["status"] == "404"


def test_okta_group_push_and_replace_members_empty(client: httpx.Client) -> None:
    users = [client.post("/Users", json=entra_user()).json()["id"] for _ in range(3)]
    r = client.post("/Groups", json={"schemas": [GROUP], "displayName": f"okta-{uid()}",
                                     "members": [{"value": u, "display": "x"} for u in users[:2]]})
    assert r.status_code == 201
    g = r.json()
    assert {m["value"] for m in g["members"]} == set(users[:2])
    client.patch(f"/Groups/{g['id']}", json=patch({"op": "add", "path": "members", "value": [{"value": users[2]}]}))
    assert len(client.get(f"/Groups/{g['id']}").json()["members"]) == 3
    r = client.patch(f"/Groups/{g['id']}", json=patch({"op": "replace", "path": "members", "value": []}))
    assert r.status_code == 204
    assert client.get(f"/Groups/{g['id']}").json()["members"] == []


def test_delete_user_then_404_and_filters_forget_it(client: httpx.Client) -> None:
    body = entra_user()
    u = client.post("/Users", json=body).json()
    assert client.delete(f"/Users/{u['id']}").status_code == 204
    r = client.get(f"/Users/{u['id']}")
    assert r.status_code == 404
    assert_scim(r)
    assert r.json()["status"] == "404"
    assert client.get("/Users", params={"filter": f'userName eq "{body["userName"]}"'}).json()["totalResults"] == 0
    assert client.delete(f"/Users/{u['id']}").status_code == 404


def test_paging_itemsperpage_exact(client: httpx.Client) -> None:
    for _ in range(3):
        client.post("/Users", json=entra_user())
    total = client.get("/Users", params={"count": 0}).json()["totalResults"]
    assert total >= 3
    r = client.get("/Users", params={"startIndex": 1, "count": 2}).json()
    assert r["itemsPerPage"] == 2 == len(r["Resources"]) and r["startIndex"] == 1 and r["totalResults"] == total
    seen: list[str] = []
    start = 1
    while start <= total:
        page = client.get("/Users", params={"startIndex": start, "count": 5}).json()
        assert page["startIndex"] == start
        seen += [x["id"] for x in page["Resources"]]
        start += 5
    assert len(seen) == len(set(seen)) == total


def test_attributes_projection(client: httpx.Client) -> None:
    u = client.post("/Users", json=entra_user()).json()
    r = client.get(f"/Users/{u['id']}", params={"attributes": "userName,emails"}).json()
    assert set(r) == {"schemas", "id", "userName", "emails"}
    r = client.get(f"/Users/{u['id']}", params={"excludedAttributes": "emails,name"}).json()
    assert "emails" not in r and "name" not in r and r["userName"] == u["userName"]
