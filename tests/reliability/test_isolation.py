"""Tenant isolation for every route and method of the app.

The routes are enumerated from ``create_app(...).routes``, so a route added later (the events API already is)
is covered without touching this file. For each route and method:

1. tenant A's token on tenant B's URL (with B's ids) → the same status and body as on a tenant that does not
   exist (401/404): nothing about B, not even that it exists;
2. A's token on A's URL with B's ids (in the path and in the body) → the same answer as for random ids that
   exist nowhere (404 for a resource route);
3. no token on B's URL → 401;
4. routes outside a tenant URL (events API, health, OpenAPI): A's SCIM token and A's events API key, naming B
   (``?tenant=``) → the same answer as naming a tenant that does not exist.

The browser-facing sub-applications (``/console``, ``/sso``, ``/app``, mounted by ``web.install``) are flattened
into the same list. Without a session a bearer token means nothing to them, so for them check 1 (and 3, with no
credentials) asks that B's URL answers exactly like a missing tenant's — a redirect to sign-in, a refusal page —
and reveals nothing; signed-in isolation (an IT admin of A with B's ids → 404) is tests/console and tests/web.

No response body may contain any of B's ids, names, values, extension schema or token, and B's data must be
unchanged at the end.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route

from scimgrip.server.app import create_app
from scimgrip.storage import open_storage
from tests.reliability.conftest import NO_RATE_LIMIT, Proc, Tenant, cli, client, make_tenant, report, spawn

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
NOSUCH = "nosuchtenant"


BROWSER_MODULES = ("scimgrip.web.", "scimgrip.console.")


def _flatten(routes: list[BaseRoute], prefix: str = "", browser: bool = False) -> Iterator[tuple[str, str, set[str],
                                                                                                 bool]]:
    for route in routes:
        if isinstance(route, Mount):
            if route.routes:           # a sub-application; a mount without routes serves static files
                yield from _flatten(list(route.routes), prefix + route.path, True)
            continue
        assert isinstance(route, Route), f"unexpected route type {type(route).__name__}: extend this test"
        module = getattr(route.endpoint, "__module__", "") or ""
        is_browser = browser or module.startswith(BROWSER_MODULES)
        for method in sorted(route.methods or ()):
            yield prefix + route.path, method, set(route.param_convertors), is_browser


def app_routes(tmp: Path) -> list[tuple[str, str, set[str], bool]]:
    """(path template, method, path parameter names, browser-facing?) for every route and method of the app."""
    storage = open_storage(f"sqlite:///{tmp / 'routes.db'}")
    try:
        app = create_app(storage)
        return list(_flatten(list(app.routes)))
    finally:
        storage.close()


@dataclass
class World:
    srv: Proc
    a: Tenant
    b: Tenant
    a_key: str
    b_user: dict[str, Any]
    b_group: dict[str, Any]
    b_ext: str
    secrets: list[str]


@pytest.fixture(scope="module")
def world(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("iso")
    a, b = make_tenant(database, "alpha"), make_tenant(database, "bravo")
    tag = secrets.token_hex(4)
    b_ext = f"urn:example:params:scim:schemas:extension:bravo{tag}:2.0:User"
    (tmp / "ext.json").write_text(json.dumps({"id": b_ext, "name": f"BravoSecret{tag}", "attributes": [
        {"name": "clearance", "type": "string"}]}))
    cli("tenant", "extend", b.name, str(tmp / "ext.json"), database=database)
    a_key = json.loads(cli("apikey", "create", "--tenant", a.name, "--json", database=database).stdout)["key"]
    # hundreds of deliberate 401s from one address: the bad-token throttle (test_abuse.py) would answer 429
    srv = spawn(database, tmp, env={**NO_RATE_LIMIT, "SCIMGRIP_AUTH_FAILURE_LIMIT": "0"})
    with client(srv.base, b) as cb, client(srv.base, a) as ca:
        r = cb.post("/Users", json={"schemas": [USER, b_ext], "userName": f"bravo-secret-{tag}@b.example",
                                    "externalId": f"bravo-ext-{tag}", "displayName": f"Bravo Secret {tag}",
                                    "emails": [{"value": f"hidden-{tag}@b.example", "type": "work"}],
                                    b_ext: {"clearance": f"topsecret{tag}"}})
        assert r.status_code == 201, r.text
        b_user = r.json()
        r = cb.post("/Groups", json={"schemas": [GROUP], "displayName": f"bravo-group-{tag}",
                                     "members": [{"value": b_user["id"]}]})
        assert r.status_code == 201, r.text
        b_group = cb.get(f"/Groups/{r.json()['id']}").json()
        assert ca.post("/Users", json={"schemas": [USER], "userName": f"alpha-{tag}"}).status_code == 201
    words = [b_user["id"], b_group["id"], f"bravo-secret-{tag}", f"bravo-ext-{tag}", f"Bravo Secret {tag}",
             f"hidden-{tag}", f"bravo-group-{tag}", b_ext, f"BravoSecret{tag}", f"topsecret{tag}", b.token,
             b.token_id]
    try:
        yield World(srv, a, b, a_key, b_user, b_group, b_ext, words)
    finally:
        srv.stop()


def fill(template: str, tenant: str, ids: dict[str, str]) -> str:
    """The path with ``{tenant}`` and ``{id}`` (any other parameter: the user id) filled in."""
    out = template.replace("{tenant}", tenant)
    kind = "group" if "/Groups/" in template else "schema" if "/Schemas/" in template else "user"
    while "{" in out:
        start, end = out.index("{"), out.index("}")
        out = out[:start] + ids[kind] + out[end + 1:]
    return out


def body_for(template: str, method: str, ids: dict[str, str], n: int) -> Any:
    """A plausible body for ``method`` on ``template`` that names the given ids wherever it can."""
    if method not in ("POST", "PUT", "PATCH"):
        return None
    if template.endswith(".search"):
        return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "filter": f'id eq "{ids["user"]}" or id eq "{ids["group"]}"'}
    if template.endswith("/Bulk"):
        return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": [
            {"method": "PATCH", "path": f"/Groups/{ids['group']}", "data": {"schemas": [PATCH_OP], "Operations": [
                {"op": "replace", "path": "displayName", "value": "pwned"}]}},
            {"method": "PUT", "path": f"/Users/{ids['user']}", "data": {"schemas": [USER], "userName": "pwned"}},
            {"method": "DELETE", "path": f"/Users/{ids['user']}"}]}
    if method == "PATCH":
        return {"schemas": [PATCH_OP], "Operations": [
            {"op": "replace", "path": "displayName", "value": "pwned"},
            {"op": "add", "path": "members", "value": [{"value": ids["user"]}]}]}
    if "/Groups" in template:
        return {"schemas": [GROUP], "displayName": f"probe-group-{n}", "members": [{"value": ids["user"]}]}
    return {"schemas": [USER], "userName": f"probe-{n}-{secrets.token_hex(3)}", "externalId": ids["user"]}


def call(c: httpx.Client, method: str, url: str, body: Any) -> httpx.Response:
    return c.request(method, url, content=json.dumps(body).encode() if body is not None else None)


def shape(r: httpx.Response, subs: dict[str, str]) -> tuple[int, Any]:
    """Status and, for errors, the body with the substituted values replaced by their placeholders."""
    text = r.text
    for value, placeholder in subs.items():
        text = text.replace(value, placeholder)
    if r.status_code >= 400 and text:
        return r.status_code, text
    if r.request.url.path.endswith("/Bulk") and r.status_code == 200:
        return r.status_code, [op.get("status") for op in r.json().get("Operations", [])]
    return r.status_code, None


def assert_reveals_nothing(r: httpx.Response, world: World, what: str, allowed: tuple[str, ...] = ()) -> None:
    text = r.text.lower()
    leaked = [w for w in world.secrets if w.lower() in text and w not in allowed]
    assert not leaked, f"{what}: response {r.status_code} reveals {leaked}: {r.text[:300]}"


def test_every_route_and_method_is_isolated(world: World, tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert any("/Users/{id}" in p for p, _, _, _ in routes) and len(routes) >= 30, routes
    assert any(p.startswith("/console/t/{tenant}") for p, _, _, _ in routes), "the console is not enumerated"
    b_ids = {"user": world.b_user["id"], "group": world.b_group["id"], "schema": world.b_ext}
    fake = {"user": secrets.token_hex(16), "group": secrets.token_hex(16),
            "schema": "urn:example:params:scim:schemas:extension:nobody:2.0:User"}
    subs_ids = {b_ids[k]: f"<{k}>" for k in b_ids} | {fake[k]: f"<{k}>" for k in fake}
    a = client(world.srv.base, world.a)
    anon = httpx.Client(timeout=30, headers={"Content-Type": "application/scim+json"})
    key = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {world.a_key}"})
    base = world.srv.base
    tried = 0
    try:
        for n, (template, method, params, browser) in enumerate(routes):
            what = f"{method} {template}"
            if browser:
                # no session: B's URL must answer like a missing tenant's, with A's token or without one
                for who, c in (("A's SCIM token", a), ("no credentials", anon)):
                    body = body_for(template, method, b_ids, n)
                    r = call(c, method, base + fill(template, world.b.name, b_ids), body)
                    ref = call(c, method, base + fill(template, NOSUCH, b_ids), body)
                    subs = {world.b.name: "<t>", NOSUCH: "<t>"}
                    assert shape(r, subs) == shape(ref, subs), f"{what} with {who} on B answers unlike a missing " \
                                                               f"tenant: {r.status_code} {r.text[:300]}"
                    assert r.status_code < 500, f"{what} with {who}: {r.status_code}"
                    assert_reveals_nothing(r, world, f"{what} with {who}")
                    tried += 2
            elif "tenant" in params:
                # 1. A's token, B's URL and ids; reference: a tenant that does not exist
                body = body_for(template, method, b_ids, n)
                r = call(a, method, base + fill(template, world.b.name, b_ids), body)
                ref = call(a, method, base + fill(template, NOSUCH, b_ids), body)
                assert r.status_code in (401, 404), f"{what} as A on B's URL: {r.status_code} {r.text[:300]}"
                subs = {world.b.name: "<t>", NOSUCH: "<t>"}
                assert shape(r, subs) == shape(ref, subs), f"{what}: B's URL answers unlike a missing tenant"
                assert_reveals_nothing(r, world, f"{what} as A on B's URL")
                # 3. no token on B's URL
                r = call(anon, method, base + fill(template, world.b.name, b_ids), body)
                assert r.status_code == 401, f"{what} without a token: {r.status_code}"
                assert_reveals_nothing(r, world, f"{what} without a token")
                # 2. A's token, A's URL, B's ids (path and body); reference: ids that exist nowhere
                r = call(a, method, base + fill(template, world.a.name, b_ids), body_for(template, method, b_ids, n))
                ref = call(a, method, base + fill(template, world.a.name, fake),
                           body_for(template, method, fake, n + 1000))
                if params - {"tenant"} and method in ("GET", "HEAD", "DELETE"):
                    assert r.status_code == 404, f"{what}: B's id via A's URL gives {r.status_code} {r.text[:200]}"
                elif params - {"tenant"}:     # a body naming B's ids may be rejected first, as unknown ids are
                    assert r.status_code in (400, 404), f"{what}: B's id via A's URL gives {r.status_code}"
                assert shape(r, subs_ids) == shape(ref, subs_ids), \
                    f"{what}: B's ids via A's URL answer unlike unknown ids:\n{r.text[:300]}\n{ref.text[:300]}"
                assert_reveals_nothing(r, world, f"{what} with B's ids via A's URL", allowed=tuple(b_ids.values()))
                tried += 4
            else:
                # 4. routes outside a tenant URL: name B in the query, with each of A's credentials
                for who, c in (("A's SCIM token", a), ("A's events API key", key), ("no credentials", anon)):
                    path = base + fill(template, world.b.name, b_ids)
                    r = c.request(method, path, params={"tenant": world.b.name})
                    ref = c.request(method, path, params={"tenant": NOSUCH})
                    subs = {world.b.name: "<t>", NOSUCH: "<t>"}
                    assert shape(r, subs) == shape(ref, subs), f"{what} with {who} naming B answers unlike a " \
                                                               f"missing tenant: {r.status_code} {r.text[:200]}"
                    assert r.status_code < 300 or r.status_code in (401, 403, 404), \
                        f"{what} with {who}: {r.status_code}"
                    assert_reveals_nothing(r, world, f"{what} with {who} naming B")
                    tried += 2
    finally:
        a.close()
        anon.close()
        key.close()
    # B is untouched
    with client(world.srv.base, world.b) as cb:
        user = cb.get(f"/Users/{world.b_user['id']}").json()
        group = cb.get(f"/Groups/{world.b_group['id']}").json()
        listed = cb.get("/Users").json()
    assert user["meta"]["version"] == world.b_user["meta"]["version"] and user["userName"] == world.b_user["userName"]
    assert group["meta"]["version"] == world.b_group["meta"]["version"]
    assert [m["value"] for m in group["members"]] == [world.b_user["id"]]
    assert listed["totalResults"] == 1, listed
    report(f"isolation ({world.srv.base})", routes_methods=len(routes), requests=tried,
           result="every answer equal to the unknown-tenant/unknown-id answer, nothing of B revealed")
