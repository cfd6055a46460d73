"""Per-tenant single sign-on settings, stored as JSON under the key ``"sso"`` of the tenant's settings document
(``Storage.update_tenant_settings``).

The OIDC client secret is stored **as given** (like the rest of the tenant settings, in the database): the
relying party must present it to the token endpoint, so it cannot be hashed. Protect the database and its
backups accordingly, or register a public client (PKCE only, no secret). :meth:`SsoSettings.to_public_json`
never returns it; the console shows only whether one is set.

Validation refuses configurations that would link a login by e-mail address (docs/sso.md, "Linking"): an
e-mail claim is not an identifier the directory controls for the login — in Entra ID ``email`` is editable and
unverified for many account types (the "nOAuth" class of account takeover) — so a login is linked only by an
immutable identifier (Entra ``oid`` → SCIM ``externalId``) or by a name the directory assigns (UPN / NameID →
``userName``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from scimgrip.sso.errors import SsoError
from scimgrip.sso.idp_metadata import parse_idp_metadata
from scimgrip.storage.base import Storage, Tenant

SETTINGS_KEY = "sso"

LINK_ATTRIBUTES = ("externalId", "userName")
"""SCIM attributes a login may be linked to: both unique per tenant and answered by an index."""

EMAIL_CLAIMS = frozenset({"email", "emails", "mail", "verified_primary_email", "verified_secondary_email",
                          "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
                          "urn:oid:0.9.2342.19200300.100.1.3"})
"""Claims / SAML attribute names that carry an e-mail address: never a link on their own."""


def _check_link(source: str, attribute: str, what: str) -> None:
    if not source or not source.strip():
        raise SsoError("invalid_config", f"{what} must name a claim or attribute")
    if source.strip().lower() in EMAIL_CLAIMS:
        raise SsoError("invalid_config",
                       f"{what} {source!r} is an e-mail address; logins are never linked by e-mail alone "
                       "(an e-mail claim can be set by the user or another tenant). Use 'oid' with externalId, "
                       "or the user principal name / NameID with userName.")
    if attribute not in LINK_ATTRIBUTES:
        raise SsoError("invalid_config",
                       f"link attribute must be one of {', '.join(LINK_ATTRIBUTES)}, not {attribute!r}")


def _check_url(url: str, what: str) -> None:
    """https; plain http only to a loopback host (a local test provider)."""
    parts = urlsplit(url or "")
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise SsoError("invalid_config", f"{what} must be an absolute https URL")


@dataclass(frozen=True)
class OidcSettings:
    """An OpenID Connect relying party registration (OpenID Connect Core 1.0, authorization code + PKCE).

    ``multi_tenant``: the discovery document is Entra's ``organizations``/``common`` one whose ``issuer``
    contains ``{tenantid}``; logins are accepted only from ``allowed_tenant_ids`` (Entra directory ids) or
    from whatever the web layer's ``allowed_tids`` check admits.
    """

    discovery_url: str
    client_id: str
    client_secret: str | None = None
    scopes: str = "openid profile email"
    multi_tenant: bool = False
    link_claim: str = "oid"
    link_attribute: str = "externalId"
    jit: bool = False
    allowed_tenant_ids: tuple[str, ...] = ()

    def validate(self) -> None:
        _check_url(self.discovery_url, "discovery URL")
        if not self.client_id or not self.client_id.strip():
            raise SsoError("invalid_config", "client id is required")
        if "openid" not in self.scopes.split():
            raise SsoError("invalid_config", "scopes must include 'openid'")
        _check_link(self.link_claim, self.link_attribute, "link claim")


@dataclass(frozen=True)
class SamlSettings:
    """A SAML 2.0 service provider registration (Web Browser SSO profile, SAML Profiles §4.1)."""

    idp_metadata_xml: str
    sp_entity_id: str | None = None
    link_from: str = "nameid"
    link_attribute: str = "userName"
    want_assertions_signed: bool = True
    clock_skew_seconds: int = 120
    jit: bool = False

    def validate(self) -> None:
        parse_idp_metadata(self.idp_metadata_xml)
        if self.link_from != "nameid":
            _check_link(self.link_from, self.link_attribute, "link attribute source")
        elif self.link_attribute not in LINK_ATTRIBUTES:
            _check_link("nameid", self.link_attribute, "link")
        if not 0 <= self.clock_skew_seconds <= 600:
            raise SsoError("invalid_config", "clock skew must be between 0 and 600 seconds")


def _build(cls: type[Any], data: Any, what: str) -> Any:
    if not isinstance(data, Mapping):
        raise SsoError("invalid_config", f"{what} settings must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SsoError("invalid_config", f"unknown {what} setting(s): {', '.join(unknown)}")
    values = dict(data)
    if "allowed_tenant_ids" in values:
        tids = values["allowed_tenant_ids"]
        if not isinstance(tids, list | tuple) or not all(isinstance(t, str) for t in tids):
            raise SsoError("invalid_config", "allowed_tenant_ids must be a list of strings")
        values["allowed_tenant_ids"] = tuple(t.strip().lower() for t in tids if t.strip())
    for f in dataclasses.fields(cls):
        if f.name in values and values[f.name] is not None:
            expected = {"bool": bool, "int": int}.get(str(f.type))
            if expected is not None and type(values[f.name]) is not expected:
                raise SsoError("invalid_config", f"{what} setting {f.name} must be a {f.type}")
            if str(f.type).startswith("str") and not isinstance(values[f.name], str):
                raise SsoError("invalid_config", f"{what} setting {f.name} must be a string")
    try:
        return cls(**values)
    except TypeError as exc:
        raise SsoError("invalid_config", f"incomplete {what} settings") from exc


@dataclass(frozen=True)
class SsoSettings:
    oidc: OidcSettings | None = None
    saml: SamlSettings | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.oidc is not None:
            oidc = dataclasses.asdict(self.oidc)
            oidc["allowed_tenant_ids"] = list(self.oidc.allowed_tenant_ids)
            out["oidc"] = oidc
        if self.saml is not None:
            out["saml"] = dataclasses.asdict(self.saml)
        return out

    def to_public_json(self) -> dict[str, Any]:
        """For the console: everything but the client secret (``client_secret_set`` says whether one is)."""
        out = self.to_json()
        if "oidc" in out:
            out["oidc"]["client_secret_set"] = bool(out["oidc"].pop("client_secret"))
        return out

    @classmethod
    def from_json(cls, data: Any) -> SsoSettings:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise SsoError("invalid_config", "sso settings must be an object")
        unknown = sorted(set(data) - {"oidc", "saml"})
        if unknown:
            raise SsoError("invalid_config", f"unknown sso setting(s): {', '.join(unknown)}")
        oidc = _build(OidcSettings, data["oidc"], "OIDC") if data.get("oidc") is not None else None
        saml = _build(SamlSettings, data["saml"], "SAML") if data.get("saml") is not None else None
        return cls(oidc=oidc, saml=saml)

    def validate(self) -> None:
        if self.oidc is not None:
            self.oidc.validate()
        if self.saml is not None:
            self.saml.validate()


def load_sso_settings(tenant: Tenant) -> SsoSettings:
    """The tenant's settings (empty when none are configured). Stored settings were validated when saved."""
    return SsoSettings.from_json(tenant.settings.get(SETTINGS_KEY))


def save_sso_settings(storage: Storage, tenant: Tenant, settings: SsoSettings) -> Tenant:
    """Validate and store; the other keys of the tenant's settings (extension schemas, …) are kept."""
    settings.validate()
    current = storage.get_tenant_by_id(tenant.id) or tenant
    doc = dict(current.settings)
    doc[SETTINGS_KEY] = settings.to_json()
    return storage.update_tenant_settings(tenant.id, doc)
