"""The console over HTTP against a real ``scimgrip serve`` (SQLite and PostgreSQL): operator sign-in, tenants,
setup links (single use, expiry), the IT admin's tokens (issue, rotate, revoke, expiry), CSRF, tenant isolation,
logout, the Test Connection panel, the request debugger and the directory views."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import pytest

from scimgrip.console.accounts import hash_setup_token
from scimgrip.storage import open_storage
from scimgrip.storage.sql.web_store import WebStore
from tests.console.conftest import OPERATOR_EMAIL, Browserless, sign_in_operator
from tests.server.conftest import Server

T = TypeVar("T")
ADMIN_PASSWORD = "a long admin passphrase"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def eventually(check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """The request log is written by a background thread every 0.25 s: poll until ``check`` answers."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def new_tenant(b: Browserless) -> str:
    name = "t" + secrets.token_hex(4)
    b.get("/console/tenants")
    r = b.post("/console/tenants", {"name": name})
    assert r.status_code == 303 and r.headers["location"] == f"/console/t/{name}?created=1", r.text
    return name


def setup_link(b: Browserless, tenant: str) -> str:
    b.get(f"/console/t/{tenant}")
    r = b.post(f"/console/t/{tenant}/setup-links")
    assert r.status_code == 200
    m = re.search(r'id="setup-url" readonly value="[^"]*(/console/setup/[^"]+)"', r.text)
    assert m, r.text
    return m.group(1)


def admin_of(server: Server, operator: Browserless, tenant: str, email: str = "it@customer.example") -> Browserless:
    path = setup_link(operator, tenant)
    b = Browserless(server.base_url)
    b.get(path)
    r = b.post(path, {"email": email, "password": ADMIN_PASSWORD, "confirm": ADMIN_PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == f"/console/t/{tenant}", r.text
    return b


def issue_token(b: Browserless, tenant: str, description: str = "", days: str = "") -> tuple[str, str]:
    b.get(f"/console/t/{tenant}")
    r = b.post(f"/console/t/{tenant}/tokens", {"description": description, "expires_in_days": days})
    assert r.status_code == 200, r.text
    secret = re.search(r'id="secret" readonly value="([^"]+)"', r.text)
    token_id = re.search(r"New Secret Token (tok_[A-Za-z0-9_]+)", r.text)
    assert secret and token_id
    return token_id.group(1), secret.group(1)


def scim(server: Server, tenant: str, secret: str) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base_url}/scim/v2/tenants/{tenant}", timeout=30,
                        headers={"Authorization": f"Bearer {secret}"})


# -- entry and sign-in ------------------------------------------------------------------------------------------
def test_root_and_console_redirect_to_sign_in(anon: Browserless) -> None:
    assert anon.get("/").headers["location"] == "/console"
    r = anon.get("/console")
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    page = anon.get("/console/login")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'href="#main"' in page.text                      # skip link
    assert '<label for="email">' in page.text and '<label for="password">' in page.text
    assert anon.get("/console/static/htmx.min.js").status_code == 200


def test_unknown_console_page_is_html_not_scim_json(anon: Browserless) -> None:
    r = anon.get("/console/no/such/page")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


def test_operator_sign_in_sets_a_hardened_cookie(anon: Browserless) -> None:
    anon.get("/console/login")
    r = anon.post("/console/login", {"email": OPERATOR_EMAIL, "password": "wrong password!!"})
    assert r.status_code == 400 and "Wrong e-mail address or password" in r.text
    assert "scimgrip_console" not in r.headers.get("set-cookie", "")
    r = anon.post("/console/login", {"email": OPERATOR_EMAIL, "password": "correct horse battery staple"})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("scimgrip_console=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie          # plain http on the loopback (SCIMGRIP_COOKIE_SECURE unset)
    assert anon.get("/console/tenants").status_code == 200


def test_sign_in_redirect_only_to_console_paths(anon: Browserless) -> None:
    anon.get("/console/login")
    r = anon.post("/console/login?next=//evil.example/x", {"email": OPERATOR_EMAIL,
                                                          "password": "correct horse battery staple"})
    assert r.headers["location"] == "/console/tenants"


def test_signed_out_visitor_is_sent_to_sign_in(anon: Browserless) -> None:
    r = anon.get("/console/tenants")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=")
    r = anon.get("/console/t/default/users")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/t/default/login")
    r = anon.get("/console/t/default/connection", headers={"HX-Request": "true"})   # the panel's poll
    assert r.status_code == 200 and r.headers["hx-redirect"] == "/console/login" and r.text == ""


# -- tenants ----------------------------------------------------------------------------------------------------
def test_operator_creates_a_tenant_and_sees_its_tenant_url(operator: Browserless, console_server: Server) -> None:
    name = new_tenant(operator)
    page = operator.get(f"/console/t/{name}?created=1")
    assert page.status_code == 200
    assert f'value="{console_server.base_url}/scim/v2/tenants/{name}"' in page.text
    assert name in operator.get("/console/tenants").text
    r = operator.post("/console/tenants", {"name": name})
    assert r.status_code == 400 and "already exists" in r.text
    r = operator.post("/console/tenants", {"name": "Bad Name!"})
    assert r.status_code == 400 and "lower-case" in r.text


# -- CSRF -------------------------------------------------------------------------------------------------------
def test_posts_without_a_valid_csrf_token_are_refused(operator: Browserless) -> None:
    name = "csrf" + secrets.token_hex(3)
    assert operator.post("/console/tenants", {"name": name}, csrf=False).status_code == 403
    assert operator.post("/console/tenants", {"name": name, "csrf_token": "forged"}, csrf=False).status_code == 403
    operator.get("/console/tenants")
    r = operator.post("/console/tenants", {"name": name}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert name not in operator.get("/console/tenants").text          # nothing was created
    assert operator.post("/console/logout", csrf=False).status_code == 403
    assert operator.get("/console/tenants").status_code == 200       # and the session lives on


def test_sign_in_form_needs_its_double_submit_token(anon: Browserless) -> None:
    anon.get("/console/login")
    r = anon.post("/console/login", {"email": OPERATOR_EMAIL, "password": "correct horse battery staple"},
                  csrf=False)
    assert r.status_code == 403


# -- setup links and the IT admin ------------------------------------------------------------------------------
def test_setup_link_works_once(operator: Browserless, console_server: Server) -> None:
    tenant = new_tenant(operator)
    path = setup_link(operator, tenant)
    b = Browserless(console_server.base_url)
    assert b.get(path).status_code == 200
    r = b.post(path, {"email": "it@customer.example", "password": "short", "confirm": "short"})
    assert r.status_code == 400 and "at least 12" in r.text          # refused, link still usable
    r = b.post(path, {"email": "it@customer.example", "password": ADMIN_PASSWORD, "confirm": ADMIN_PASSWORD})
    assert r.status_code == 303
    assert b.get(f"/console/t/{tenant}").status_code == 200
    other = Browserless(console_server.base_url)
    r = other.get(path)
    assert r.status_code == 404 and "already used" in r.text
    assert other.get("/console/setup/sgs_" + "x" * 43).status_code == 404
    # the admin signs in again later with the password, at the tenant's sign-in page
    again = Browserless(console_server.base_url)
    again.get(f"/console/t/{tenant}/login")
    r = again.post(f"/console/t/{tenant}/login", {"email": "IT@customer.example", "password": ADMIN_PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == f"/console/t/{tenant}"
    # the same credentials are no operator credentials
    again.get("/console/login")
    assert again.post("/console/login", {"email": "it@customer.example",
                                         "password": ADMIN_PASSWORD}).status_code == 400


def test_expired_setup_link_is_refused(operator: Browserless, console_server: Server) -> None:
    tenant = new_tenant(operator)
    storage = open_storage(console_server.database)
    try:
        tid = storage.get_tenant(tenant).id  # type: ignore[union-attr]
        token = "sgs_" + secrets.token_urlsafe(32)
        WebStore(storage).add_setup_link(hash_setup_token(token), tid,
                                         dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), None)
    finally:
        storage.close()
    b = Browserless(console_server.base_url)
    r = b.get(f"/console/setup/{token}")
    assert r.status_code == 404 and "expired" in r.text


def test_it_admin_issues_rotates_and_revokes_tokens(operator: Browserless, console_server: Server) -> None:
    tenant = new_tenant(operator)
    admin = admin_of(console_server, operator, tenant)
    first_id, first = issue_token(admin, tenant, "Entra")
    assert first.startswith("sgt_")
    assert first not in admin.get(f"/console/t/{tenant}").text            # shown once only
    with scim(console_server, tenant, first) as c:
        assert c.get("/Users").status_code == 200
    second_id, second = issue_token(admin, tenant, "rotation", days="30")  # rotate: both work
    page = admin.get(f"/console/t/{tenant}").text
    assert re.search(rf'id="token-{second_id}">.*?\d{{4}}-\d\d-\d\d .*?UTC</td>\s*<td title', page, re.S)
    for secret in (first, second):
        with scim(console_server, tenant, secret) as c:
            assert c.get("/Users").status_code == 200
    r = admin.post(f"/console/t/{tenant}/tokens/{first_id}/revoke")
    assert r.status_code == 303
    with scim(console_server, tenant, first) as c:
        assert c.get("/Users").status_code == 401
    with scim(console_server, tenant, second) as c:
        assert c.get("/Users").status_code == 200
    # last use is shown per token (written by the request log thread)
    eventually(lambda: re.search(rf'id="token-{second_id}">.*?(just now|minute)', admin.get(
        f"/console/t/{tenant}").text, re.S))
    r = admin.post(f"/console/t/{tenant}/tokens", {"expires_in_days": "-4"})
    assert r.status_code == 400


def test_tenant_admin_of_a_cannot_see_or_touch_b(operator: Browserless, console_server: Server) -> None:
    a, b_name = new_tenant(operator), new_tenant(operator)
    admin_a = admin_of(console_server, operator, a, "it@a.example")
    b_token_id, b_secret = issue_token(operator, b_name)
    with scim(console_server, b_name, b_secret) as c:
        user = c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "bob@b.example"}).json()
        c.get("/Users?filter=bogus")          # a logged failure in B
    storage = open_storage(console_server.database)
    try:
        b_tid = storage.get_tenant(b_name).id  # type: ignore[union-attr]
        entry_id = eventually(lambda: storage.list_request_log(b_tid, 5))[0]["id"]
    finally:
        storage.close()
    for path in (f"/console/t/{b_name}", f"/console/t/{b_name}/users", f"/console/t/{b_name}/users/{user['id']}",
                 f"/console/t/{b_name}/groups", f"/console/t/{b_name}/requests",
                 f"/console/t/{b_name}/requests/{entry_id}", f"/console/t/{b_name}/connection",
                 f"/console/t/{b_name}/sso", f"/console/t/{b_name}/groups/{user['id']}"):
        r = admin_a.get(path)
        assert r.status_code == 404, path
        assert "bob@b.example" not in r.text
    # B's ids under A's own URL find nothing either
    assert admin_a.get(f"/console/t/{a}/users/{user['id']}").status_code == 404
    assert admin_a.get(f"/console/t/{a}/requests/{entry_id}").status_code == 404
    admin_a.get(f"/console/t/{a}")
    assert admin_a.post(f"/console/t/{b_name}/tokens", {"description": "x"}).status_code == 404
    assert admin_a.post(f"/console/t/{b_name}/tokens/{b_token_id}/revoke").status_code == 404
    assert admin_a.post(f"/console/t/{a}/tokens/{b_token_id}/revoke").status_code == 404
    assert admin_a.post(f"/console/t/{b_name}/setup-links").status_code == 404
    assert admin_a.post(f"/console/t/{b_name}/sso/oidc", {"discovery_url": "https://evil.example/x",
                                                         "client_id": "x"}).status_code == 404
    assert admin_a.post(f"/console/t/{b_name}/sso/saml/remove").status_code == 404
    with scim(console_server, b_name, b_secret) as c:
        assert c.get("/Users").status_code == 200                      # B's token still works
    # operator pages are not for IT admins
    assert admin_a.get("/console/tenants").status_code == 403
    assert admin_a.get("/console/jobs").status_code == 403
    assert admin_a.post(f"/console/t/{a}/setup-links").status_code == 403


def test_logout_ends_the_session_server_side(operator: Browserless, console_server: Server) -> None:
    cookie = operator.http.cookies.get("scimgrip_console")
    operator.get("/console/tenants")
    r = operator.post("/console/logout")
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    # even a copy of the old cookie no longer opens anything
    thief = httpx.Client(base_url=console_server.base_url, follow_redirects=False,
                         cookies={"scimgrip_console": cookie or ""})
    with thief:
        assert thief.get("/console/tenants").status_code == 303


# -- Test Connection, debugger, directory ---------------------------------------------------------------------
def test_connection_panel_and_debugger_show_entras_requests(operator: Browserless, console_server: Server) -> None:
    tenant = new_tenant(operator)
    panel = operator.get(f"/console/t/{tenant}/connection").text
    assert "has not reached scimgrip yet" in panel
    with scim(console_server, tenant, "sgt_" + "x" * 43) as c:   # Test Connection with a wrong token
        assert c.get('/Users?filter=userName+eq+%22cf4d78e8-cc4f-4d5d-b8b9-183561c0104a%22').status_code == 401
    panel = eventually(lambda: (t := operator.get(f"/console/t/{tenant}/connection").text) and
                       "failed (HTTP 401)" in t and t)
    assert "Authentication failed" in panel
    _, secret = issue_token(operator, tenant)
    with scim(console_server, tenant, secret) as c:
        assert c.get('/Users?filter=userName+eq+%2207a2b1a4-0000-4d5d-b8b9-183561c0104a%22').status_code == 200
        c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "dup@x.example"})
        assert c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "DUP@x.example"}).status_code == 409
        uid = c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "s@x.example"}).json()["id"]
        patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                 "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}
        assert c.patch(f"/Users/{uid}", json=patch).status_code == 200
        assert c.get("/Users?filter=userName+zz+%22x%22").status_code == 400
    panel = eventually(lambda: (t := operator.get(f"/console/t/{tenant}/connection").text) and
                       "succeeded (HTTP 200)" in t and t)
    page = eventually(lambda: (t := operator.get(f"/console/t/{tenant}/requests").text) and "invalidFilter" in t
                      or "not understood" in t and t)
    page = operator.get(f"/console/t/{tenant}/requests").text
    assert "Uniqueness conflict" in page
    assert "string_booleans" in page and "capitalised_ops" in page
    assert "The filter was not understood" in page
    failures = operator.get(f"/console/t/{tenant}/requests?outcome=failure").text
    assert "Uniqueness conflict" in failures and "connection check" not in failures
    only_patch = operator.get(f"/console/t/{tenant}/requests?method=PATCH").text
    assert only_patch.count('<tr class="') == 1
    by_status = operator.get(f"/console/t/{tenant}/requests?status=409").text
    assert by_status.count('<tr class="') == 1
    entry = re.search(rf'/console/t/{tenant}/requests/(\d+)">', only_patch)
    assert entry
    detail = operator.get(f"/console/t/{tenant}/requests/{entry.group(1)}").text
    assert "&#34;False&#34;" in detail or "&quot;False&quot;" in detail   # the request body, escaped
    assert operator.get(f"/console/t/{tenant}/requests/999999999").status_code == 404
    overview = operator.get(f"/console/t/{tenant}").text
    assert '<svg class="chart"' in overview and "<script>" not in overview.split("</head>")[1]


def test_directory_search_filter_detail_and_groups(operator: Browserless, console_server: Server) -> None:
    tenant = new_tenant(operator)
    _, secret = issue_token(operator, tenant)
    with scim(console_server, tenant, secret) as c:
        alice = c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "alice@contoso.example",
                                       "externalId": "ext-alice-1", "name": {"givenName": "Alice",
                                                                             "familyName": "Liddell"},
                                       "emails": [{"value": "a.liddell@mail.example", "type": "work"}]}).json()
        bob = c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "bob@contoso.example",
                                     "active": False}).json()
        for i in range(30):
            c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": f"user{i:02d}@contoso.example"})
        group = c.post("/Groups", json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                        "displayName": "Engineers",
                                        "members": [{"value": alice["id"]}, {"value": bob["id"]}]}).json()
        c.patch(f"/Users/{alice['id']}", json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                               "Operations": [{"op": "replace", "path": "displayName",
                                                               "value": "Alice L."}]})
    base = f"/console/t/{tenant}/users"
    for q in ("Liddell", "alice@contoso", "a.liddell@mail", "ext-alice-1"):
        page = operator.get(base, params={"q": q}).text
        assert "alice@contoso.example" in page and "bob@contoso.example" not in page, q
    disabled = operator.get(base, params={"status": "disabled"}).text
    assert "bob@contoso.example" in disabled and "alice@contoso.example" not in disabled
    first = operator.get(base).text
    assert "1–25 of 32" in first and 'rel="next"' in first
    second = operator.get(base, params={"start": "26"}).text
    assert "26–32 of 32" in second and "user29@contoso.example" in second
    assert operator.get(base, params={"q": '" or ('}).status_code == 200   # quotes in the search box are data
    detail = operator.get(f"{base}/{alice['id']}").text
    assert "user.created" in detail and "user.updated" in detail and "Engineers" in detail
    assert "ext-alice-1" in detail
    assert operator.get(f"{base}/no-such-id").status_code == 404
    groups = operator.get(f"/console/t/{tenant}/groups").text
    assert "Engineers" in groups
    gpage = operator.get(f"/console/t/{tenant}/groups/{group['id']}").text
    assert "alice@contoso.example" in gpage or "Alice L." in gpage
    assert "bob@contoso.example" in gpage


def test_operator_sees_engine_jobs_page(operator: Browserless) -> None:
    page = operator.get("/console/jobs")
    assert page.status_code == 200 and "Provisioning jobs" in page.text
    assert operator.get("/console/jobs/nope").status_code == 404


@pytest.mark.parametrize("password", ["short"])
def test_cli_refuses_a_short_operator_password(console_server: Server, password: str) -> None:
    from tests.server.conftest import cli
    proc = cli("admin", "create", "x@example.com", "--password-stdin", database=console_server.database,
               input=password + "\n", check=False)
    assert proc.returncode == 1 and "at least 12" in proc.stderr
    proc = cli("admin", "create", OPERATOR_EMAIL, "--password-stdin", database=console_server.database,
               input="another long password\n", check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr


def test_operator_fixture_signs_in(console_server: Server) -> None:
    b = Browserless(console_server.base_url)
    sign_in_operator(b)
    assert b.get("/console").headers["location"] == "/console/tenants"
    b.close()


def test_engine_job_status_progress_and_logs(operator: Browserless, console_server: Server) -> None:
    from scimgrip.engine.state import LogRecord, LogStep, TargetCall
    from scimgrip.storage.sql.engine_store import SqlEngineStore

    storage = open_storage(console_server.database)
    try:
        store = SqlEngineStore.from_storage(storage)
        name = "hr-to-app-" + secrets.token_hex(3)
        job = store.create_job(name, "source: {}\n", "fp", status="Active")
        store.save_job_state(name, progress={"phase": "export", "processed": 40, "total": 100},
                             counters={"created": 12})
        store.append_logs([
            LogRecord(job_id=job.id, cycle_id="c1", change_id="ch1", object_type="User", source_id="s1",
                      action="create", status="success", source_display="Adele Vance",
                      steps=(LogStep("Import", "import"), LogStep("Export", "export", description="POST /Users")),
                      calls=(TargetCall("POST", "/Users", 201),)),
            LogRecord(job_id=job.id, cycle_id="c1", change_id="ch2", object_type="User", source_id="s2",
                      action="update", status="failure", source_display="Alex Wilber",
                      reason="SystemForCrossDomainIdentityManagementServiceIncompatible"),
        ])
    finally:
        storage.close()
    jobs = operator.get("/console/jobs").text
    assert name in jobs and "Active" in jobs
    page = operator.get(f"/console/jobs/{name}").text
    assert 'max="100" value="40"' in page and "created" in page
    assert "Adele Vance" in page and "POST /Users" in page and "Alex Wilber" in page
    failures = operator.get(f"/console/jobs/{name}", params={"status": "failure"}).text
    assert "Alex Wilber" in failures and "Adele Vance" not in failures


def test_password_guessing_is_throttled(console_server: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    b = Browserless(console_server.base_url)
    victim = f"victim-{secrets.token_hex(3)}@example.com"
    b.get("/console/login")
    assert b.post("/console/login", {"email": victim, "password": "guess guess guess"}).status_code == 400

    def guess(_: int) -> httpx.Response:
        return b.post("/console/login", {"email": victim, "password": "guess guess guess"})

    with ThreadPoolExecutor(8) as pool:                 # faster than the 1 attempt per second refill
        answers = list(pool.map(guess, range(40)))
    refused = [r for r in answers if r.status_code == 429]
    assert refused and all(r.status_code in (400, 429) for r in answers)
    assert int(refused[0].headers["retry-after"]) >= 1 and "Too many sign-in attempts" in refused[0].text
    b.close()
