"""Validation and normalisation of POST/PUT bodies (RFC 7643 §2–4, RFC 7644 §3.3) and projections."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scimgrip.scim.errors import InvalidSyntax, InvalidValue, ScimError
from scimgrip.scim.projection import ALL, etag, parse_etag, parse_projection, render, wants
from scimgrip.scim.resource import normalize_resource
from scimgrip.scim.schema import CORE_GROUP, CORE_USER, DEFAULT_REGISTRY, ENTERPRISE_USER
from scimgrip.scim.tolerance import DEFAULT_POLICY, STRICT_POLICY

R = DEFAULT_REGISTRY


def test_canonical_names_values_verbatim_and_readonly_ignored() -> None:
    body = {
        "schemas": [CORE_USER.upper(), ENTERPRISE_USER],
        "USERNAME": " Alice@Contoso.com ",
        "id": "client-chosen", "meta": {"resourceType": "User"}, "groups": [{"value": "g"}],
        "Name": {"GivenName": "Alice"},
        "phoneNumbers": [{"type": "work", "value": "+31 (0)20 123 45 67"}],
        "password": "secret",
        ENTERPRISE_USER.lower(): {"Department": "R&D"},
        "roles": [],
    }
    norm = normalize_resource(body, R, "User", DEFAULT_POLICY)
    assert norm.doc == {
        "userName": " Alice@Contoso.com ",
        "name": {"givenName": "Alice"},
        "phoneNumbers": [{"type": "work", "value": "+31 (0)20 123 45 67"}],
        ENTERPRISE_USER: {"department": "R&D"},
    }


def test_string_booleans_and_manager_string_are_tolerated_only_by_policy() -> None:
    body = {"userName": "a", "active": "False", ENTERPRISE_USER: {"manager": "m-1"}}
    norm = normalize_resource(body, R, "User", DEFAULT_POLICY)
    assert norm.doc["active"] is False and norm.doc[ENTERPRISE_USER]["manager"] == {"value": "m-1"}
    with pytest.raises(InvalidValue):
        normalize_resource(body, R, "User", STRICT_POLICY)


def test_unknown_schema_urn_ignored_by_policy() -> None:
    body = {"schemas": [CORE_GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "displayName": "G", "members": [{"$ref": None, "value": "u1"}, {"value": "u1"}]}
    norm = normalize_resource(body, R, "Group", DEFAULT_POLICY)
    assert norm.doc == {"displayName": "G"} and norm.members == ["u1"]
    with pytest.raises(InvalidSyntax):
        normalize_resource(body, R, "Group", STRICT_POLICY)


def test_kpn_grip_alternate_email_type() -> None:
    body = {"userName": "a", "emails": [{"type": "work", "value": "a@x"}, {"type": "alternate", "value": "b@x"}]}
    assert len(normalize_resource(body, R, "User", DEFAULT_POLICY).doc["emails"]) == 2
    with pytest.raises(InvalidValue):
        normalize_resource(body, R, "User", STRICT_POLICY)


@pytest.mark.parametrize("body", [
    [], "x", {"userName": ""}, {"userName": None}, {"displayName": "no userName"}, {"userName": ["a"]},
    {"userName": "a", "emails": {"value": "x"}}, {"userName": "a", "emails": ["x"]},
    {"userName": "a", "name": "Alice"}, {"userName": "a", "active": 1}, {"userName": "a", "nope": 1},
    {"userName": "a", "schemas": "x"}, {"userName": "a", "schemas": [CORE_GROUP]},
    {"userName": "a", "urn:example:unknown": {"x": 1}}, {"userName": "a\x00"},
    {"userName": "a", "x509Certificates": [{"value": "not base64!"}]},
])
def test_invalid_bodies(body: Any) -> None:
    with pytest.raises(ScimError) as info:
        normalize_resource(body, R, "User", DEFAULT_POLICY)
    assert info.value.status == 400 and info.value.detail


def test_extension_file(tmp_path: Path) -> None:
    ext = {"id": "urn:example:params:scim:schemas:extension:acme:2.0:User", "name": "Acme",
           "attributes": [{"name": "badge", "type": "integer", "multiValued": False}]}
    f = tmp_path / "ext.json"
    f.write_text(json.dumps(ext))
    reg = R.with_extension_file(f)
    norm = normalize_resource({"userName": "a", ext["id"]: {"BADGE": 7}}, reg, "User", DEFAULT_POLICY)
    assert norm.doc[ext["id"]] == {"badge": 7}
    with pytest.raises(InvalidValue):
        normalize_resource({"userName": "a", ext["id"]: {"badge": "seven"}}, reg, "User", DEFAULT_POLICY)


@dataclass
class FakeResource:
    id: str
    resource_type: str
    doc: dict[str, Any]
    version: int = 3
    created: dt.datetime = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    last_modified: dt.datetime = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    members: list[Any] | None = None
    groups: list[Any] | None = field(default=None)


def test_render_and_projection() -> None:
    res = FakeResource("u1", "User", {"userName": "a", "name": {"givenName": "A", "familyName": "B"},
                                      "emails": [{"type": "work", "value": "a@x"}],
                                      ENTERPRISE_USER: {"manager": {"value": "m"}}})
    full = render(res, R, "https://h/scim/v2/tenants/t")
    assert full["schemas"] == [CORE_USER, ENTERPRISE_USER]
    assert full["meta"] == {"resourceType": "User", "created": "2026-01-02T03:04:05.678Z",
                            "lastModified": "2026-01-02T03:04:05.678Z",
                            "location": "https://h/scim/v2/tenants/t/Users/u1", "version": 'W/"3"'}
    p = parse_projection("name.givenName,EMAILS.value", None, R, "User")
    assert render(res, R, "", p) == {"schemas": [CORE_USER], "id": "u1", "name": {"givenName": "A"},
                                     "emails": [{"value": "a@x"}]}
    p = parse_projection(None, f"{ENTERPRISE_USER}:manager,meta,name.familyName", R, "User")
    out = render(res, R, "", p)
    assert "meta" not in out and ENTERPRISE_USER not in out and out["name"] == {"givenName": "A"}
    assert render(res, R, "", parse_projection(None, "id", R, "User"))["id"] == "u1"  # returned: always
    assert render(res, R, "", ALL)["id"] == "u1"


def test_wants_members() -> None:
    assert wants(ALL, R, "Group", "members")
    assert not wants(parse_projection(None, "members", R, "Group"), R, "Group", "members")
    assert not wants(parse_projection("displayName", None, R, "Group"), R, "Group", "members")
    assert wants(parse_projection("members.value", None, R, "Group"), R, "Group", "members")


def test_etags() -> None:
    assert etag(5) == 'W/"5"' and parse_etag('W/"5"') == 5 and parse_etag('"5"') == 5 and parse_etag("x") is None


def test_etag_with_non_ascii_digits_is_not_a_version() -> None:
    # found by schemathesis: `If-Match: ³` gave a 500 ("³".isdigit() is True, int("³") raises)
    assert parse_etag("³") is None and parse_etag('W/"²"') is None and parse_etag("٣") is None
