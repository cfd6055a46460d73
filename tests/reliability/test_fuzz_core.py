"""Hypothesis against the protocol core (in process) and over HTTP: filters, PATCH paths and PATCH bodies,
valid and broken.

Core: a valid filter always parses, binds, re-renders to the same AST and evaluates to a bool; a broken one
raises ``InvalidFilter`` and nothing else. A PATCH path raises only ``invalidPath``/``invalidFilter``. A PATCH
body either applies — purely, deterministically, to a document that is itself a valid resource (what PUT
would store) — or raises a SCIM 4xx; never another exception, never a 5xx.

HTTP: the same inputs against ``scimgrip serve`` (SQLite; PostgreSQL when reachable): never a 5xx, every
error a SCIM error body with ``status`` as a string and ``application/scim+json``, and a rejected request
leaves the tenant's stored rows byte-identical (snapshot read from the database before and after).

Size: ``SCIMGRIP_FUZZ_SCALE`` (see ``fuzzkit``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scimgrip.scim.errors import InvalidFilter, InvalidPath, ScimError
from scimgrip.scim.filter import evaluate, parse_and_bind, to_string
from scimgrip.scim.patch import apply_patch, needs_members, parse_patch_request
from scimgrip.scim.paths import parse_patch_path
from scimgrip.scim.resource import normalize_resource
from scimgrip.scim.schema import CORE_GROUP, CORE_USER, ENTERPRISE_USER
from scimgrip.scim.tolerance import DEFAULT_POLICY, STRICT_POLICY, TolerancePolicy
from scimgrip.storage.base import Member, StoredResource
from tests.reliability.fuzzkit import (
    COUNTS,
    RANDOMS,
    R,
    Snapshotter,
    examples,
    gen_broken_filter,
    gen_broken_patch_body,
    gen_broken_patch_path,
    gen_valid_filter,
    gen_valid_patch_body,
    gen_valid_patch_path,
    report,
)
from tests.server.conftest import TenantHandle, database, start_server, stop_server  # noqa: F401

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
QUIET = {"SCIMGRIP_AUTH_FAILURE_LIMIT": "0", "SCIMGRIP_RATE_LIMIT_ENABLED": "false"}
FAST = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
RT = st.sampled_from(["User", "Group"])
MEMBER_IDS = ("u1", "u2", "u3", "g9")

USER_DOC: dict[str, Any] = {
    "userName": "ada@example.com", "externalId": "e-1", "displayName": "Ada", "active": True,
    "name": {"givenName": "Ada", "familyName": "Lovelace"},
    "emails": [{"value": "ada@example.com", "type": "work", "primary": True}, {"value": "a@home", "type": "home"}],
    "phoneNumbers": [{"value": "+1 555", "type": "mobile"}],
    "addresses": [{"locality": "London", "type": "work"}],
    ENTERPRISE_USER: {"employeeNumber": "7", "manager": {"value": "u2"}},
}
DOCS = {"User": [USER_DOC, {"userName": "min"}], "Group": [{"displayName": "Admins", "externalId": "x"}]}


def _count(name: str) -> None:
    COUNTS[name] += 1


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.perf_counter()
    yield
    report(request, f"test_fuzz_core total: {sum(COUNTS.values())} cases in {time.perf_counter() - started:.1f}s "
                    f"{dict(COUNTS)}")


# ---------------------------------------------------------------------------------------------------------------
# the pure core
# ---------------------------------------------------------------------------------------------------------------
# Hypothesis costs ~3-9 ms per example on its own here; each example therefore checks BATCH inputs built from
# its seed (a failure names the input; the seed replays the whole batch). Cases = examples × BATCH.
BATCH = 10


@settings(max_examples=examples(200), **FAST)  # type: ignore[arg-type]
@given(rnd=RANDOMS)
def test_valid_filters_parse_bind_round_trip_and_evaluate(rnd: random.Random) -> None:
    for _ in range(BATCH):
        rt = rnd.choice(["User", "Group"])
        text = gen_valid_filter(rnd, rt)
        _count("core: valid filters")
        node = parse_and_bind(text, R, rt)
        again = parse_and_bind(to_string(node), R, rt)
        assert again == node, f"{text!r} -> {to_string(node)!r} does not round-trip"
        core = R.resource_type(rt).schema
        for doc in DOCS[rt]:
            assert isinstance(evaluate(node, doc, core), bool)


@settings(max_examples=examples(200), **FAST)  # type: ignore[arg-type]
@given(rnd=RANDOMS)
def test_broken_filters_raise_invalid_filter_only(rnd: random.Random) -> None:
    for _ in range(BATCH):
        rt = rnd.choice(["User", "Group"])
        text = gen_broken_filter(rnd, rt)
        _count("core: broken filters")
        try:
            node = parse_and_bind(text, R, rt, unquoted_values=rnd.random() < 0.5)
        except InvalidFilter as exc:
            assert exc.status == 400 and exc.scim_type == "invalidFilter"
            continue
        core = R.resource_type(rt).schema
        for doc in DOCS[rt]:
            assert isinstance(evaluate(node, doc, core), bool)


@settings(max_examples=examples(150), **FAST)  # type: ignore[arg-type]
@given(rnd=RANDOMS)
def test_patch_paths(rnd: random.Random) -> None:
    for _ in range(BATCH):
        rt = rnd.choice(["User", "Group"])
        broken = rnd.random() < 0.5
        text = (gen_broken_patch_path if broken else gen_valid_patch_path)(rnd, rt)
        _count("core: PATCH paths")
        try:
            path = parse_patch_path(text, R, rt)
        except (InvalidPath, InvalidFilter) as exc:
            assert exc.status == 400
            bare_urn = R.canonical_urn(rt, text) is not None
            assert broken or bare_urn, f"valid path {text!r} rejected: {exc.detail}"
            continue
        assert path.attr and path.definition is not None


def _current(rt: str, doc: dict[str, Any], members: list[str] | None) -> StoredResource:
    return StoredResource("g1" if rt == "Group" else "u1", rt, copy.deepcopy(doc), 3, NOW, NOW,
                          members=[Member(m, "User") for m in members] if members is not None else None)


def _apply(body: Any, rt: str, doc: dict[str, Any], members: list[str], policy: TolerancePolicy) -> Any:
    ops = parse_patch_request(body, policy, max_operations=20, max_members=100)
    # what the service does: members are loaded only when needs_members says so
    loaded = members if rt == "Group" and needs_members(ops) else None
    return apply_patch(_current(rt, doc, loaded), ops, R, rt, policy)


def check_patch(rnd: random.Random) -> None:
    rt = rnd.choice(["User", "Group"])
    policy = rnd.choice([DEFAULT_POLICY, STRICT_POLICY])
    broken = rnd.random() < 0.5
    body = (gen_broken_patch_body if broken else gen_valid_patch_body)(rnd, rt, MEMBER_IDS)
    doc = rnd.choice(DOCS[rt])
    members = rnd.sample(MEMBER_IDS, rnd.randint(0, 3))
    _count("core: PATCH bodies")
    before = copy.deepcopy(doc)
    body_before = copy.deepcopy(body)
    where = f"{rt} strict={policy is STRICT_POLICY} body={body!r}"
    try:
        change = _apply(body, rt, doc, members, policy)
    except ScimError as exc:
        assert 400 <= exc.status < 500, f"{exc.status} {exc.detail}: {where}"
        assert doc == before and body == body_before, where
        return
    assert doc == before and body == body_before, f"PATCH modified its input: {where}"
    # deterministic: the same request on the same resource gives the same result (transaction retries rely on it)
    assert _apply(body, rt, doc, members, policy) == change, where
    # the result is a valid resource: what PUT would store, unchanged by normalisation
    norm = normalize_resource({"schemas": [CORE_USER if rt == "User" else CORE_GROUP], **change.doc}, R, rt,
                              policy)
    assert norm.doc == change.doc, f"PATCH produced a document that is not normal: {where}\n{change.doc}\n{norm.doc}"
    assert "id" not in change.doc and "meta" not in change.doc and "members" not in change.doc, where


@settings(max_examples=examples(250), **FAST)  # type: ignore[arg-type]
@given(rnd=RANDOMS)
def test_patch_bodies_apply_purely_or_raise_scim_4xx(rnd: random.Random) -> None:
    for _ in range(BATCH):
        check_patch(rnd)


# ---------------------------------------------------------------------------------------------------------------
# over HTTP
# ---------------------------------------------------------------------------------------------------------------
class Target:
    def __init__(self, tenant: TenantHandle, snap: Snapshotter, users: list[str], groups: list[str]) -> None:
        self.tenant = tenant
        self.snap = snap
        self.users = users
        self.groups = groups
        self.client = tenant.client()
        self.statuses: dict[int, int] = {}

    def check(self, resp: httpx.Response, what: str) -> None:
        self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:500]}"
        if resp.status_code == 204 or resp.status_code == 304:
            return
        assert resp.headers["content-type"].startswith("application/scim+json"), what
        if resp.status_code >= 400:
            body = resp.json()
            assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"], body
            assert body["status"] == str(resp.status_code), body
            assert isinstance(body.get("detail"), str)


@pytest.fixture(scope="module")
def target(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:  # noqa: F811
    srv = start_server(database, tmp_path_factory.mktemp("fuzz-core"), env=QUIET)
    snap = Snapshotter(database)
    try:
        tenant = srv.tenant("fuzz")
        users: list[str] = []
        with tenant.client() as c:
            for i in range(6):
                body = {**copy.deepcopy(USER_DOC), "userName": f"user{i}@example.com", "externalId": f"ext-{i}"}
                body[ENTERPRISE_USER] = {"employeeNumber": str(i)}
                r = c.post("/Users", json=body)
                assert r.status_code == 201, r.text
                users.append(r.json()["id"])
            groups = []
            for i in range(3):
                r = c.post("/Groups", json={"displayName": f"group {i}",
                                            "members": [{"value": u} for u in users[i:i + 3]]})
                assert r.status_code == 201, r.text
                groups.append(r.json()["id"])
        t = Target(tenant, snap, users, groups)
        yield t
        t.client.close()
    finally:
        snap.close()
        stop_server(srv)


def _http(request: pytest.FixtureRequest, n: int) -> int:
    """HTTP case counts: full on SQLite, a third on PostgreSQL (the CI budget; SCIMGRIP_FUZZ_SCALE raises both)."""
    return examples(n if request.node.callspec.id == "sqlite" else n // 3)


def _run(request: pytest.FixtureRequest, name: str, fn: Any) -> None:
    started = time.perf_counter()
    before = COUNTS[name]
    fn()
    report(request, f"{name}: {COUNTS[name] - before} cases in {time.perf_counter() - started:.1f}s, no 5xx, "
                    "every error a SCIM error, rejected requests changed nothing")


def test_http_filters(request: pytest.FixtureRequest, target: Target) -> None:
    name = f"http filters ({request.node.callspec.id})"

    @settings(max_examples=_http(request, 300), **FAST)  # type: ignore[arg-type]
    @given(rnd=RANDOMS, rt=RT, broken=st.booleans(), search=st.booleans())
    def run(rnd: random.Random, rt: str, broken: bool, search: bool) -> None:
        text = (gen_broken_filter if broken else gen_valid_filter)(rnd, rt)
        COUNTS[name] += 1
        plural = "/Users" if rt == "User" else "/Groups"
        if search:
            resp = target.client.post(plural + "/.search", json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": text, "count": 5})
        else:
            resp = target.client.get(plural, params={"filter": text, "count": "5"})
        target.check(resp, f"filter {text!r}")
        if not broken:
            assert resp.status_code == 200, f"valid filter {text!r} rejected: {resp.text}"
        if resp.status_code == 400:
            assert resp.json().get("scimType") in ("invalidFilter", "invalidValue"), resp.text

    _run(request, name, run)


def test_http_patch(request: pytest.FixtureRequest, target: Target) -> None:
    name = f"http PATCH ({request.node.callspec.id})"
    tenant = target.tenant.name

    @settings(max_examples=_http(request, 500), **FAST)  # type: ignore[arg-type]
    @given(rnd=RANDOMS, rt=RT, broken=st.booleans())
    def run(rnd: random.Random, rt: str, broken: bool) -> None:
        ids = (*target.users, *target.groups, "no-such-id")
        body = (gen_broken_patch_body if broken else gen_valid_patch_body)(rnd, rt, ids)
        rid = rnd.choice(target.users if rt == "User" else target.groups)
        COUNTS[name] += 1
        before = target.snap(tenant)
        resp = target.client.patch(f"/{rt}s/{rid}", content=json.dumps(body))
        target.check(resp, f"PATCH {rt} {body!r}")
        if resp.status_code >= 400:
            assert target.snap(tenant) == before, f"rejected PATCH ({resp.status_code}) changed stored data: {body!r}"

    _run(request, name, run)


RAW_BODIES = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b'{"userName":', b"\xff\xfe{}", b'{"userName": "a\\ud800"}',
                     b"[" * 5000 + b"]" * 5000, b'{"userName": 1e999}', b'{"a":' * 300 + b"1" + b"}" * 300,
                     b'{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "x", "userName": 1}']),
)


def test_http_broken_bodies(request: pytest.FixtureRequest, target: Target) -> None:
    name = f"http broken bodies ({request.node.callspec.id})"
    tenant = target.tenant.name

    @settings(max_examples=_http(request, 300), **FAST)  # type: ignore[arg-type]
    @given(raw=RAW_BODIES | st.from_type(dict).map(lambda d: json.dumps(d, default=str).encode()),
           route=st.sampled_from(["POST /Users", "POST /Groups", "PUT /Users/{u}", "PUT /Groups/{g}",
                                  "PATCH /Users/{u}", "PATCH /Groups/{g}", "POST /Bulk", "POST /.search",
                                  "POST /Users/.search"]))
    def run(raw: bytes, route: str) -> None:
        COUNTS[name] += 1
        method, path = route.split(" ")
        path = path.format(u=target.users[0], g=target.groups[0])
        before = target.snap(tenant)
        resp = target.client.request(method, path, content=raw)
        target.check(resp, f"{route} {raw[:200]!r}")
        if resp.status_code >= 400:
            assert target.snap(tenant) == before, f"rejected {route} changed stored data: {raw[:200]!r}"

    _run(request, name, run)


NUL_REQUESTS = [
    ("GET", "/Users/%00", None, 404), ("GET", "/Groups/a%00b", None, 404), ("DELETE", "/Users/%00", None, 404),
    ("PATCH", "/Users/%00", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                             "Operations": [{"op": "add", "path": "title", "value": "x"}]}, 404),
    ("POST", "/Groups", {"displayName": "g", "members": [{"value": "a\u0000"}]}, 400),
    ("GET", '/Users?filter=userName eq "a%00"', None, 400),
]


def test_http_nul_characters(request: pytest.FixtureRequest, target: Target) -> None:
    """Found by the fuzzers on PostgreSQL (text cannot hold NUL): ids, member ids, filter literals and tenant
    names with NUL were 500s. Each is now the 4xx it should be, and changes nothing."""
    tenant = target.tenant.name
    before = target.snap(tenant)
    for method, path, body, status in NUL_REQUESTS:
        resp = target.client.request(method, path, content=json.dumps(body) if body is not None else None)
        target.check(resp, f"{method} {path}")
        assert resp.status_code == status, (method, path, resp.text)
    base = target.tenant.url.rsplit("/", 1)[0]
    resp = httpx.get(f"{base}/fu%00zz/Users", headers={"Authorization": f"Bearer {target.tenant.token}"})
    target.check(resp, "tenant name with NUL")
    assert resp.status_code == 401
    assert target.snap(tenant) == before
