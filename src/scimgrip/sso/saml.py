"""SAML 2.0 service provider: Web Browser SSO profile (SAML Profiles §4.1), HTTP-Redirect AuthnRequest out,
HTTP-POST Response in.

XML signature verification and the protocol's own checks are pysaml2's (it runs Debian's ``xmlsec1``, the
reference XML-DSig implementation; XML signatures are too easy to get wrong by hand — signature wrapping,
canonicalisation). On top of what pysaml2 accepted, this module re-checks on the *verified* objects what a
login depends on, so each refusal has a precise reason: a signature on the response or the assertion (the
assertion's when ``want_assertions_signed``), ``Destination`` and ``Recipient`` equal to our ACS URL,
``AudienceRestriction`` naming our entity id, ``InResponseTo`` equal to the request we sent (an IdP-initiated
response must carry none), ``NotBefore``/``NotOnOrAfter`` with the configured clock skew, and the assertion ID
consumed once (:class:`ReplayCache`, SAML Profiles §4.1.4.5).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import contextlib
import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from defusedxml import ElementTree as SafeET
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.response import IncorrectlySigned, StatusError, UnsolicitedResponse
from saml2.s_utils import UnknownPrincipal, UnsupportedBinding
from saml2.sigver import SigverError
from saml2.time_util import str_to_time
from saml2.validate import NotValid, ResponseLifetimeExceed, ToEarly

from scimgrip.sso.config import SamlSettings
from scimgrip.sso.errors import SsoError
from scimgrip.sso.idp_metadata import parse_idp_metadata

__all__ = ["ReplayCache", "SamlServiceProvider", "parse_idp_metadata"]

XMLSEC_BINARY = "/usr/bin/xmlsec1"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MAX_RESPONSE_BYTES = 512 * 1024
REPLAY_MIN_SECONDS = 300.0      # an assertion without NotOnOrAfter is remembered this long past the skew


class ReplayCache(Protocol):
    """Remembers single-use keys (``storage.sql.sso_store.SqlReplayCache`` is the shared implementation)."""

    def seen_once(self, key: str, expires_at: float) -> bool:
        """True the first time ``key`` is seen (it is remembered until ``expires_at``), False afterwards."""
        ...


def _epoch(saml_time: str | None) -> float | None:
    return float(calendar.timegm(str_to_time(saml_time))) if saml_time else None


@functools.lru_cache(maxsize=64)
def _client(idp_metadata_xml: str, sp_entity_id: str, acs_url: str, want_assertions_signed: bool,
            skew: int) -> Saml2Client:
    """A pysaml2 client per configuration (parsing metadata costs milliseconds; the web layer builds a service
    provider per request)."""
    config = SPConfig()
    config.load({
        "entityid": sp_entity_id,
        "xmlsec_binary": XMLSEC_BINARY,
        "metadata": {"inline": [idp_metadata_xml]},
        "accepted_time_diff": skew,
        "allow_unknown_attributes": True,
        "service": {"sp": {
            "endpoints": {"assertion_consumer_service": [(acs_url, BINDING_HTTP_POST)]},
            # InResponseTo is checked below against the request id the web layer kept
            "allow_unsolicited": True,
            "want_response_signed": False,
            "want_assertions_signed": want_assertions_signed,
            "want_assertions_or_response_signed": True,
            "authn_requests_signed": False,
        }},
    })
    return Saml2Client(config=config)


class SamlServiceProvider:
    """One tenant's SAML login."""

    def __init__(self, settings: SamlSettings, *, sp_entity_id: str, acs_url: str, metadata_url: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.sp_entity_id = settings.sp_entity_id or sp_entity_id
        self.acs_url = acs_url
        self.metadata_url = metadata_url
        self.clock = clock
        self.idp = parse_idp_metadata(settings.idp_metadata_xml)
        try:
            self.client = _client(settings.idp_metadata_xml, self.sp_entity_id, acs_url,
                                  settings.want_assertions_signed, settings.clock_skew_seconds)
        except Exception as exc:   # noqa: BLE001 - pysaml2 raises many types for a bad document
            raise SsoError("invalid_config", "the IdP metadata could not be loaded") from exc

    def metadata_xml(self) -> str:
        """SP metadata (SAML Metadata §2.4.4): entity id, ACS (HTTP-POST), unsigned AuthnRequests."""
        return str(entity_descriptor(self.client.config).to_string().decode())

    def begin(self, relay_state: str | None) -> tuple[str, str]:
        """An AuthnRequest by HTTP-Redirect (SAML Bindings §3.4): the IdP URL to redirect to, and the request id
        to keep for ``complete``."""
        if not self.idp["sso_redirect_url"]:
            raise SsoError("invalid_config", "the IdP offers no HTTP-Redirect sign-in endpoint")
        try:
            request_id, info = self.client.prepare_for_authenticate(
                entityid=self.idp["entity_id"], relay_state=relay_state or "",
                binding=BINDING_HTTP_REDIRECT, assertion_consumer_service_url=self.acs_url)
        except (UnsupportedBinding, UnknownPrincipal) as exc:
            raise SsoError("invalid_config", "the IdP metadata offers no usable sign-in endpoint") from exc
        location = dict(info["headers"])["Location"]
        return str(location), str(request_id)

    def complete(self, saml_response_b64: str, expected_request_id: str | None,
                 replay: ReplayCache) -> dict[str, Any]:
        """Verify a posted ``SAMLResponse`` and return the login (see the module docstring for the checks)."""
        raw = self._decode(saml_response_b64)
        envelope = self._envelope(raw)
        if envelope["destination"] and envelope["destination"] != self.acs_url:
            raise SsoError("wrong_destination", "the response was sent to another service")
        in_response_to = envelope["in_response_to"]
        if expected_request_id is None and in_response_to:
            raise SsoError("bad_state", "this response answers a sign-in started elsewhere; please start again")
        if expected_request_id is not None and in_response_to != expected_request_id:
            raise SsoError("bad_state", "this response does not answer the sign-in started here; please start "
                                        "again")
        outstanding = {expected_request_id: self.acs_url} if expected_request_id else {}
        try:
            response = self.client.parse_authn_request_response(saml_response_b64, BINDING_HTTP_POST,
                                                                outstanding=outstanding)
        except StatusError as exc:
            raise SsoError("idp_error", "the identity provider refused the sign-in") from exc
        except ResponseLifetimeExceed as exc:
            raise SsoError("expired", "the sign-in response has expired") from exc
        except ToEarly as exc:
            raise SsoError("not_yet_valid", "the sign-in response is not valid yet (check the server clock)") \
                from exc
        except UnsolicitedResponse as exc:
            raise SsoError("bad_state", "this response does not answer the sign-in started here") from exc
        except (SigverError, IncorrectlySigned) as exc:
            raise SsoError("bad_signature", "the response's signature is missing or not valid") from exc
        except Exception as exc:  # noqa: BLE001 - pysaml2 uses bare Exception for some refusals
            text = str(exc)
            if "AudienceRestrictions" in text:
                raise SsoError("wrong_audience", "the response was issued for another service") from exc
            if "Signature" in text or "signature" in text or "signed" in text:
                raise SsoError("bad_signature", "the response's signature is missing or not valid") from exc
            if isinstance(exc, NotValid | ValueError) or "recipient" in text:
                raise SsoError("bad_response", "the sign-in response is not valid") from exc
            raise SsoError("bad_response", "the sign-in response could not be verified") from exc
        if response is None or response.assertion is None:
            raise SsoError("bad_response", "the sign-in response could not be verified")
        # pysaml2 remembers every identity in the (shared, cached) client; our session is the web layer's
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self.client.users.remove_person(response.name_id)
        return self._login(response, replay, expected_request_id)

    # -- helpers -----------------------------------------------------------------------------------------------
    @staticmethod
    def _decode(saml_response_b64: str) -> bytes:
        if not saml_response_b64 or len(saml_response_b64) > MAX_RESPONSE_BYTES * 4 // 3 + 4:
            raise SsoError("bad_response", "missing or oversized SAMLResponse")
        try:
            return base64.b64decode(saml_response_b64, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise SsoError("bad_response", "the SAMLResponse is not base64") from exc

    @staticmethod
    def _envelope(raw: bytes) -> dict[str, str | None]:
        """Destination / InResponseTo of the (not yet verified) response, to refuse early with a precise
        reason; acceptance still requires pysaml2's verification and the checks in :meth:`_login`."""
        try:
            root = SafeET.fromstring(raw)
        except Exception as exc:  # noqa: BLE001 - defusedxml: ParseError, DTD/entity refusals
            raise SsoError("bad_response", "the SAMLResponse is not well-formed XML") from exc
        if root.tag != f"{{{SAMLP}}}Response":
            raise SsoError("bad_response", "the SAMLResponse is not a samlp:Response")
        return {"destination": root.get("Destination"), "in_response_to": root.get("InResponseTo")}

    def _login(self, response: Any, replay: ReplayCache, expected_request_id: str | None) -> dict[str, Any]:
        assertion = response.assertion
        if self.settings.want_assertions_signed and not assertion.signature:
            raise SsoError("bad_signature", "the assertion is not signed")
        if not assertion.signature and not response.response.signature:
            raise SsoError("bad_signature", "neither the response nor the assertion is signed")
        issuer = assertion.issuer.text.strip() if assertion.issuer is not None and assertion.issuer.text else ""
        if issuer != self.idp["entity_id"]:
            raise SsoError("wrong_issuer", "the assertion was issued by another identity provider")
        conditions = assertion.conditions
        audiences = [a.text.strip() for r in (conditions.audience_restriction if conditions else [])
                     for a in r.audience if a.text]
        if self.sp_entity_id not in audiences:
            raise SsoError("wrong_audience", "the response was issued for another service")
        now, skew = self.clock(), self.settings.clock_skew_seconds
        not_before = _epoch(conditions.not_before) if conditions else None
        not_on_or_after = _epoch(conditions.not_on_or_after) if conditions else None
        if not_on_or_after is not None and now >= not_on_or_after + skew:
            raise SsoError("expired", "the sign-in response has expired")
        if not_before is not None and now + skew < not_before:
            raise SsoError("not_yet_valid", "the sign-in response is not valid yet (check the server clock)")
        confirmations = [c.subject_confirmation_data for c in assertion.subject.subject_confirmation
                         if c.subject_confirmation_data is not None]
        if {c.recipient for c in confirmations} - {self.acs_url, None}:
            raise SsoError("wrong_destination", "the assertion is meant for another service")
        # the envelope's InResponseTo is unsigned when only the assertion is: the signed copy must agree, or a
        # solicited assertion could be replayed as an IdP-initiated one by stripping the envelope's attribute
        if any(c.in_response_to != expected_request_id for c in confirmations):
            raise SsoError("bad_state", "this response does not answer the sign-in started here; please start "
                                        "again")
        name_id = assertion.subject.name_id
        if name_id is None or not name_id.text:
            raise SsoError("bad_response", "the assertion names no subject (NameID)")
        attributes: dict[str, list[str]] = {}
        for statement in assertion.attribute_statement:
            for attribute in statement.attribute:
                values = [v.text for v in attribute.attribute_value if v.text is not None]
                attributes.setdefault(attribute.name, []).extend(values)
        expires = max(not_on_or_after or 0.0, now + REPLAY_MIN_SECONDS) + skew
        key = "saml:" + hashlib.sha256(f"{issuer}\n{assertion.id}".encode()).hexdigest()
        if not replay.seen_once(key, expires):
            raise SsoError("replayed", "this sign-in response was already used; please sign in again")
        session_index = next((s.session_index for s in assertion.authn_statement if s.session_index), None)
        return {"name_id": name_id.text.strip(), "name_id_format": name_id.format, "attributes": attributes,
                "assertion_id": assertion.id, "issuer": issuer, "session_index": session_index,
                "not_on_or_after": not_on_or_after}

