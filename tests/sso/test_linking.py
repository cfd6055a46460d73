"""Linking a login to the user provisioned over SCIM (sso/linking.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from scimgrip.service.scim import ScimService
from scimgrip.sso.errors import SsoError
from scimgrip.sso.linking import is_user_active, resolve_user
from scimgrip.storage.base import Storage, Tenant

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def provision(storage: Storage, tenant: Tenant, user_name: str, external_id: str | None = None,
              active: bool = True) -> str:
    body: dict[str, Any] = {"schemas": [USER], "userName": user_name, "active": active}
    if external_id is not None:
        body["externalId"] = external_id
    reply = ScimService(storage).create(tenant, "User", body, base_url="")
    assert reply.body is not None
    return str(reply.body["id"])


@pytest.fixture
def tenant(storage: Storage) -> Tenant:
    return storage.create_tenant("contoso")


def test_oid_links_to_external_id(storage: Storage, tenant: Tenant) -> None:
    uid = provision(storage, tenant, "alice@contoso.test", "6f1c-oid-alice")
    provision(storage, tenant, "bob@contoso.test", "6f1c-oid-bob")
    user = resolve_user(storage, tenant, {"oid": "6f1c-oid-alice", "preferred_username": "bob@contoso.test"},
                        link_claim="oid", link_attribute="externalId", protocol="oidc")
    assert user.id == uid


def test_external_id_is_compared_exactly(storage: Storage, tenant: Tenant) -> None:
    """externalId is caseExact (RFC 7643 §3.1): an oid differing in case is another identity."""
    provision(storage, tenant, "alice@contoso.test", "ABC-oid")
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {"oid": "abc-oid"}, link_claim="oid", link_attribute="externalId")
    assert exc.value.reason == "not_provisioned"


def test_preferred_username_and_nameid_link_to_user_name(storage: Storage, tenant: Tenant) -> None:
    uid = provision(storage, tenant, "Alice@Contoso.test")
    assert resolve_user(storage, tenant, {"preferred_username": "alice@contoso.test"},
                        link_claim="preferred_username", link_attribute="userName").id == uid
    saml_login = {"name_id": "ALICE@contoso.test", "attributes": {}}
    assert resolve_user(storage, tenant, saml_login, link_claim="nameid", link_attribute="userName",
                        protocol="saml").id == uid
    by_attribute = {"name_id": "x", "attributes": {"upn": ["alice@contoso.test"]}}
    assert resolve_user(storage, tenant, by_attribute, link_claim="upn", link_attribute="userName",
                        protocol="saml").id == uid


def test_transient_nameid_never_links(storage: Storage, tenant: Tenant) -> None:
    provision(storage, tenant, "alice@contoso.test")
    login = {"name_id": "alice@contoso.test", "name_id_format": "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
             "attributes": {}}
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, login, link_claim="nameid", link_attribute="userName", jit=True,
                     protocol="saml")
    assert exc.value.reason == "not_provisioned" and "transient" in exc.value.message


def test_filter_metacharacters_in_the_claim_are_data(storage: Storage, tenant: Tenant) -> None:
    provision(storage, tenant, "alice@contoso.test", "x")
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {"oid": 'x" or userName pr or externalId eq "x'}, link_claim="oid",
                     link_attribute="externalId")
    assert exc.value.reason == "not_provisioned"


def test_other_tenants_users_are_invisible(storage: Storage, tenant: Tenant) -> None:
    other = storage.create_tenant("fabrikam")
    provision(storage, other, "alice@fabrikam.test", "oid-1")
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {"oid": "oid-1"}, link_claim="oid", link_attribute="externalId")
    assert exc.value.reason == "not_provisioned"


def test_not_provisioned_missing_claim_and_disabled(storage: Storage, tenant: Tenant) -> None:
    provision(storage, tenant, "carol@contoso.test", "oid-carol", active=False)
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {"oid": "nobody"}, link_claim="oid", link_attribute="externalId")
    assert exc.value.reason == "not_provisioned"
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {"sub": "s"}, link_claim="oid", link_attribute="externalId")
    assert exc.value.reason == "not_provisioned"
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {"oid": "oid-carol"}, link_claim="oid", link_attribute="externalId")
    assert exc.value.reason == "disabled"


def test_ambiguous_external_id_is_refused(storage: Storage, tenant: Tenant) -> None:
    provision(storage, tenant, "a1@contoso.test", "dup")
    provision(storage, tenant, "a2@contoso.test", "dup")
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {"oid": "dup"}, link_claim="oid", link_attribute="externalId")
    assert exc.value.reason == "not_provisioned" and "more than one" in exc.value.message


def test_email_is_never_a_link(storage: Storage, tenant: Tenant) -> None:
    provision(storage, tenant, "alice@contoso.test")
    for claim in ("email", "EMAIL", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"):
        with pytest.raises(SsoError) as exc:
            resolve_user(storage, tenant, {claim: "alice@contoso.test"}, link_claim=claim, link_attribute="userName")
        assert exc.value.reason == "invalid_config"
    with pytest.raises(SsoError):
        resolve_user(storage, tenant, {"oid": "x"}, link_claim="oid", link_attribute="emails.value")


def test_just_in_time_creation(storage: Storage, tenant: Tenant) -> None:
    claims = {"oid": "oid-dave", "preferred_username": "dave@contoso.test", "name": "Dave"}
    with pytest.raises(SsoError):
        resolve_user(storage, tenant, claims, link_claim="oid", link_attribute="externalId", jit=False)
    user = resolve_user(storage, tenant, claims, link_claim="oid", link_attribute="externalId", jit=True)
    assert user.doc["userName"] == "dave@contoso.test" and user.doc["externalId"] == "oid-dave"
    assert user.doc["active"] is True and user.doc["displayName"] == "Dave"
    again = resolve_user(storage, tenant, claims, link_claim="oid", link_attribute="externalId", jit=True)
    assert again.id == user.id                                          # found, not created twice
    # a JIT login must not take over an account provisioned under the same userName with another oid
    with pytest.raises(SsoError) as exc:
        resolve_user(storage, tenant, {**claims, "oid": "oid-intruder"}, link_claim="oid",
                     link_attribute="externalId", jit=True)
    assert exc.value.reason == "not_provisioned"
    saml = resolve_user(storage, tenant, {"name_id": "erin@contoso.test", "attributes": {}}, link_claim="nameid",
                        link_attribute="userName", jit=True, protocol="saml")
    assert saml.doc["userName"] == "erin@contoso.test" and "externalId" not in saml.doc


def test_is_user_active(storage: Storage, tenant: Tenant) -> None:
    uid = provision(storage, tenant, "frank@contoso.test")
    assert is_user_active(storage, tenant.id, uid)
    service = ScimService(storage)
    service.patch(tenant, "User", uid, {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                        "Operations": [{"op": "replace", "path": "active", "value": False}]}, "")
    assert not is_user_active(storage, tenant.id, uid)
    service.delete(tenant, "User", uid)
    assert not is_user_active(storage, tenant.id, uid)
    assert not is_user_active(storage, tenant.id, "not-an-id")
    other = storage.create_tenant("fabrikam")
    uid2 = provision(storage, other, "gina@fabrikam.test")
    assert not is_user_active(storage, tenant.id, uid2)          # another tenant's user
