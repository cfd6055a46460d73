"""Validation of uploaded SAML IdP metadata (SAML Metadata 2.0 §2.4.3 ``IDPSSODescriptor``), before it is stored.

Entra ID's federation metadata (``…/federationmetadata/2007-06/federationmetadata.xml``) is an
``EntityDescriptor`` carrying a ``ds:Signature``, WS-Federation ``RoleDescriptor``s and one
``IDPSSODescriptor`` with ``KeyDescriptor use="signing"`` and ``SingleSignOnService`` endpoints for the
HTTP-Redirect and HTTP-POST bindings. Parsed with defusedxml (no entities, no external references) because the
document comes from an administrator's upload.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from xml.etree.ElementTree import Element

from cryptography import x509
from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from scimgrip.sso.errors import SsoError

MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
MAX_METADATA_BYTES = 1_000_000


def _fail(message: str) -> SsoError:
    return SsoError("invalid_config", f"IdP metadata: {message}")


def _idp_descriptor(root: Element) -> tuple[str, Element]:
    if root.tag == f"{{{MD}}}EntityDescriptor":
        entity = root
    elif root.tag == f"{{{MD}}}EntitiesDescriptor":
        found = root.find(f"{{{MD}}}EntityDescriptor")
        if found is None:
            raise _fail("the EntitiesDescriptor holds no EntityDescriptor")
        entity = found
    else:
        raise _fail("the document is not SAML 2.0 metadata (no md:EntityDescriptor)")
    entity_id = (entity.get("entityID") or "").strip()
    if not entity_id:
        raise _fail("the EntityDescriptor has no entityID")
    idp = entity.find(f"{{{MD}}}IDPSSODescriptor")
    if idp is None:
        raise _fail("no IDPSSODescriptor: this is not an identity provider's metadata")
    return entity_id, idp


def parse_idp_metadata(xml: str) -> dict[str, Any]:
    """Check that ``xml`` describes a usable IdP and return its essentials:
    ``{"entity_id", "sso_redirect_url", "sso_post_url", "signing_certs": [base64 DER], "cert_not_after": [iso]}``.

    Raises ``SsoError("invalid_config")`` naming what is missing (entity id, SSO endpoint, signing certificate).
    """
    if not isinstance(xml, str) or not xml.strip():
        raise _fail("empty document")
    if len(xml.encode()) > MAX_METADATA_BYTES:
        raise _fail("larger than 1 MB")
    try:
        root = SafeET.fromstring(xml.strip().encode())
    except DefusedXmlException as exc:
        raise _fail("entities and DTDs are not allowed") from exc
    except SafeET.ParseError as exc:
        raise _fail(f"not well-formed XML ({exc})") from exc
    entity_id, idp = _idp_descriptor(root)
    endpoints: dict[str, str] = {}
    for sso in idp.findall(f"{{{MD}}}SingleSignOnService"):
        binding, location = sso.get("Binding"), (sso.get("Location") or "").strip()
        if binding and location and binding not in endpoints:
            endpoints[binding] = location
    if BINDING_REDIRECT not in endpoints and BINDING_POST not in endpoints:
        raise _fail("no SingleSignOnService with the HTTP-Redirect or HTTP-POST binding")
    certs: list[str] = []
    not_after: list[str] = []
    for kd in idp.findall(f"{{{MD}}}KeyDescriptor"):
        if kd.get("use", "signing") != "signing":
            continue
        for node in kd.iter(f"{{{DS}}}X509Certificate"):
            text = "".join((node.text or "").split())
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise _fail("a signing certificate is not a valid base64 X.509 certificate") from exc
            certs.append(text)
            not_after.append(cert.not_valid_after_utc.isoformat())
    if not certs:
        raise _fail("no signing certificate (KeyDescriptor use=\"signing\" with ds:X509Certificate)")
    return {"entity_id": entity_id, "sso_redirect_url": endpoints.get(BINDING_REDIRECT),
            "sso_post_url": endpoints.get(BINDING_POST), "signing_certs": certs, "cert_not_after": not_after}
