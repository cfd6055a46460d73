"""The console in a real headless browser (chromium through Playwright) against a real ``scimgrip serve``:
the IT admin's path from setup link to issued token, the request debugger showing a failed request, keyboard
use and a phone-sized viewport."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.console.browser import browser, require_chromium, screenshot  # noqa: F401 - fixture
from tests.console.conftest import OPERATOR_EMAIL, OPERATOR_PASSWORD, server_with_operator
from tests.server.conftest import Server

require_chromium()

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ADMIN_PASSWORD = "the customer's own passphrase"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    database = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'scimgrip.db'}"
    with server_with_operator(database, tmp_path_factory.mktemp("browser-server")) as srv:
        yield srv


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


def operator_sign_in(page: Any, base: str) -> None:
    page.goto(base + "/")
    assert page.url.endswith("/console/login")
    page.get_by_label("E-mail address").fill(OPERATOR_EMAIL)
    page.get_by_label("Password").fill(OPERATOR_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/tenants")


def create_tenant(page: Any, name: str) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create tenant").click()
    page.wait_for_url(f"**/console/t/{name}?created=1")


def test_it_admin_from_setup_link_to_issued_token(web: Server, browser: Any, page: Any) -> None:  # noqa: F811
    operator_sign_in(page, web.base_url)
    name = "contoso" + secrets.token_hex(2)
    create_tenant(page, name)
    page.get_by_role("button", name="Create a setup link").click()
    link = page.locator("#setup-url").input_value()
    assert "/console/setup/sgs_" in link
    page.goto(web.base_url + "/console/tenants")
    screenshot(page, "console-tenants")

    # the customer's IT admin, in another browser
    admin_ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    admin = admin_ctx.new_page()
    try:
        admin.goto(link)
        assert name in admin.locator("h1").inner_text()
        admin.get_by_label("E-mail address").fill("it-admin@contoso.example")
        admin.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
        admin.get_by_label("Password again").fill(ADMIN_PASSWORD)
        admin.get_by_role("button", name="Create account").click()
        admin.wait_for_url(f"**/console/t/{name}")
        tenant_url = admin.locator("#tenant-url").input_value()
        assert tenant_url == f"{web.base_url}/scim/v2/tenants/{name}"
        admin.get_by_label("Description").fill("Entra provisioning")
        admin.get_by_label("Expires").select_option("180")
        admin.get_by_role("button", name="Issue a new token").click()
        secret = admin.locator("#secret").input_value()
        assert secret.startswith("sgt_")
        assert admin.get_by_text("it is shown only once").is_visible()
        with httpx.Client(base_url=tenant_url, headers={"Authorization": f"Bearer {secret}"}) as scim:
            assert scim.get('/Users?filter=userName+eq+%2207a2b1a4-cc4f-4d5d-b8b9-183561c0104a%22').status_code == 200
            for given, family in (("Adele", "Vance"), ("Alex", "Wilber"), ("Megan", "Bowen"), ("Nestor", "Wilke")):
                scim.post("/Users", json={"schemas": [USER_SCHEMA], "userName": f"{given.lower()}@contoso.example",
                                          "externalId": secrets.token_hex(8), "displayName": f"{given} {family}",
                                          "name": {"givenName": given, "familyName": family},
                                          "emails": [{"value": f"{given.lower()}@contoso.example", "type": "work"}],
                                          "active": given != "Nestor"})
        # the Test Connection panel refreshes itself (htmx) and shows Entra's check
        admin.locator("#connection").get_by_text("succeeded (HTTP 200)").wait_for(timeout=20_000)
        admin.reload()                   # the secret is gone for good; tokens show their last use
        assert secret not in admin.content()
        assert "just now" in admin.locator("#tokens tbody").inner_text()
        screenshot(admin, "console-tenant-overview")
        admin.get_by_role("link", name="Users").click()
        admin.wait_for_url(f"**/console/t/{name}/users")
        assert admin.locator("tbody tr").count() == 4
        admin.get_by_label("Status").select_option("disabled")
        admin.get_by_role("button", name="Search").click()
        assert admin.locator("tbody tr").count() == 1 and "nestor@" in admin.locator("tbody").inner_text()
        admin.get_by_label("Status").select_option("all")
        admin.get_by_role("button", name="Search").click()
        screenshot(admin, "console-users")
        # the IT admin sees only their tenant
        admin.goto(web.base_url + "/console/t/default")
        assert "There is no such tenant." in admin.content()
    finally:
        admin_ctx.close()


def test_debugger_shows_a_failed_request(web: Server, page: Any) -> None:
    operator_sign_in(page, web.base_url)
    name = "fabrikam" + secrets.token_hex(2)
    create_tenant(page, name)
    page.get_by_role("button", name="Issue a new token").click()
    secret = page.locator("#secret").input_value()
    base = f"{web.base_url}/scim/v2/tenants/{name}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as scim:
        scim.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "grady@fabrikam.example"})
        assert scim.post("/Users", json={"schemas": [USER_SCHEMA],
                                         "userName": "Grady@fabrikam.example"}).status_code == 409
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer sgt_" + "0" * 43}) as wrong:
        assert wrong.get("/Users?filter=userName+eq+%22cf4d78e8-cc4f-4d5d-b8b9-183561c0104a%22").status_code == 401
    page.get_by_role("link", name="Request debugger").click()
    page.wait_for_url(f"**/console/t/{name}/requests")
    for _ in range(50):                                     # the log is written every 0.25 s
        if page.get_by_text("Authentication failed").count():
            break
        page.wait_for_timeout(200)
        page.reload()
    page.get_by_label("Outcome").select_option("failure")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    assert rows.count() == 2
    text = page.locator("tbody").inner_text()
    assert "Uniqueness conflict" in text and "Authentication failed" in text
    screenshot(page, "console-debugger")
    page.locator("tbody tr").filter(has_text="409").get_by_role("link").click()
    assert re.search(r"/requests/\d+$", page.url)
    assert "Grady@fabrikam.example" in page.locator("pre").first.inner_text()


def test_keyboard_skip_link_and_focus(web: Server, page: Any) -> None:
    operator_sign_in(page, web.base_url)
    page.goto(web.base_url + "/console/t/default")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    assert page.locator("a.skip").is_visible()               # visible when focused
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")
    page.get_by_label("Description").focus()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")


def test_readable_on_a_phone(web: Server, browser: Any) -> None:  # noqa: F811
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    p = ctx.new_page()
    try:
        operator_sign_in(p, web.base_url)
        p.goto(web.base_url + "/console/t/default")
        overflow = p.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        assert p.locator("#tenant-url").is_visible()
    finally:
        ctx.close()
