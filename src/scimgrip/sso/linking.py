"""Which provisioned user a login is: the link between an IdP's identity and a SCIM User of the tenant.

The rule (docs/sso.md, "Linking"): a configured claim (OIDC) or the NameID / an attribute (SAML) must equal a
SCIM attribute that the same directory provisioned — by default Entra's immutable object id ``oid`` against
``externalId`` (the Entra provisioning mapping sends ``objectId`` as ``externalId``), or the UPN / NameID against
``userName``. Never an e-mail address alone (``config.EMAIL_CLAIMS``): the configuration refuses it.

A login maps to exactly one user; none → ``not_provisioned`` (or a minimal user when just-in-time creation is
on); ``active: false`` → ``disabled``. The lookup is a SCIM filter ``<attribute> eq "<value>"`` answered by the
storage's indexes (``userName`` unique index; ``externalId`` index).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from scimgrip.scim.errors import ScimError, Uniqueness
from scimgrip.scim.filter import parse_and_bind
from scimgrip.scim.schema import DEFAULT_REGISTRY
from scimgrip.service.scim import ScimService
from scimgrip.sso.config import EMAIL_CLAIMS, LINK_ATTRIBUTES
from scimgrip.sso.errors import SsoError
from scimgrip.storage.base import Query, Storage, StoredResource, Tenant

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
MAX_LINK_VALUE = 1024
TRANSIENT_NAMEID = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"


def link_value(login: Mapping[str, Any], link_claim: str, protocol: Literal["oidc", "saml"]) -> str:
    """The identifier to link by: an OIDC claim, or the SAML NameID (``"nameid"``) / first value of an attribute."""
    if protocol == "saml":
        if link_claim == "nameid":
            if login.get("name_id_format") == TRANSIENT_NAMEID:
                # a new random value per login (SAML Core §8.3.8): it can never identify an account
                raise SsoError("not_provisioned", "the identity provider sent a transient NameID; configure a "
                                                  "persistent one (e.g. the user principal name)")
            value: Any = login.get("name_id")
        else:
            values = (login.get("attributes") or {}).get(link_claim) or []
            value = values[0] if isinstance(values, list) and values else None
    else:
        value = login.get(link_claim)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LINK_VALUE:
        raise SsoError("not_provisioned",
                       f"the identity provider sent no usable {link_claim!r} to identify your account")
    return value


def find_user(storage: Storage, tenant: Tenant, attribute: str, value: str) -> StoredResource | None:
    """The one user whose ``attribute`` equals ``value`` (None if none); ``SsoError`` if several."""
    # RFC 7644 §3.4.2.2: the comparison value is a JSON string, so json.dumps escapes it
    flt = parse_and_bind(f"{attribute} eq {json.dumps(value, ensure_ascii=False)}", DEFAULT_REGISTRY, "User")
    page = storage.search(tenant.id, "User", Query(filter=flt, count=2, include_groups=False))
    if len(page.resources) > 1:
        raise SsoError("not_provisioned", "more than one provisioned account matches this sign-in; "
                                          "ask your administrator to fix the directory")
    return page.resources[0] if page.resources else None


def _jit_create(storage: Storage, tenant: Tenant, login: Mapping[str, Any], value: str, link_attribute: str,
                protocol: str) -> StoredResource:
    """A minimal active user carrying the link; the directory's next provisioning cycle completes it."""
    if link_attribute == "userName":
        user_name = value
    else:
        candidates = [login.get("preferred_username"), login.get("upn"), login.get("name_id"), value]
        user_name = next(c for c in candidates if isinstance(c, str) and c.strip())
    body: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": user_name, "active": True}
    if link_attribute == "externalId":
        body["externalId"] = value
    name = login.get("name") if protocol == "oidc" else None
    if isinstance(name, str) and name.strip():
        body["displayName"] = name[:256]
    try:
        reply = ScimService(storage).create(tenant, "User", body, base_url="")
    except Uniqueness as exc:
        raise SsoError("not_provisioned", "an account with this user name exists but is linked to another "
                                          "identity") from exc
    except ScimError as exc:
        raise SsoError("not_provisioned", "your account could not be created automatically") from exc
    assert reply.body is not None
    return storage.get(tenant.id, "User", str(reply.body["id"]), include_groups=False)


def resolve_user(storage: Storage, tenant: Tenant, claims_or_assertion: Mapping[str, Any], *, link_claim: str,
                 link_attribute: str, jit: bool = False,
                 protocol: Literal["oidc", "saml"] = "oidc") -> StoredResource:
    """The provisioned user this login is (see the module docstring for the rule)."""
    if link_attribute not in LINK_ATTRIBUTES:
        raise SsoError("invalid_config", f"cannot link by {link_attribute!r}")
    if link_claim.lower() in EMAIL_CLAIMS:
        raise SsoError("invalid_config", "logins are never linked by e-mail address alone")
    value = link_value(claims_or_assertion, link_claim, protocol)
    user = find_user(storage, tenant, link_attribute, value)
    if user is None:
        if not jit:
            raise SsoError("not_provisioned", "your account has not been provisioned to this service; "
                                              "ask your administrator to assign you the application")
        user = _jit_create(storage, tenant, claims_or_assertion, value, link_attribute, protocol)
    if user.doc.get("active") is False:
        raise SsoError("disabled", "your account is disabled")
    return user


def is_user_active(storage: Storage, tenant_id: int, user_id: str) -> bool:
    """For the web layer's per-request check: False once the user is deleted or deactivated over SCIM."""
    try:
        user = storage.get(tenant_id, "User", user_id, include_groups=False)
    except ScimError:       # NotFound, or an id no backend could hold
        return False
    return user.doc.get("active") is not False
