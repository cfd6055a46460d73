"""Single sign-on end to end: a real ``scimgrip serve`` per module and backend, the local identity providers of
``tests/sso/idp.py`` (an OpenID provider and a pysaml2 IdP on loopback), a tenant configured through the console,
and SCIM clients to provision, disable and delete the users who sign in."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.console.conftest import Browserless, server_with_operator, sign_in_operator
from tests.server.conftest import Server, cli, database, start_server, stop_server  # noqa: F401 - fixture
from tests.sso.conftest import oidc_provider, saml_idp  # noqa: F401 - fixtures (the local IdPs)
from tests.sso.idp import MockOidcProvider, SamlTestIdp

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@dataclass
class SsoTenant:
    name: str
    server: Server
    scim: httpx.Client
    operator: Browserless

    def provision(self, user_name: str, *, external_id: str | None = None, active: bool = True,
                  groups: tuple[str, ...] = ()) -> dict[str, Any]:
        body: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": user_name, "active": active,
                                "displayName": user_name.split("@")[0].title(),
                                "emails": [{"value": user_name, "type": "work", "primary": True}]}
        if external_id:
            body["externalId"] = external_id
        r = self.scim.post("/Users", json=body)
        assert r.status_code == 201, r.text
        user: dict[str, Any] = r.json()
        for g in groups:
            assert self.scim.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": g,
                                                   "members": [{"value": user["id"]}]}).status_code == 201
        return user

    def set_active(self, user_id: str, active: bool) -> None:
        r = self.scim.patch(f"/Users/{user_id}", json={"schemas": [PATCH_SCHEMA], "Operations": [
            {"op": "replace", "path": "active", "value": active}]})
        assert r.status_code == 200, r.text

    def configure(self, path: str, data: dict[str, str], files: dict[str, Any] | None = None) -> httpx.Response:
        self.operator.get(f"/console/t/{self.name}/sso")
        form = {**data, "csrf_token": self.operator.csrf or ""}
        return self.operator.http.post(f"/console/t/{self.name}/sso/{path}", data=form, files=files)


@pytest.fixture(scope="module")
def sso_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    with server_with_operator(database, tmp_path_factory.mktemp("sso-server")) as srv:
        yield srv


def make_tenant(server: Server) -> SsoTenant:
    operator = Browserless(server.base_url)
    sign_in_operator(operator)
    name = "sso" + secrets.token_hex(4)
    operator.get("/console/tenants")
    assert operator.post("/console/tenants", {"name": name}).status_code == 303
    operator.get(f"/console/t/{name}")
    page = operator.post(f"/console/t/{name}/tokens", {"description": "tests"}).text
    secret = re.search(r'id="secret" readonly value="([^"]+)"', page)
    assert secret
    scim = httpx.Client(base_url=f"{server.base_url}/scim/v2/tenants/{name}", timeout=30,
                        headers={"Authorization": f"Bearer {secret.group(1)}"})
    return SsoTenant(name, server, scim, operator)


@pytest.fixture()
def oidc_tenant(sso_server: Server, oidc_provider: MockOidcProvider) -> Iterator[SsoTenant]:  # noqa: F811
    t = make_tenant(sso_server)
    r = t.configure("oidc", {"discovery_url": oidc_provider.discovery_url, "client_id": oidc_provider.client_id,
                             "client_secret": oidc_provider.client_secret or "", "link_claim": "oid",
                             "link_attribute": "externalId"})
    assert r.status_code == 303, r.text
    try:
        yield t
    finally:
        t.scim.close()
        t.operator.close()


@pytest.fixture()
def saml_tenant(sso_server: Server, saml_idp: SamlTestIdp) -> Iterator[SsoTenant]:  # noqa: F811
    t = make_tenant(sso_server)
    r = t.configure("saml", {"link_from": "nameid", "link_attribute": "userName"},
                    files={"metadata_file": ("idp.xml", saml_idp.metadata_xml().encode(), "application/xml")})
    assert r.status_code == 303, r.text
    metadata = httpx.get(f"{sso_server.base_url}/sso/{t.name}/saml/metadata")
    assert metadata.status_code == 200
    saml_idp.register_sp(metadata.text)
    try:
        yield t
    finally:
        t.scim.close()
        t.operator.close()


def new_oid() -> str:
    return str(uuid.uuid4())
