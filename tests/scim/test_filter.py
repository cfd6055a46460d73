"""Filter grammar and in-memory evaluation (RFC 7644 §3.4.2.2), including the cases scim2-filter-parser gets
wrong (stack-notes §6.1: ``active eq true``, LIKE wildcards, escaped quotes, unquoted values)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scimgrip.scim.errors import InvalidFilter, ScimError
from scimgrip.scim.filter import (
    MAX_FILTER_DEPTH,
    And,
    Compare,
    Not,
    Or,
    Present,
    ValuePath,
    evaluate,
    parse_and_bind,
    parse_filter,
    to_string,
)
from scimgrip.scim.schema import CORE_GROUP, CORE_USER, DEFAULT_REGISTRY, ENTERPRISE_USER

R = DEFAULT_REGISTRY

BJENSEN = {
    "userName": "BJensen@Example.com",
    "externalId": "Ext-1",
    "active": True,
    "title": "Tour Guide",
    "name": {"givenName": "Barbara", "familyName": "Jensen"},
    "emails": [{"type": "work", "value": "bjensen@example.com", "primary": True},
               {"type": "home", "value": "babs@jensen.org"}],
    "x509Certificates": [],
    ENTERPRISE_USER: {"employeeNumber": "701984", "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}},
    "meta": {"created": "2011-08-01T18:29:49.793Z", "lastModified": "2011-08-01T21:32:44.882Z"},
}


def match(flt: str, doc: dict = BJENSEN, rt: str = "User") -> bool:
    core = CORE_USER if rt == "User" else CORE_GROUP
    return evaluate(parse_and_bind(flt, R, rt), doc, core)


@pytest.mark.parametrize(("flt", "expected"), [
    ('userName eq "bjensen@example.com"', True),            # caseExact false
    ('USERNAME EQ "BJENSEN@EXAMPLE.COM"', True),            # names and operators case-insensitive
    ('externalId eq "ext-1"', False),                       # caseExact true
    ('externalId eq "Ext-1"', True),
    ("active eq true", True),
    ("active eq false", False),
    ("active ne false", True),
    ('userName co "%"', False),                             # wildcards are literal
    ('userName co "_"', False),
    ('userName sw "bjen"', True),
    ('userName ew ".COM"', True),
    ('title pr', True),
    ('nickName pr', False),
    ('x509Certificates pr', False),                         # empty list is not present
    ('name.familyName eq "jensen"', True),
    ('emails[type eq "work"].value eq "bjensen@example.com"', True),  # Entra's form
    ('emails[type eq "home"].value eq "bjensen@example.com"', False),
    ('emails[type eq "work" and primary eq true]', True),
    ('emails[type eq "home" and primary eq true]', False),
    ('emails.value co "jensen.org"', True),
    ('emails co "jensen.org"', True),                       # multi-valued without sub → value
    ('emails.type eq "work" and emails.value ew "org"', True),  # RFC: not necessarily the same element
    ('meta.lastModified gt "2011-05-13T04:42:34Z"', True),
    ('meta.lastModified lt "2011-05-13T04:42:34Z"', False),
    ('meta.created ge "2011-08-01T18:29:49.793Z"', True),
    (f'{ENTERPRISE_USER}:employeeNumber eq "701984"', True),
    (f'{ENTERPRISE_USER}:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d"', True),
    (f'{CORE_USER}:userName sw "B"', True),
    ('title eq "Tour Guide" and (userName sw "x" or name.givenName eq "barbara")', True),
    ('not (title eq "Tour Guide")', False),
    ('not(title pr) or active eq true', True),
    ('userName eq null', False),
    ('nickName eq null', True),
    ('title gt "A"', True),
])
def test_evaluation(flt: str, expected: bool) -> None:
    assert match(flt) is expected


def test_escaped_quote_is_part_of_the_value() -> None:
    node = parse_filter('userName eq "x\\" or 1=1 --"')
    assert isinstance(node, Compare) and node.value == 'x" or 1=1 --'


def test_precedence_not_and_or() -> None:
    node = parse_filter('a eq 1 or b eq 2 and not (c pr)')
    assert isinstance(node, Or) and isinstance(node.right, And) and isinstance(node.right.right, Not)


def test_value_path_with_trailing_comparison_is_one_element() -> None:
    node = parse_filter('emails[type eq "work"].value eq "x"')
    assert isinstance(node, ValuePath) and isinstance(node.filter, And)


def test_numbers_and_literals() -> None:
    n = parse_filter("x eq 12")
    assert isinstance(n, Compare) and n.value == 12
    n = parse_filter("x eq -1.5e3")
    assert isinstance(n, Compare) and float(n.value) == -1500.0  # type: ignore[arg-type]
    assert isinstance(parse_filter("x pr"), Present)


def test_unquoted_values_only_by_tolerance() -> None:
    with pytest.raises(InvalidFilter):
        parse_filter("externalId eq jyoung")
    node = parse_filter("externalId eq jyoung", unquoted_values=True)
    assert isinstance(node, Compare) and node.value == "jyoung"


@pytest.mark.parametrize("flt", [
    "", "userName", 'userName eq', 'userName eq "x" and', '(userName eq "x"', 'userName eq "x")',
    'userName like "x"', '"x" eq userName', 'emails[type eq "work"', 'emails[emails[type eq "a"]]',
    'userName eq "unterminated', "userName eq 'single'", "a.b.c eq 1", 'nosuch eq "x"', 'name eq "x"',
    'active co "t"', 'active gt true', 'name.nosuch eq "x"', 'userName[type eq "x"]', 'userName gt null',
    'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:nosuch eq "x"', "userName eq \x00",
    r'userName eq "\ud83d lone high surrogate"', r'displayName co "\udc00"',
])
def test_invalid_filters(flt: str) -> None:
    with pytest.raises(InvalidFilter):
        parse_and_bind(flt, R, "User")


def test_bounded_length_depth_and_size() -> None:
    with pytest.raises(InvalidFilter, match="longer"):
        parse_filter('userName eq "' + "a" * 5000 + '"')
    deep = "(" * (MAX_FILTER_DEPTH + 1) + 'userName eq "x"' + ")" * (MAX_FILTER_DEPTH + 1)
    with pytest.raises(InvalidFilter, match="deeper"):
        parse_filter(deep)
    nested_not = "not (" * 30 + "a pr" + ")" * 30
    with pytest.raises(InvalidFilter):
        parse_filter(nested_not)
    wide = " or ".join(["a pr"] * 300)
    with pytest.raises(InvalidFilter, match="more than"):
        parse_filter(wide)


def test_group_members_filter() -> None:
    doc = {"displayName": "G", "members": [{"value": "u1"}, {"value": "u2"}]}
    assert match('members[value eq "u2"]', doc, "Group")
    assert match('members eq "u1"', doc, "Group")
    assert not match('members.value eq "u3"', doc, "Group")


def test_round_trip_to_string() -> None:
    text = 'emails[type eq "work"].value eq "x"'
    node = parse_filter(text)
    assert parse_filter(to_string(node)) == node


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('abeqnotrp ()[]".:-1_$\\')), max_size=60))
def test_random_text_never_raises_anything_but_scim_errors(text: str) -> None:
    try:
        node = parse_and_bind(text, R, "User")
    except ScimError:
        return
    evaluate(node, BJENSEN, CORE_USER)
