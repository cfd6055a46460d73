"""Attribute mapping: desired values, POST body, PATCH diff, matching (MAP-1…6, EXP-3, MAT-1; T-MAP-1/2/3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scimgrip.engine.config import AttributeMapping, default_group_mappings, default_user_mappings
from scimgrip.engine.mapping import (
    MANAGER_PATH,
    REFERENCE_TARGETS,
    MappingError,
    desired_values,
    match_filter,
    matching_attributes,
    patch_operations,
    schema_case_exact,
    scim_resource,
    source_attributes,
)
from scimgrip.engine.model import SourceObject

CORE = "urn:ietf:params:scim:schemas:core:2.0:User"
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
D = AttributeMapping.direct

BRAM: dict[str, Any] = {
    "objectId": "940eee3c-ba6f-475c-ae84-496e7857dd86", "userPrincipalName": "bram.bos@contoso.example",
    "mailNickname": "bram.bos", "displayName": "Bram Bos", "givenName": "Bram", "surname": "Bos",
    "mail": "bram.bos@contoso.example", "otherMails": ["bram.bos@private.example", "bram@second.example"],
    "telephoneNumber": "+31 30 989 6798", "mobile": "+31 6 1234 5678", "streetAddress": "Stationsplein 12",
    "city": "Utrecht", "state": "Utrecht", "postalCode": "3511 ED", "country": "NL", "employeeId": "E100000",
    "jobTitle": "Chief Executive Officer", "department": "Engineering", "accountEnabled": True,
    "manager": "b938451e-e325-4aa6-b340-6bc44dc2a627",
}


def user(**attrs: Any) -> SourceObject:
    return SourceObject("User", attrs.get("objectId", "u1"), attrs)


# -- the KPN Grip default mapping ---------------------------------------------------------------------------------
def test_kpn_grip_default_mapping_post_body() -> None:
    desired = desired_values(user(**BRAM), default_user_mappings(), creating=True)
    assert len(desired) == 17
    assert desired["active"] is True
    body = scim_resource(desired, "User")
    assert body == {
        "schemas": [CORE, ENT],
        "userName": "bram.bos@contoso.example",
        "displayName": "Bram Bos",
        "active": True,
        "name": {"givenName": "Bram", "familyName": "Bos"},
        "emails": [{"type": "work", "value": "bram.bos@contoso.example"},
                   {"type": "alternate", "value": "bram.bos@private.example"}],
        "phoneNumbers": [{"type": "work", "value": "+31 30 989 6798"},
                         {"type": "mobile", "value": "+31 6 1234 5678"}],
        "addresses": [{"type": "work", "region": "Utrecht", "streetAddress": "Stationsplein 12",
                       "locality": "Utrecht", "postalCode": "3511 ED", "country": "NL"}],
        "externalId": "bram.bos",
        ENT: {"manager": {"value": "b938451e-e325-4aa6-b340-6bc44dc2a627"}, "employeeNumber": "E100000"},
    }
    assert '"active": true' in json.dumps(body)


def test_soft_deleted_user_is_inactive_and_missing_values_are_absent() -> None:
    sparse = {k: BRAM[k] for k in ("objectId", "userPrincipalName", "displayName")}
    desired = desired_values(user(**sparse), default_user_mappings(), creating=True, soft_deleted=True)
    assert desired == {"userName": "bram.bos@contoso.example", "displayName": "Bram Bos", "active": False}
    body = scim_resource(desired, "User")
    assert body["schemas"] == [CORE] and "emails" not in body


def test_is_soft_deleted_from_the_source() -> None:
    assert source_attributes(user(accountEnabled=False))["IsSoftDeleted"] == "True"
    assert source_attributes(user(IsSoftDeleted=True))["IsSoftDeleted"] == "True"
    assert source_attributes(user(accountEnabled=True))["IsSoftDeleted"] == "False"
    assert source_attributes(user(accountEnabled=True), soft_deleted=True)["IsSoftDeleted"] == "True"
    switch = AttributeMapping.expression("active", 'Switch([IsSoftDeleted], , "False", "True", "True", "False")')
    assert desired_values(user(accountEnabled=False), [switch], creating=False) == {"active": False}
    assert desired_values(user(accountEnabled=True), [switch], creating=False) == {"active": True}


# -- the diff -----------------------------------------------------------------------------------------------------
def test_diff_produces_exactly_the_changed_operations() -> None:
    mappings = default_user_mappings()
    exported = desired_values(user(**BRAM), mappings, creating=True)
    assert patch_operations(exported, exported) == []
    changed = {**BRAM, "displayName": "Bram van den Bos", "mobile": "+31 6 0000 0000", "accountEnabled": False,
               "mail": "BRAM.BOS@contoso.example"}   # a case-only change of a caseExact=false value: no op
    ops = patch_operations(desired_values(user(**changed), mappings, creating=False), exported)
    assert ops == [
        {"op": "replace", "path": "displayName", "value": "Bram van den Bos"},
        {"op": "replace", "path": "active", "value": False},
        {"op": "replace", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+31 6 0000 0000"},
    ]


def test_filtered_path_without_a_value_is_added() -> None:
    path = 'phoneNumbers[type eq "mobile"].value'
    assert patch_operations({path: "+31 6"}, {}) == [{"op": "add", "path": path, "value": "+31 6"}]
    assert patch_operations({path: "+31 6"}, {path: "+31 7"}) == [{"op": "replace", "path": path, "value": "+31 6"}]
    assert patch_operations({"title": "CEO"}, {}) == [{"op": "replace", "path": "title", "value": "CEO"}]


def test_manager_patch_uses_the_rfc_object_form() -> None:
    ops = patch_operations({MANAGER_PATH: "new-id"}, {MANAGER_PATH: "old-id"})
    assert ops == [{"op": "replace", "path": MANAGER_PATH, "value": {"value": "new-id"}}]
    assert {MANAGER_PATH, "members"} == REFERENCE_TARGETS


# -- T-MAP-1 / MAP-2 ----------------------------------------------------------------------------------------------
def test_t_map_1_default_only_on_create() -> None:
    m = [D("title", "jobTitle", default="Employee")]
    assert desired_values(user(), m, creating=True) == {"title": "Employee"}
    assert desired_values(user(), m, creating=False) == {}
    assert desired_values(user(jobTitle="CEO"), m, creating=True) == {"title": "CEO"}
    none_kind = [AttributeMapping("title", "None", default="Employee")]
    assert desired_values(user(jobTitle="CEO"), none_kind, creating=True) == {"title": "Employee"}
    assert desired_values(user(jobTitle="CEO"), none_kind, creating=False) == {}


# -- T-MAP-2 / MAP-3 ----------------------------------------------------------------------------------------------
def test_t_map_2_object_add_only_never_in_a_patch() -> None:
    m = [D("title", "jobTitle", flow_type="ObjectAddOnly"), D("displayName", "displayName")]
    assert desired_values(user(jobTitle="CEO", displayName="A"), m, creating=True) == \
        {"title": "CEO", "displayName": "A"}
    desired = desired_values(user(jobTitle="CTO", displayName="B"), m, creating=False)
    assert desired == {"displayName": "B"}
    assert patch_operations(desired, {"title": "CEO", "displayName": "A"}, mappings=m) == \
        [{"op": "replace", "path": "displayName", "value": "B"}]


def test_flow_always_and_attribute_add_only() -> None:
    m = [D("displayName", "displayName", flow_always=True), D("title", "jobTitle", flow_type="AttributeAddOnly")]
    desired = {"displayName": "A", "title": "CTO"}
    assert patch_operations(desired, {"displayName": "A", "title": "CEO"}, mappings=m) == \
        [{"op": "replace", "path": "displayName", "value": "A"}]
    assert patch_operations(desired, {"displayName": "A"}, mappings=m) == [
        {"op": "replace", "path": "displayName", "value": "A"},
        {"op": "replace", "path": "title", "value": "CTO"}]


# -- T-MAP-3 / EXP-3 ----------------------------------------------------------------------------------------------
def test_t_map_3_case_exact() -> None:
    desired, exported = {"nickName": "john"}, {"nickName": "JOHN"}
    assert patch_operations(desired, exported, case_exact=lambda _p: False) == []
    assert patch_operations(desired, exported, case_exact=lambda _p: True) == \
        [{"op": "replace", "path": "nickName", "value": "john"}]
    # default: the target schema's caseExact (userName false, externalId true)
    assert patch_operations({"userName": "john"}, {"userName": "JOHN"}) == []
    assert patch_operations({"externalId": "john"}, {"externalId": "JOHN"}) == \
        [{"op": "replace", "path": "externalId", "value": "john"}]
    assert schema_case_exact('emails[type eq "work"].value') is False
    assert schema_case_exact("externalId") is True
    assert schema_case_exact("urn:ietf:params:scim:schemas:extension:acme:2.0:User:x") is True


def test_to_lower_with_case_exact_target() -> None:
    m = [AttributeMapping.expression("nickName", "ToLower([givenName])")]
    desired = desired_values(user(givenName="JOHN"), m, creating=False)
    assert desired == {"nickName": "john"}
    assert patch_operations(desired, {"nickName": "JOHN"}) == []
    assert len(patch_operations(desired, {"nickName": "JOHN"}, case_exact=lambda p: p == "nickName")) == 1


# -- MAP-5 nulls, IGNORE ------------------------------------------------------------------------------------------
def test_null_is_not_provisioned_unless_flow_null() -> None:
    plain = [D(f"{ENT}:department", "department")]
    flow_null = [D(f"{ENT}:department", "department", flow_null=True)]
    exported = {f"{ENT}:department": "Sales"}
    cleared = user(department="")
    assert desired_values(cleared, plain, creating=False) == {}
    assert patch_operations(desired_values(cleared, plain, creating=False), exported) == []
    desired = desired_values(cleared, flow_null, creating=False)
    assert desired == {f"{ENT}:department": None}
    assert patch_operations(desired, exported) == [{"op": "remove", "path": f"{ENT}:department"}]
    assert patch_operations(desired, {}) == []                       # nothing to remove
    assert scim_resource({"userName": "a", **desired}, "User") == {"schemas": [CORE], "userName": "a"}


def test_ignore_flow_if_null_or_empty_drops_the_attribute() -> None:
    m = [AttributeMapping.expression(f"{ENT}:department", "IgnoreFlowIfNullOrEmpty([department])", flow_null=True)]
    assert desired_values(user(), m, creating=True) == {}
    assert desired_values(user(), m, creating=False) == {}
    assert desired_values(user(department="HR"), m, creating=False) == {f"{ENT}:department": "HR"}


# -- MAP-1 kinds and type conversion ------------------------------------------------------------------------------
def test_constant_and_conversions() -> None:
    m = [AttributeMapping.constant_value("userType", "Employee"), D("active", "flag"), D("title", "count"),
         D("nickName", "accountEnabled")]
    assert desired_values(user(flag="False", count=7, accountEnabled=True), m, creating=False) == \
        {"userType": "Employee", "active": False, "title": "7", "nickName": "True"}
    with pytest.raises(MappingError) as info:
        desired_values(user(flag="maybe"), [D("active", "flag")], creating=False)
    assert info.value.target == "active"


def test_multi_valued_source_into_single_valued_target() -> None:
    m = [D('emails[type eq "alternate"].value', "otherMails")]
    assert desired_values(user(otherMails=["a@x"]), m, creating=False) == {'emails[type eq "alternate"].value': "a@x"}
    with pytest.raises(MappingError, match="single-valued"):
        desired_values(user(otherMails=["a@x", "b@x"]), m, creating=False)


def test_expression_failure_is_a_mapping_error() -> None:
    m = [AttributeMapping.expression("displayName", "Join(")]
    with pytest.raises(MappingError) as info:
        desired_values(user(), m, creating=False)
    assert info.value.code == "ExpressionEvaluationFailed"


def test_custom_extension_attribute_in_the_post_body() -> None:
    urn = "urn:ietf:params:scim:schemas:extension:acme:2.0:User"
    body = scim_resource({"userName": "a", f"{urn}:badge": "42"}, "User")
    assert body == {"schemas": [CORE, urn], "userName": "a", urn: {"badge": "42"}}


def test_protocol_core_rejection_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        scim_resource({"displayName": "no userName"}, "User")


# -- groups -------------------------------------------------------------------------------------------------------
def test_group_mapping_post_and_member_diff() -> None:
    group = SourceObject("Group", "g1", {"objectId": "g1", "displayName": "Sales"}, members=("u2", "u1", "u1"))
    desired = desired_values(group, default_group_mappings(), creating=True)
    assert desired == {"displayName": "Sales", "externalId": "g1", "members": ["u1", "u2"]}
    assert scim_resource(desired, "Group") == {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Sales", "externalId": "g1",
        "members": []}
    assert scim_resource(desired, "Group", include_members=True)["members"] == [{"value": "u1"}, {"value": "u2"}]
    ops = patch_operations(desired, {"displayName": "Sales", "externalId": "g1", "members": ["u0", "u1"]},
                           object_type="Group")
    assert ops == [{"op": "add", "path": "members", "value": [{"value": "u2"}]},
                   {"op": "remove", "path": 'members[value eq "u0"]'}]
    add_only = [D("members", "members", flow_type="ValueAddOnly")]
    assert patch_operations({"members": desired["members"]}, {"members": ["u0", "u1"]}, mappings=add_only) == \
        [{"op": "add", "path": "members", "value": [{"value": "u2"}]}]


# -- MAT-1 --------------------------------------------------------------------------------------------------------
def test_matching_attributes_by_priority() -> None:
    m = [D("displayName", "displayName"), D("externalId", "mailNickname", matching_priority=2),
         D("userName", "userPrincipalName", matching_priority=1),
         D('emails[type eq "work"].value', "mail", matching_priority=3)]
    assert [t for t, _ in matching_attributes(m)] == ["userName", "externalId", 'emails[type eq "work"].value']


def test_match_filter_escapes_the_value() -> None:
    assert match_filter("userName", "bram.bos@contoso.example") == 'userName eq "bram.bos@contoso.example"'
    assert match_filter("userName", 'a"b\\c') == 'userName eq "a\\"b\\\\c"'
    assert match_filter('emails[type eq "work"].value', "Renée@x") == 'emails[type eq "work"].value eq "Renée@x"'
    assert match_filter("active", True) == "active eq true"
    assert match_filter("x", 5) == "x eq 5"
    with pytest.raises(ValueError):
        match_filter("userName", None)


def test_post_body_from_a_template_equals_the_direct_build() -> None:
    """scim_resource builds users' POST bodies from a per-shape template; for every user of the shipped sample
    directory (diacritics, missing attributes, disabled users) the body equals the protocol core's direct build."""
    from pathlib import Path

    from scimgrip.engine import mapping
    from scimgrip.engine.expressions import EvalContext
    from scimgrip.engine.mapping import _build_resource

    mapping._resource_template.cache_clear()

    sample = Path(__file__).resolve().parents[2] / "src/scimgrip/engine/sources/sample/directory.json"
    users = json.loads(sample.read_text())["users"]
    shapes = set()
    for u in users:
        obj = SourceObject("User", u["objectId"], {**u, "manager": None})
        desired = desired_values(obj, default_user_mappings(), creating=True, ctx=EvalContext(now=None))
        shapes.add(tuple((p, "" if isinstance(v, str) else v) for p, v in desired.items()))
        assert scim_resource(desired, "User") == _build_resource(desired, "User"), u["objectId"]
    assert len(shapes) > 1
    info = mapping._resource_template.cache_info()
    assert info.misses == len(shapes) and info.hits == len(users) - len(shapes)    # the templates were used
