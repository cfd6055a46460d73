"""The SAML service provider against a pysaml2 IdP with its own certificate (tests/sso/idp.py): SP- and
IdP-initiated logins, and each refusal (signature, audience, destination, time, replay) with its reason."""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from scimgrip.sso.config import SamlSettings
from scimgrip.sso.errors import SsoError
from scimgrip.sso.saml import SamlServiceProvider
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.sso_store import SqlReplayCache
from tests.sso.idp import SamlTestIdp, tamper_response

BASE = "https://scimgrip.test/sso/contoso/saml"
OID = "http://schemas.microsoft.com/identity/claims/objectidentifier"


class MemoryReplay:
    def __init__(self) -> None:
        self.keys: dict[str, float] = {}

    def seen_once(self, key: str, expires_at: float) -> bool:
        if key in self.keys:
            return False
        self.keys[key] = expires_at
        return True


def make_sp(idp: SamlTestIdp, entity_id: str = f"{BASE}/metadata", **settings: Any) -> SamlServiceProvider:
    return SamlServiceProvider(SamlSettings(idp_metadata_xml=idp.metadata_xml(), **settings),
                               sp_entity_id=entity_id, acs_url=f"{BASE}/acs", metadata_url=f"{BASE}/metadata")


@pytest.fixture(scope="module")
def sp(saml_idp: SamlTestIdp) -> SamlServiceProvider:
    provider = make_sp(saml_idp)
    saml_idp.register_sp(provider.metadata_xml())
    return provider


@pytest.fixture
def replay() -> MemoryReplay:
    return MemoryReplay()


def respond(idp: SamlTestIdp, sp: SamlServiceProvider, name_id: str = "alice@contoso.test", **kw: Any) -> str:
    return idp.login_response(sp.metadata_xml(), sp.acs_url, name_id, kw.pop("attributes", {OID: ["oid-alice"]}),
                              **kw)


def refused(sp: SamlServiceProvider, response: str, request_id: str | None = None,
            replay: Any = None) -> str:
    with pytest.raises(SsoError) as exc:
        sp.complete(response, request_id, replay=replay or MemoryReplay())
    return exc.value.reason


# -- metadata and requests -------------------------------------------------------------------------------------
def test_sp_metadata(sp: SamlServiceProvider) -> None:
    xml = sp.metadata_xml()
    assert f'entityID="{BASE}/metadata"' in xml
    assert f'Location="{BASE}/acs"' in xml and "HTTP-POST" in xml
    assert 'AuthnRequestsSigned="false"' in xml and 'WantAssertionsSigned="true"' in xml


def test_begin_builds_a_redirect_authn_request(saml_idp: SamlTestIdp, sp: SamlServiceProvider) -> None:
    url, request_id = sp.begin("back/to/console")
    assert url.startswith(saml_idp.sso_url + "?")
    query = parse_qs(urlsplit(url).query)
    assert query["RelayState"] == ["back/to/console"]
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15).decode()
    assert f'ID="{request_id}"' in xml and f"{BASE}/metadata" in xml and f'"{BASE}/acs"' in xml


# -- happy paths -----------------------------------------------------------------------------------------------
def test_sp_initiated_login_through_the_idp_endpoint(saml_idp: SamlTestIdp, sp: SamlServiceProvider,
                                                     replay: MemoryReplay) -> None:
    """Redirect to the IdP's HTTP endpoint, read the POST form it answers with, complete."""
    url, request_id = sp.begin("relay-1")
    saml_idp.next_user = {"name_id": "bob@contoso.test", "attributes": {OID: ["oid-bob"]}}
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and 'id="saml-continue"' in page.text
    form = dict(_hidden_inputs(page.text))
    assert form["RelayState"] == "relay-1"
    login = sp.complete(form["SAMLResponse"], request_id, replay=replay)
    assert login["name_id"] == "bob@contoso.test"
    assert login["attributes"][OID] == ["oid-bob"]
    assert login["issuer"] == saml_idp.entity_id
    assert login["name_id_format"] == "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    assert login["assertion_id"] and login["session_index"] and login["not_on_or_after"] > time.time()


def test_idp_initiated_login(saml_idp: SamlTestIdp, sp: SamlServiceProvider, replay: MemoryReplay) -> None:
    login = sp.complete(respond(saml_idp, sp), None, replay=replay)
    assert login["name_id"] == "alice@contoso.test"
    assert sp.client.users.cache._db == {}       # pysaml2 keeps no identity per login in the shared client


def test_the_injected_clock_governs_the_time_checks(saml_idp: SamlTestIdp) -> None:
    late = SamlServiceProvider(SamlSettings(idp_metadata_xml=saml_idp.metadata_xml()),
                               sp_entity_id=f"{BASE}/metadata", acs_url=f"{BASE}/acs", metadata_url=f"{BASE}/metadata",
                               clock=lambda: time.time() + 3600)
    assert refused(late, respond(saml_idp, late)) == "expired"


def test_response_signed_only_is_accepted_when_assertions_need_not_be(saml_idp: SamlTestIdp) -> None:
    lenient = make_sp(saml_idp, want_assertions_signed=False)
    response = respond(saml_idp, lenient, sign_assertion=False, sign_response=True)
    assert lenient.complete(response, None, replay=MemoryReplay())["name_id"] == "alice@contoso.test"
    assert refused(lenient, respond(saml_idp, lenient, sign_assertion=False, sign_response=False)) == \
        "bad_signature"


@pytest.mark.parametrize("offset", [-360, 100], ids=["idp-clock-behind", "idp-clock-ahead"])
def test_clock_skew_within_bounds_is_tolerated(saml_idp: SamlTestIdp, sp: SamlServiceProvider, offset: int) -> None:
    """Lifetime 300 s, skew 120 s: an IdP 6 minutes behind (expired 60 s ago) or 100 s ahead still passes."""
    response = respond(saml_idp, sp, clock_offset_seconds=offset)
    assert sp.complete(response, None, replay=MemoryReplay())["name_id"]


# -- refusals --------------------------------------------------------------------------------------------------
def test_tampered_nameid_is_refused(saml_idp: SamlTestIdp, sp: SamlServiceProvider) -> None:
    response = tamper_response(respond(saml_idp, sp), "alice@contoso.test", "mallory@contoso.test")
    assert refused(sp, response) == "bad_signature"


def test_tampered_attribute_is_refused(saml_idp: SamlTestIdp, sp: SamlServiceProvider) -> None:
    assert refused(sp, tamper_response(respond(saml_idp, sp), "oid-alice", "oid-admin")) == "bad_signature"


def test_unsigned_and_response_only_signed_are_refused(saml_idp: SamlTestIdp, sp: SamlServiceProvider) -> None:
    assert refused(sp, respond(saml_idp, sp, sign_assertion=False, sign_response=False)) == "bad_signature"
    assert refused(sp, respond(saml_idp, sp, sign_assertion=False, sign_response=True)) == "bad_signature"


def test_signed_by_another_idp_is_refused(sp: SamlServiceProvider, tmp_path: Path) -> None:
    impostor = SamlTestIdp(tmp_path, entity_id=None)
    try:
        # same entity id as the trusted IdP would need a different key: reuse its name, sign with the impostor's
        impostor.entity_id = sp.idp["entity_id"]
        response = impostor.login_response(sp.metadata_xml(), sp.acs_url, "alice@contoso.test", {})
    finally:
        impostor.stop()
    assert refused(sp, response) == "bad_signature"


def test_wrong_audience_is_refused(saml_idp: SamlTestIdp, sp: SamlServiceProvider) -> None:
    other = make_sp(saml_idp, entity_id="https://other.test/saml/metadata")
    response = saml_idp.login_response(other.metadata_xml(), sp.acs_url, "alice@contoso.test", {})
    assert refused(sp, response) == "wrong_audience"


def test_wrong_destination_is_refused(saml_idp: SamlTestIdp, sp: SamlServiceProvider) -> None:
    response = respond(saml_idp, sp, destination="https://other.test/acs")
    assert refused(sp, response) == "wrong_destination"


@pytest.mark.parametrize(("offset", "expected"), [(-3600, "expired"), (-500, "expired"), (400, "not_yet_valid")],
                         ids=["an-hour-old", "beyond-skew", "from-the-future"])
def test_out_of_time_responses_are_refused(saml_idp: SamlTestIdp, sp: SamlServiceProvider, offset: int,
                                           expected: str) -> None:
    assert refused(sp, respond(saml_idp, sp, clock_offset_seconds=offset)) == expected


def test_in_response_to_must_match_the_request(saml_idp: SamlTestIdp, sp: SamlServiceProvider) -> None:
    _, request_id = sp.begin(None)
    response = respond(saml_idp, sp, in_response_to="id-someone-elses-request")
    assert refused(sp, response, request_id) == "bad_state"
    # a solicited response may not be replayed as an IdP-initiated one, nor an unsolicited one answer a request
    assert refused(sp, respond(saml_idp, sp, in_response_to=request_id), None) == "bad_state"
    assert refused(sp, respond(saml_idp, sp), request_id) == "bad_state"


def test_stripped_envelope_in_response_to_does_not_make_it_unsolicited(saml_idp: SamlTestIdp) -> None:
    """Only the assertion signed: removing the envelope's InResponseTo leaves the signature intact, but the
    signed SubjectConfirmationData still names the request, so it is no IdP-initiated login."""
    sp = make_sp(saml_idp)
    _, request_id = sp.begin(None)
    response = respond(saml_idp, sp, in_response_to=request_id, sign_response=False)
    xml = base64.b64decode(response).decode()
    envelope_end = xml.index(">", xml.index("Response"))
    head = xml[:envelope_end].replace(f' InResponseTo="{request_id}"', "")
    stripped = base64.b64encode((head + xml[envelope_end:]).encode()).decode()
    assert refused(sp, stripped, None) == "bad_state"
    assert sp.complete(response, request_id, replay=MemoryReplay())["name_id"]        # the genuine one passes


def test_replayed_assertion_is_refused(saml_idp: SamlTestIdp, sp: SamlServiceProvider, storage: Storage) -> None:
    cache = SqlReplayCache(storage)
    response = respond(saml_idp, sp)
    assert sp.complete(response, None, replay=cache)["name_id"]
    assert refused(sp, response, replay=cache) == "replayed"


@pytest.mark.parametrize("garbage", ["", "!!!", base64.b64encode(b"<not-saml/>").decode(),
                                     base64.b64encode(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>"
                                                      b"<x>&a;</x>").decode()])
def test_garbage_is_a_bad_response(sp: SamlServiceProvider, garbage: str) -> None:
    assert refused(sp, garbage) == "bad_response"


def _hidden_inputs(page: str) -> Iterator[tuple[str, str]]:
    import html
    import re
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page):
        yield name, html.unescape(value)
