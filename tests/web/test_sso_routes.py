"""Single sign-on over HTTP against a real ``scimgrip serve`` (SQLite and PostgreSQL) and local IdPs: OIDC and
SAML logins linked to SCIM-provisioned users, refusals as pages (not provisioned, disabled, forged, replayed,
tampered), sessions that end when SCIM disables or deletes the user, logout, tenant isolation, and the console's
SSO settings (validation, test sign-in, IT admin sign-in by SSO)."""

from __future__ import annotations

import html
import re

import httpx

from tests.server.conftest import Server
from tests.sso.idp import MockOidcProvider, SamlTestIdp, tamper_response
from tests.web.conftest import SsoTenant, new_oid


def browser(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=True)


def oidc_login(b: httpx.Client, tenant: SsoTenant, query: str = "") -> httpx.Response:
    return b.get(f"/sso/{tenant.name}/oidc/login{query}")


def saml_login(b: httpx.Client, tenant: SsoTenant, query: str = "") -> tuple[httpx.Response, dict[str, str]]:
    """SP-initiated: our redirect → the IdP's page with the auto-post form → POST to our ACS."""
    idp_page = b.get(f"/sso/{tenant.name}/saml/login{query}")
    assert idp_page.status_code == 200, idp_page.text
    fields = {k: html.unescape(v) for k, v in re.findall(r'name="(\w+)" value="([^"]*)"', idp_page.text)}
    action = html.unescape(re.search(r'action="([^"]+)"', idp_page.text).group(1))  # type: ignore[union-attr]
    return b.post(action, data=fields), fields


# -- OpenID Connect --------------------------------------------------------------------------------------------
def test_oidc_login_lands_on_the_users_page(oidc_tenant: SsoTenant, oidc_provider: MockOidcProvider) -> None:
    oid = new_oid()
    user = oidc_tenant.provision("megan@contoso.test", external_id=oid, groups=("Sales",))
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id, "preferred_username": "megan@x"}
    with browser(oidc_tenant.server) as b:
        r = oidc_login(b, oidc_tenant)
        assert r.status_code == 200 and str(r.url).endswith(f"/app/{oidc_tenant.name}")
        assert "megan@contoso.test" in r.text and "Sales" in r.text and user["id"] in r.text
        cookie = next(c for c in b.cookies.jar if c.name == "scimgrip_app")
        assert cookie.path == "/" and cookie.has_nonstandard_attr("HttpOnly")
        assert b.get(f"/app/{oidc_tenant.name}").status_code == 200


def test_oidc_refusals_are_pages(oidc_tenant: SsoTenant, oidc_provider: MockOidcProvider) -> None:
    with browser(oidc_tenant.server) as b:
        oidc_provider.next_user = {"oid": new_oid(), "tid": oidc_provider.tenant_id}
        r = oidc_login(b, oidc_tenant)
        assert r.status_code == 403 and "has not been provisioned" in r.text and "text/html" in r.headers[
            "content-type"]
        oid = new_oid()
        oidc_tenant.provision("disabled@contoso.test", external_id=oid, active=False)
        oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
        r = oidc_login(b, oidc_tenant)
        assert r.status_code == 403 and "disabled" in r.text
        assert "scimgrip_app" not in {c.name for c in b.cookies.jar}


def test_forged_id_token_is_refused(oidc_tenant: SsoTenant, oidc_provider: MockOidcProvider) -> None:
    oid = new_oid()
    oidc_tenant.provision("victim@contoso.test", external_id=oid)
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
    oidc_provider.issue_token = lambda claims, p: p.forge_with_foreign_key(claims)
    try:
        with browser(oidc_tenant.server) as b:
            r = oidc_login(b, oidc_tenant)
            assert r.status_code == 400 and "bad_signature" in r.text
    finally:
        oidc_provider.issue_token = None


def test_replayed_or_foreign_state_is_refused(oidc_tenant: SsoTenant, oidc_provider: MockOidcProvider) -> None:
    oid = new_oid()
    oidc_tenant.provision("replay@contoso.test", external_id=oid)
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
    with browser(oidc_tenant.server) as b:
        r = oidc_login(b, oidc_tenant)
        assert r.status_code == 200
        callback = next(h.url for h in r.history if "/oidc/callback" in str(h.url))
    with browser(oidc_tenant.server) as attacker:
        again = attacker.get(str(callback))
        assert again.status_code == 400 and "bad_state" in again.text
        forged = attacker.get(f"/sso/{oidc_tenant.name}/oidc/callback?code=x&state=made-up")
        assert forged.status_code == 400


def test_callback_planted_in_another_browser_is_refused(oidc_tenant: SsoTenant,
                                                       oidc_provider: MockOidcProvider) -> None:
    """Login CSRF (RFC 6749 §10.12): the attacker starts a sign-in with their own account and makes the victim's
    browser open the callback; the state is bound to the attacker's browser, so the victim gets no session."""
    oid = new_oid()
    oidc_tenant.provision("attacker@contoso.test", external_id=oid)
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
    with httpx.Client(base_url=oidc_tenant.server.base_url, follow_redirects=False) as attacker:
        to_idp = attacker.get(f"/sso/{oidc_tenant.name}/oidc/login")
        assert to_idp.status_code == 303 and "scimgrip_sso" in to_idp.headers["set-cookie"]
        callback = attacker.get(to_idp.headers["location"]).headers["location"]
    with browser(oidc_tenant.server) as victim:
        r = victim.get(callback)
        assert r.status_code == 400 and "another browser" in r.text
        assert "scimgrip_app" not in {c.name for c in victim.cookies.jar}


def test_session_ends_when_scim_disables_or_deletes_the_user(oidc_tenant: SsoTenant,
                                                             oidc_provider: MockOidcProvider) -> None:
    for how in ("disable", "delete"):
        oid = new_oid()
        user = oidc_tenant.provision(f"{how}d@contoso.test", external_id=oid)
        oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
        with browser(oidc_tenant.server) as b:
            assert oidc_login(b, oidc_tenant).status_code == 200
            if how == "disable":
                oidc_tenant.set_active(user["id"], False)
            else:
                assert oidc_tenant.scim.delete(f"/Users/{user['id']}").status_code == 204
            r = b.get(f"/app/{oidc_tenant.name}")
            assert r.status_code == 403 and "signed out" in r.text
            if how == "disable":
                oidc_tenant.set_active(user["id"], True)      # re-enabled: the old session stays ended
                r = b.get(f"/app/{oidc_tenant.name}", follow_redirects=False)
                assert r.status_code == 303 and r.headers["location"] == f"/sso/{oidc_tenant.name}/login"


def test_logout_needs_the_csrf_token_and_ends_the_session(oidc_tenant: SsoTenant,
                                                          oidc_provider: MockOidcProvider) -> None:
    oid = new_oid()
    oidc_tenant.provision("leaver@contoso.test", external_id=oid)
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
    with browser(oidc_tenant.server) as b:
        page = oidc_login(b, oidc_tenant).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        assert b.post(f"/sso/{oidc_tenant.name}/logout", data={}).status_code == 403
        assert b.get(f"/app/{oidc_tenant.name}").status_code == 200
        r = b.post(f"/sso/{oidc_tenant.name}/logout", data={"csrf_token": token})
        assert r.status_code == 200 and "signed out" in r.text
        r = b.get(f"/app/{oidc_tenant.name}", follow_redirects=False)
        assert r.status_code == 303


def test_a_session_of_tenant_a_opens_nothing_of_b(sso_server: Server, oidc_tenant: SsoTenant,
                                                  oidc_provider: MockOidcProvider) -> None:
    oid = new_oid()
    oidc_tenant.provision("a-user@contoso.test", external_id=oid)
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
    with browser(sso_server) as b:
        assert oidc_login(b, oidc_tenant).status_code == 200
        r = b.get("/app/default", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/sso/default/login"
        assert b.get("/sso/default/login").status_code == 404          # no SSO configured there
        assert b.get("/sso/no-such-tenant/login").status_code == 404
        assert b.get("/app/no-such-tenant").status_code == 404


# -- SAML ---------------------------------------------------------------------------------------------------------
def test_saml_sp_initiated_login_and_replay(saml_tenant: SsoTenant, saml_idp: SamlTestIdp) -> None:
    saml_tenant.provision("adele@contoso.test", groups=("Finance",))
    saml_idp.next_user = {"name_id": "adele@contoso.test", "attributes": {}}
    with browser(saml_tenant.server) as b:
        r, fields = saml_login(b, saml_tenant)
        assert r.status_code == 200 and str(r.url).endswith(f"/app/{saml_tenant.name}")
        assert "adele@contoso.test" in r.text and "Finance" in r.text
    with browser(saml_tenant.server) as attacker:
        acs = f"/sso/{saml_tenant.name}/saml/acs"
        r = attacker.post(acs, data=fields)                       # the same response again
        assert r.status_code == 400
        r = attacker.post(acs, data={"SAMLResponse": fields["SAMLResponse"]})
        assert r.status_code == 400


def test_saml_idp_initiated_login(saml_tenant: SsoTenant, saml_idp: SamlTestIdp, sso_server: Server) -> None:
    saml_tenant.provision("idp.initiated@contoso.test")
    base = f"{sso_server.base_url}/sso/{saml_tenant.name}/saml"
    metadata = httpx.get(f"{base}/metadata").text
    response = saml_idp.login_response(metadata, f"{base}/acs", "idp.initiated@contoso.test")
    with browser(sso_server) as b:
        r = b.post(f"{base}/acs", data={"SAMLResponse": response, "RelayState": ""})
        assert r.status_code == 200 and "idp.initiated@contoso.test" in r.text
    tampered = tamper_response(saml_idp.login_response(metadata, f"{base}/acs", "idp.initiated@contoso.test"),
                               "idp.initiated@contoso.test", "someone.else@contoso.test")
    with browser(sso_server) as b:
        r = b.post(f"{base}/acs", data={"SAMLResponse": tampered})
        assert r.status_code == 400 and "signature" in r.text
        r = b.post(f"{base}/acs", data={"SAMLResponse": "not base64 at all!"})
        assert r.status_code == 400


def test_saml_refuses_unprovisioned_and_disabled(saml_tenant: SsoTenant, saml_idp: SamlTestIdp) -> None:
    saml_idp.next_user = {"name_id": "stranger@contoso.test", "attributes": {}}
    with browser(saml_tenant.server) as b:
        r, _ = saml_login(b, saml_tenant)
        assert r.status_code == 403 and "has not been provisioned" in r.text
    saml_tenant.provision("off@contoso.test", active=False)
    saml_idp.next_user = {"name_id": "off@contoso.test", "attributes": {}}
    with browser(saml_tenant.server) as b:
        r, _ = saml_login(b, saml_tenant)
        assert r.status_code == 403 and "disabled" in r.text


# -- console: settings, test sign-in, IT admin by SSO -----------------------------------------------------------
def test_console_refuses_linking_by_email(oidc_tenant: SsoTenant, oidc_provider: MockOidcProvider) -> None:
    r = oidc_tenant.configure("oidc", {"discovery_url": oidc_provider.discovery_url,
                                       "client_id": oidc_provider.client_id, "link_claim": "email",
                                       "link_attribute": "userName"})
    assert r.status_code == 400 and "never linked by e-mail" in r.text
    page = oidc_tenant.operator.get(f"/console/t/{oidc_tenant.name}/sso").text
    assert 'value="oid"' in page                                  # the stored settings are unchanged
    assert "test-secret" not in page                              # the client secret is never shown


def test_test_sign_in_shows_claims_without_a_session(oidc_tenant: SsoTenant,
                                                     oidc_provider: MockOidcProvider) -> None:
    oid = new_oid()
    oidc_tenant.provision("tester@contoso.test", external_id=oid)
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id, "preferred_username": "tester@x"}
    with browser(oidc_tenant.server) as b:
        r = oidc_login(b, oidc_tenant, "?test=1")
        assert r.status_code == 200 and "links to the provisioned user" in r.text and oid in r.text
        assert "scimgrip_app" not in {c.name for c in b.cookies.jar}
        oidc_provider.next_user = {"oid": new_oid(), "tid": oidc_provider.tenant_id}
        r = oidc_login(b, oidc_tenant, "?test=1")
        assert r.status_code == 200 and "would be refused" in r.text


def test_it_admin_signs_into_the_console_by_sso(oidc_tenant: SsoTenant, oidc_provider: MockOidcProvider) -> None:
    page = oidc_tenant.operator.post(f"/console/t/{oidc_tenant.name}/setup-links").text
    link = re.search(r'id="setup-url" readonly value="[^"]*(/console/setup/[^"]+)"', page).group(1)  # type: ignore
    with httpx.Client(base_url=oidc_tenant.server.base_url, follow_redirects=False) as setup:
        form = setup.get(link).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        pw = "a long admin passphrase"
        r = setup.post(link, data={"csrf_token": token, "email": "it@contoso.test", "password": pw, "confirm": pw})
        assert r.status_code == 303
    oid = new_oid()
    oidc_tenant.provision("it@contoso.test", external_id=oid)
    oidc_provider.next_user = {"oid": oid, "tid": oidc_provider.tenant_id}
    with browser(oidc_tenant.server) as b:
        login_page = b.get(f"/console/t/{oidc_tenant.name}/login").text
        assert "Sign in with your company account" in login_page
        r = oidc_login(b, oidc_tenant, "?console=1")
        assert r.status_code == 200 and str(r.url).endswith(f"/console/t/{oidc_tenant.name}")
        assert "Tenant URL" in r.text
    # a provisioned user who is not an IT admin gets no console
    oid2 = new_oid()
    oidc_tenant.provision("not-admin@contoso.test", external_id=oid2)
    oidc_provider.next_user = {"oid": oid2, "tid": oidc_provider.tenant_id}
    with browser(oidc_tenant.server) as b:
        r = oidc_login(b, oidc_tenant, "?console=1")
        assert r.status_code == 403 and "not an IT admin" in r.text


