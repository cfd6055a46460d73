"""PATCH path grammar (RFC 7644 §3.5.2): URN split, canonical names, value filters, errors."""

from __future__ import annotations

import pytest

from scimgrip.scim.errors import InvalidFilter, InvalidPath, ScimError
from scimgrip.scim.filter import Compare, matches_element
from scimgrip.scim.paths import parse_patch_path
from scimgrip.scim.schema import CORE_GROUP, CORE_USER, DEFAULT_REGISTRY, ENTERPRISE_USER

R = DEFAULT_REGISTRY


def p(text: str, rt: str = "User"):  # type: ignore[no-untyped-def]
    return parse_patch_path(text, R, rt)


def test_simple_attribute_canonical_name() -> None:
    path = p("USERNAME")
    assert (path.urn, path.attr, path.sub, path.filter) == (CORE_USER, "userName", None, None)
    assert path.is_core and path.definition.name == "userName" and path.target is path.definition


def test_sub_attribute() -> None:
    path = p("name.GIVENNAME")
    assert (path.attr, path.sub) == ("name", "givenName")
    assert path.sub_definition is not None and path.target.name == "givenName"
    assert path.dotted() == "name.givenName"


def test_enterprise_urn_with_dots_in_version() -> None:
    path = p(f"{ENTERPRISE_USER}:employeeNumber")
    assert (path.urn, path.attr, path.sub, path.is_core) == (ENTERPRISE_USER, "employeeNumber", None, False)


def test_enterprise_urn_sub_attribute() -> None:
    path = p(f"{ENTERPRISE_USER}:manager.value")
    assert (path.urn, path.attr, path.sub) == (ENTERPRISE_USER, "manager", "value")


def test_urn_is_case_insensitive() -> None:
    path = p(f"{ENTERPRISE_USER.upper()}:MANAGER")
    assert (path.urn, path.attr) == (ENTERPRISE_USER, "manager")


def test_core_urn_prefix() -> None:
    path = p(f"{CORE_USER}:name.familyName")
    assert (path.urn, path.attr, path.sub, path.is_core) == (CORE_USER, "name", "familyName", True)


def test_value_filter_and_sub_attribute() -> None:
    path = p('emails[type eq "work"].value')
    assert (path.attr, path.sub) == ("emails", "value")
    assert isinstance(path.filter, Compare) and path.filter.path.attr == "type"
    assert matches_element(path.filter, {"type": "Work", "value": "x"})
    assert not matches_element(path.filter, {"type": "home"})


def test_value_filter_with_bracket_in_string() -> None:
    path = p('emails[value eq "a]b"]')
    assert path.filter is not None and matches_element(path.filter, {"value": "a]b"})


def test_members_filter_on_group() -> None:
    path = p('members[value eq "7f4bc1a3-285e-48ae-8202-5accb43efb0e"]', "Group")
    assert (path.urn, path.attr, path.sub) == (CORE_GROUP, "members", None)
    assert path.filter is not None


def test_complex_filter() -> None:
    path = p('addresses[type eq "work" and primary eq true].streetAddress')
    assert path.sub == "streetAddress"
    assert path.filter is not None
    assert matches_element(path.filter, {"type": "work", "primary": True})
    assert not matches_element(path.filter, {"type": "work"})


def test_common_attributes_resolve() -> None:
    assert p("id").definition.mutability == "readOnly"
    assert p("meta.created").target.mutability == "readOnly"
    assert p("externalId").attr == "externalId"


@pytest.mark.parametrize("text", [
    "", " userName", "userName ", "name..givenName", "name.givenName.x", "emails[type eq \"work\"",
    "emails]", 'emails[type eq "work"]value', 'emails[type eq "work"].', 'emails[type eq "work"].value.x',
    "urn:unknown:schema:attr", ENTERPRISE_USER, f"{ENTERPRISE_USER}:", "1abc", "na me",
    'name.givenName[type eq "x"]', 'emails[type eq "work"][value eq "x"]', 'emails[type[x]]',
])
def test_malformed_paths(text: str) -> None:
    with pytest.raises(InvalidPath):
        p(text)


@pytest.mark.parametrize("text,rt", [
    ("nosuch", "User"), ("name.nosuch", "User"), ("userName.sub", "User"), ("members", "User"),
    ("userName", "Group"), (f"{ENTERPRISE_USER}:employeeNumber", "Group"), ("employeeNumber", "User"),
    ('userName[value eq "x"]', "User"), ('name[givenName eq "x"]', "User"), ('emails[type eq "w"].nosuch', "User"),
])
def test_unknown_attributes_are_invalid_path(text: str, rt: str) -> None:
    with pytest.raises(InvalidPath) as info:
        p(text, rt)
    assert info.value.status == 400 and info.value.scim_type == "invalidPath"


@pytest.mark.parametrize("text", ['emails[type eq]', 'emails[nosuch eq "x"]', 'emails[type zz "x"]', "emails[]",
                                  'emails[type eq "work" and]'])
def test_bad_value_filters_are_invalid_filter(text: str) -> None:
    # RFC 7644 Table 9: invalidFilter applies to "PATCH (Path Filter)"
    with pytest.raises(InvalidFilter):
        p(text)


def test_non_string_path() -> None:
    with pytest.raises(ScimError):
        parse_patch_path(42, R, "User")  # type: ignore[arg-type]


def test_overlong_path() -> None:
    with pytest.raises(InvalidPath):
        p("a" * 5000)
