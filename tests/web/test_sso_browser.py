"""Single sign-on in a real headless browser (chromium through Playwright) against a real ``scimgrip serve`` and
local IdPs: an OIDC login, a SAML login, a refused login for a disabled user, and a session that ends when SCIM
disables the user."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console.browser import browser, require_chromium, screenshot  # noqa: F401 - fixture
from tests.console.conftest import OPERATOR_EMAIL, OPERATOR_PASSWORD, server_with_operator
from tests.server.conftest import Server
from tests.sso.idp import MockOidcProvider, SamlTestIdp
from tests.web.conftest import SsoTenant, make_tenant, new_oid

require_chromium()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    database = f"sqlite:///{tmp_path_factory.mktemp('sso-browser') / 'scimgrip.db'}"
    with server_with_operator(database, tmp_path_factory.mktemp("sso-browser-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def oidc(server: Server) -> Iterator[tuple[MockOidcProvider, SsoTenant]]:
    with MockOidcProvider() as provider:
        tenant = make_tenant(server)
        r = tenant.configure("oidc", {"discovery_url": provider.discovery_url, "client_id": provider.client_id,
                                      "client_secret": provider.client_secret or ""})
        assert r.status_code == 303, r.text
        yield provider, tenant


@pytest.fixture(scope="module")
def saml(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SamlTestIdp, SsoTenant]]:
    directory: Path = tmp_path_factory.mktemp("saml-idp")
    with SamlTestIdp(directory, auto_submit=True) as idp:
        tenant = make_tenant(server)
        r = tenant.configure("saml", {"idp_metadata_xml": idp.metadata_xml()})
        assert r.status_code == 303, r.text
        import httpx
        idp.register_sp(httpx.get(f"{server.base_url}/sso/{tenant.name}/saml/metadata").text)
        yield idp, tenant


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


def test_oidc_login_in_the_browser(server: Server, oidc: tuple[MockOidcProvider, SsoTenant], page: Any) -> None:
    provider, tenant = oidc
    oid = new_oid()
    tenant.provision("adele.vance@contoso.example", external_id=oid, groups=("Sales", "All staff"))
    provider.next_user = {"oid": oid, "tid": provider.tenant_id, "preferred_username": "adele.vance@contoso.example"}
    page.goto(f"{server.base_url}/sso/{tenant.name}/login")
    page.wait_for_url(f"**/app/{tenant.name}")
    assert "Signed in as" in page.locator("h1").inner_text()
    profile = page.locator("#profile").inner_text()
    assert "adele.vance@contoso.example" in profile and oid in profile
    assert "Sales" in page.locator("#groups").inner_text()
    screenshot(page, "app-landing")
    page.get_by_role("button", name="Sign out").click()
    assert "You are signed out" in page.locator("h1").inner_text()
    after = page.request.get(f"{server.base_url}/app/{tenant.name}", max_redirects=0)
    assert after.status == 303 and after.headers["location"] == f"/sso/{tenant.name}/login"


def test_saml_login_in_the_browser(server: Server, saml: tuple[SamlTestIdp, SsoTenant], page: Any) -> None:
    idp, tenant = saml
    name = f"nestor.{secrets.token_hex(2)}@contoso.example"
    tenant.provision(name, groups=("Engineering",))
    idp.next_user = {"name_id": name, "attributes": {}}
    page.goto(f"{server.base_url}/sso/{tenant.name}/login")
    page.wait_for_url(f"**/app/{tenant.name}")
    assert name in page.locator("#profile").inner_text()
    assert "SAML" in page.locator("#profile").inner_text()


def test_disabled_user_is_refused_with_a_page(server: Server, oidc: tuple[MockOidcProvider, SsoTenant],
                                               page: Any) -> None:
    provider, tenant = oidc
    oid = new_oid()
    tenant.provision("former@contoso.example", external_id=oid, active=False)
    provider.next_user = {"oid": oid, "tid": provider.tenant_id}
    response = page.goto(f"{server.base_url}/sso/{tenant.name}/oidc/login")
    assert response.status == 403
    assert page.locator("h1").inner_text() == "Sign-in refused"
    assert "disabled" in page.get_by_role("alert").inner_text()
    screenshot(page, "app-refused")


def test_session_ends_when_scim_disables_the_user(server: Server, oidc: tuple[MockOidcProvider, SsoTenant],
                                                  page: Any) -> None:
    provider, tenant = oidc
    oid = new_oid()
    user = tenant.provision("leaving@contoso.example", external_id=oid)
    provider.next_user = {"oid": oid, "tid": provider.tenant_id}
    page.goto(f"{server.base_url}/sso/{tenant.name}/login")
    page.wait_for_url(f"**/app/{tenant.name}")
    assert "leaving@contoso.example" in page.locator("#profile").inner_text()
    tenant.set_active(user["id"], False)                 # Entra disables the user over SCIM
    response = page.reload()
    assert response.status == 403
    assert "signed out" in page.get_by_role("alert").inner_text()


def test_console_sso_settings_page(server: Server, oidc: tuple[MockOidcProvider, SsoTenant], page: Any) -> None:
    _, tenant = oidc
    page.goto(f"{server.base_url}/console/login")
    page.get_by_label("E-mail address").fill(OPERATOR_EMAIL)
    page.get_by_label("Password").fill(OPERATOR_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/tenants")
    page.goto(f"{server.base_url}/console/t/{tenant.name}/sso")
    assert page.get_by_label("Discovery URL", exact=True).input_value().endswith("/.well-known/openid-configuration")
    assert page.get_by_role("link", name="Test sign-in").count() == 1
    screenshot(page, "console-sso")
