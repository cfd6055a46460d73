"""schemathesis against the OpenAPI description that scimgrip serves (``GET /scim/v2/openapi.json``).

A real ``scimgrip serve`` on loopback (SQLite; PostgreSQL when reachable, fewer cases), one tenant seeded with
users and groups. Every operation of the document is fuzzed with schema-valid (positive) and schema-invalid
(negative) requests. Checks on every response: no 5xx (``/Me`` answers 501, which RFC 7644 §3.11 prescribes),
a documented status code, ``application/scim+json``, a body that conforms to the response schema (errors:
``status`` as a string). A rejected write (4xx) leaves the tenant's stored rows byte-identical. Then a short
stateful run follows the OpenAPI links (create → get/replace/patch/delete with the new id).

Size: ``SCIMGRIP_FUZZ_SCALE`` (see ``fuzzkit``).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as oas

from tests.reliability.fuzzkit import Snapshotter, examples, report
from tests.server.conftest import TenantHandle, database, start_server, stop_server  # noqa: F401

TENANT = "fuzz"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
QUIET = {"SCIMGRIP_AUTH_FAILURE_LIMIT": "0", "SCIMGRIP_RATE_LIMIT_ENABLED": "false"}


def server_error_except_me(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, except the 501 RFC 7644 §3.11 prescribes for an unsupported ``/Me``."""
    if case.path.endswith("/Me") and response.status_code == 501:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [server_error_except_me, oas.status_code_conformance, oas.content_type_conformance,
          oas.response_schema_conformance]


@dataclass
class Api:
    base_url: str
    tenant: TenantHandle
    snap: Snapshotter
    schema: Any
    session: requests.Session
    ids: dict[str, list[str]] = field(default_factory=lambda: {"Users": [], "Groups": []})
    statuses: dict[int, int] = field(default_factory=dict)
    cases: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenant.token}"}


@pytest.fixture(scope="module")
def api(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:  # noqa: F811
    # negative cases drop or mangle the token on purpose: the bad-token slow-down would turn the rest into 429s
    srv = start_server(database, tmp_path_factory.mktemp("fuzz-api"), env=QUIET)
    snap = Snapshotter(database)
    session = requests.Session()
    try:
        tenant = srv.tenant(TENANT)
        doc = session.get(srv.base_url + "/scim/v2/openapi.json", timeout=30)
        assert doc.status_code == 200 and doc.headers["content-type"].startswith("application/json")
        schema = schemathesis.openapi.from_dict(doc.json())
        out = Api(srv.base_url, tenant, snap, schema, session)
        with tenant.client() as c:
            for i in range(5):
                r = c.post("/Users", json={"userName": f"seed{i}@example.com", "emails": [
                    {"value": f"seed{i}@example.com", "type": "work", "primary": True}]})
                assert r.status_code == 201, r.text
                out.ids["Users"].append(r.json()["id"])
            for i in range(2):
                r = c.post("/Groups", json={"displayName": f"seed group {i}",
                                            "members": [{"value": u} for u in out.ids["Users"][:3]]})
                assert r.status_code == 201, r.text
                out.ids["Groups"].append(r.json()["id"])
        yield out
    finally:
        session.close()
        snap.close()
        stop_server(srv)


def _aim(api: Api, case: Any) -> None:
    """Point the case at the seeded tenant, and most generated ids at resources that exist (else all 404)."""
    params = dict(case.path_parameters or {})
    params["tenant"] = TENANT
    kind = "Users" if "/Users/" in case.path else "Groups" if "/Groups/" in case.path else None
    if kind and "id" in params and api.ids[kind]:
        pool = api.ids[kind]
        slot = zlib.crc32(str(params["id"]).encode()) % (len(pool) + 1)
        if slot < len(pool):
            params["id"] = pool[slot]
    case.path_parameters = params


def _track(api: Api, case: Any, response: Any) -> None:
    api.statuses[response.status_code] = api.statuses.get(response.status_code, 0) + 1
    kind = "Users" if "/Users" in case.path else "Groups" if "/Groups" in case.path else None
    if kind is None or ".search" in case.path:
        return
    if case.method == "POST" and response.status_code == 201:
        api.ids[kind].append(response.json()["id"])
    elif case.method == "DELETE" and response.status_code == 204:
        rid = (case.path_parameters or {}).get("id")
        if rid in api.ids[kind]:
            api.ids[kind].remove(rid)


# CI runs a fixed sequence of cases so the gate is stable; SCIMGRIP_FUZZ_RANDOM=1 explores new ones (a random run
# found the 500 on `If-Match: ³` — "³".isdigit() is True — now a regression case in tests/scim).
DERANDOMIZE = os.environ.get("SCIMGRIP_FUZZ_RANDOM", "") not in ("1", "true", "yes")


def _operations(api: Api) -> list[Any]:
    return [r.ok() for r in api.schema.get_all_operations()]


def _label(op: Any) -> str:
    return f"{op.method.upper()} {op.path.replace('/scim/v2/tenants/{tenant}', '')}"


def _fuzz_operation(api: Api, op: Any, mode: GenerationMode, n: int) -> None:
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              derandomize=DERANDOMIZE)
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        api.cases += 1
        _aim(api, case)
        before = api.snap(TENANT) if case.method.upper() in WRITES else None
        response = case.call_and_validate(base_url=api.base_url, session=api.session, headers=api.headers,
                                          checks=CHECKS)
        _track(api, case, response)
        if before is not None and response.status_code >= 400:
            assert api.snap(TENANT) == before, (
                f"rejected {case.method} {case.formatted_path} ({response.status_code}) changed stored data")

    run()


def _per_operation(request: pytest.FixtureRequest, label: str) -> int:
    base = 6 if request.node.callspec.id == "sqlite" else 2
    if label.startswith(("POST /Users", "PATCH", "PUT", "POST /Groups", "POST /Bulk", "GET /Users", "GET /Groups")):
        base *= 2    # the operations with bodies and filters get more cases
    return examples(base)


def test_schemathesis_every_operation(request: pytest.FixtureRequest, api: Api) -> None:
    started = time.perf_counter()
    failures: list[str] = []
    tried: dict[str, int] = {}
    for op in _operations(api):
        label = _label(op)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            before = api.cases
            try:
                _fuzz_operation(api, op, mode, _per_operation(request, label))
            except BaseException as exc:  # noqa: BLE001 - collect every operation's failure, then fail once
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{label} [{mode.value}]: {str(exc)[:1500]}")
            tried[f"{label} {mode.value}"] = api.cases - before
    statuses = dict(sorted(api.statuses.items()))
    report(request, f"schemathesis ({request.node.callspec.id}): {api.cases} cases over {len(tried)} "
                    f"operation×mode in {time.perf_counter() - started:.1f}s; statuses {statuses}")
    assert not failures, "\n\n".join(failures)
    assert api.statuses.get(201, 0) > 0 and api.statuses.get(200, 0) > 0, api.statuses


def test_schemathesis_stateful(request: pytest.FixtureRequest, api: Api) -> None:
    """Follow the links: a created resource's id feeds get/replace/patch/delete."""
    started = time.perf_counter()
    counter = {"calls": 0}
    headers = api.headers

    class Machine(api.schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            counter["calls"] += 1
            params = dict(case.path_parameters or {})
            params["tenant"] = TENANT
            case.path_parameters = params

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": api.base_url, "headers": headers, "session": api.session}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    n = examples(10 if request.node.callspec.id == "sqlite" else 4)
    Machine.run(settings=settings(max_examples=n, stateful_step_count=8, deadline=None, database=None,
                                  suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE))
    report(request, f"schemathesis stateful ({request.node.callspec.id}): {n} scenarios, {counter['calls']} calls "
                    f"in {time.perf_counter() - started:.1f}s")
    assert counter["calls"] > 0
