"""Single sign-on settings (sso/config.py) and IdP metadata import (sso/idp_metadata.py)."""

from __future__ import annotations

from typing import Any

import pytest

from scimgrip.sso.config import OidcSettings, SamlSettings, SsoSettings, load_sso_settings, save_sso_settings
from scimgrip.sso.errors import SsoError
from scimgrip.sso.saml import SamlServiceProvider, parse_idp_metadata
from scimgrip.storage.base import Storage
from tests.sso.idp import cert_base64, entra_federation_metadata, make_self_signed

ENTRA_ID = "https://sts.windows.net/9f3b2c1a-0000-4000-8000-00000000c0de/"
ENTRA_SSO = "https://login.microsoftonline.com/9f3b2c1a-0000-4000-8000-00000000c0de/saml2"
DISCOVERY = "https://login.microsoftonline.com/9f3b2c1a-0000-4000-8000-00000000c0de/v2.0/.well-known/openid-configuration"


@pytest.fixture(scope="module")
def entra_metadata(tmp_path_factory: pytest.TempPathFactory) -> str:
    _, cert = make_self_signed(tmp_path_factory.mktemp("entra"), "Microsoft Azure Federated SSO Certificate")
    return entra_federation_metadata(ENTRA_ID, ENTRA_SSO, cert_base64(cert))


def test_entra_federation_metadata_is_accepted(entra_metadata: str) -> None:
    info = parse_idp_metadata(entra_metadata)
    assert info["entity_id"] == ENTRA_ID
    assert info["sso_redirect_url"] == ENTRA_SSO and info["sso_post_url"] == ENTRA_SSO
    assert len(info["signing_certs"]) == 1 and info["cert_not_after"][0] > "2026"
    # and pysaml2 loads it (the WS-Fed RoleDescriptors do not get in the way)
    sp = SamlServiceProvider(SamlSettings(idp_metadata_xml=entra_metadata), sp_entity_id="https://sg.test/md",
                             acs_url="https://sg.test/acs", metadata_url="https://sg.test/md")
    assert sp.begin(None)[0].startswith(ENTRA_SSO + "?SAMLRequest=")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda x: x.replace(f'entityID="{ENTRA_ID}"', ""), "entityID"),
    (lambda x: x.replace("SingleSignOnService", "ArtifactResolutionService"), "SingleSignOnService"),
    (lambda x: x.replace('use="signing"', 'use="encryption"'), "signing certificate"),
    (lambda x: x.replace("<X509Certificate>", "<X509Certificate>!!"), "not a valid"),
    (lambda x: x.replace("IDPSSODescriptor", "SPSSODescriptor"), "IDPSSODescriptor"),
    (lambda x: x[:200], "well-formed"),
    (lambda x: "", "empty"),
    (lambda x: '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e "x">]><d>&e;</d>', "DTD"),
    (lambda x: "<html><body>login page</body></html>", "not SAML"),
], ids=["no-entity-id", "no-sso-endpoint", "no-signing-cert", "bad-cert", "sp-metadata", "truncated", "empty",
        "entities", "html"])
def test_invalid_idp_metadata_is_refused(entra_metadata: str, mutate: Any, message: str) -> None:
    with pytest.raises(SsoError) as exc:
        parse_idp_metadata(mutate(entra_metadata))
    assert exc.value.reason == "invalid_config" and message in exc.value.message


def test_round_trip_and_public_view(storage: Storage, entra_metadata: str) -> None:
    tenant = storage.create_tenant("contoso", {"extensions": []})
    settings = SsoSettings(
        oidc=OidcSettings(discovery_url=DISCOVERY, client_id="app-id", client_secret="s3cr3t-value"),
        saml=SamlSettings(idp_metadata_xml=entra_metadata, link_from="nameid", link_attribute="userName"))
    saved = save_sso_settings(storage, tenant, settings)
    assert saved.settings["extensions"] == []                  # other settings kept
    loaded = load_sso_settings(storage.get_tenant("contoso") or tenant)
    assert loaded == settings
    public = loaded.to_public_json()
    assert public["oidc"]["client_secret_set"] is True and "s3cr3t-value" not in str(public)
    assert "client_secret" not in public["oidc"]
    assert SsoSettings.from_json(settings.to_json()) == settings
    assert load_sso_settings(storage.create_tenant("empty")) == SsoSettings()


@pytest.mark.parametrize(("oidc", "message"), [
    ({"link_claim": "email"}, "e-mail"),
    ({"link_claim": "mail", "link_attribute": "userName"}, "e-mail"),
    ({"link_attribute": "emails"}, "link attribute"),
    ({"discovery_url": "ftp://x/y"}, "https"),
    ({"discovery_url": "http://login.example.com/.well-known/openid-configuration"}, "https"),
    ({"client_id": " "}, "client id"),
    ({"scopes": "profile email"}, "openid"),
], ids=["email", "mail", "emails-attribute", "bad-url", "plain-http", "no-client-id", "no-openid-scope"])
def test_invalid_oidc_settings_are_refused(storage: Storage, oidc: dict[str, Any], message: str) -> None:
    tenant = storage.create_tenant("contoso")
    base: dict[str, Any] = {"discovery_url": DISCOVERY, "client_id": "app"}
    with pytest.raises(SsoError) as exc:
        save_sso_settings(storage, tenant, SsoSettings(oidc=OidcSettings(**{**base, **oidc})))
    assert exc.value.reason == "invalid_config" and message in exc.value.message
    assert "sso" not in (storage.get_tenant("contoso") or tenant).settings          # nothing stored


def test_saml_settings_refuse_email_links_and_bad_metadata(entra_metadata: str) -> None:
    with pytest.raises(SsoError, match="e-mail"):
        SamlSettings(idp_metadata_xml=entra_metadata,
                     link_from="http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress").validate()
    with pytest.raises(SsoError, match="IdP metadata"):
        SamlSettings(idp_metadata_xml="<x/>").validate()
    with pytest.raises(SsoError, match="clock skew"):
        SamlSettings(idp_metadata_xml=entra_metadata, clock_skew_seconds=3600).validate()


@pytest.mark.parametrize("doc", [
    "not an object", {"oidc": "x"}, {"oidc": {"client_id": "x"}}, {"oidc": {"discovery_url": DISCOVERY,
                                                                            "client_id": "x", "typo": 1}},
    {"ldap": {}}, {"oidc": {"discovery_url": DISCOVERY, "client_id": "x", "jit": "yes"}},
    {"oidc": {"discovery_url": DISCOVERY, "client_id": 5}},
    {"oidc": {"discovery_url": DISCOVERY, "client_id": "x", "allowed_tenant_ids": "abc"}},
])
def test_malformed_json_is_invalid_config(doc: Any) -> None:
    with pytest.raises(SsoError) as exc:
        SsoSettings.from_json(doc)
    assert exc.value.reason == "invalid_config"


def test_allowed_tenant_ids_are_normalised() -> None:
    s = SsoSettings.from_json({"oidc": {"discovery_url": DISCOVERY, "client_id": "x", "multi_tenant": True,
                                        "allowed_tenant_ids": [" AAAA-1 ", "bbbb-2"]}})
    assert s.oidc is not None and s.oidc.allowed_tenant_ids == ("aaaa-1", "bbbb-2")
    assert s.to_json()["oidc"]["allowed_tenant_ids"] == ["aaaa-1", "bbbb-2"]
