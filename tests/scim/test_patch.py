"""RFC 7644 §3.5.2 PATCH semantics, group member deltas, atomicity and robustness (Hypothesis)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scimgrip.scim.errors import (
    InvalidPath,
    InvalidSyntax,
    InvalidValue,
    Mutability,
    NoTarget,
    PayloadTooLarge,
    ScimError,
)
from scimgrip.scim.patch import PATCH_OP_URN, PatchOperation, apply_patch, needs_members, parse_patch_request
from scimgrip.scim.schema import DEFAULT_REGISTRY, ENTERPRISE_USER
from scimgrip.scim.tolerance import DEFAULT_POLICY, STRICT_POLICY, TolerancePolicy
from scimgrip.storage.base import Change, Member, StoredResource

R = DEFAULT_REGISTRY
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
USER: dict[str, Any] = {
    "userName": "bjensen@example.com",
    "name": {"givenName": "Barbara", "familyName": "Jensen"},
    "active": True,
    "emails": [{"type": "work", "value": "bjensen@example.com", "primary": True},
               {"type": "home", "value": "babs@jensen.org"}],
}


def body(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP_URN], "Operations": list(ops)}


def run(doc: dict[str, Any], *ops: dict[str, Any], rt: str = "User", policy: TolerancePolicy = DEFAULT_POLICY,
        members: list[str] | None = None) -> Change:
    parsed = parse_patch_request(body(*ops), policy, max_operations=100, max_members=1000)
    loaded = [Member(m) for m in members] if members is not None else None
    current = StoredResource("id1", rt, copy.deepcopy(doc), 3, NOW, NOW, members=loaded)
    return apply_patch(current, parsed, R, rt, policy)


def user(*ops: dict[str, Any], policy: TolerancePolicy = DEFAULT_POLICY) -> dict[str, Any]:
    return run(USER, *ops, policy=policy).doc


def group(*ops: dict[str, Any], members: list[str] | None = None,
          policy: TolerancePolicy = DEFAULT_POLICY) -> Change:
    return run({"displayName": "Admins"}, *ops, rt="Group", members=members, policy=policy)


# -- parse_patch_request ------------------------------------------------------------------------------------------
class TestParse:
    def test_ok(self) -> None:
        ops = parse_patch_request(body({"op": "Add", "path": "nickName", "value": "Babs"}), DEFAULT_POLICY,
                                  max_operations=10)
        assert ops == [PatchOperation("add", "nickName", "Babs", True, 0)]

    @pytest.mark.parametrize("bad", [
        None, [], "x", {}, {"Operations": []}, {"schemas": "x", "Operations": []},
        {"schemas": ["urn:x"], "Operations": [{"op": "add", "value": {}}]},
        {"schemas": [PATCH_OP_URN]}, {"schemas": [PATCH_OP_URN], "Operations": {}},
        {"schemas": [PATCH_OP_URN], "Operations": ["add"]},
    ])
    def test_bad_structure(self, bad: Any) -> None:
        with pytest.raises(InvalidSyntax):
            parse_patch_request(bad, DEFAULT_POLICY, max_operations=10)

    def test_empty_operations(self) -> None:
        with pytest.raises(InvalidValue):
            parse_patch_request(body(), DEFAULT_POLICY, max_operations=10)

    @pytest.mark.parametrize("op", [{"op": "move", "path": "x"}, {"path": "x", "value": 1}, {"op": 1},
                                    {"op": "add", "path": "x"}, {"op": "replace"}])
    def test_bad_operation(self, op: dict[str, Any]) -> None:
        with pytest.raises(InvalidValue):
            parse_patch_request(body(op), DEFAULT_POLICY, max_operations=10)

    def test_capitalised_op_needs_quirk(self) -> None:
        with pytest.raises(InvalidValue):
            parse_patch_request(body({"op": "Replace", "path": "x", "value": 1}), STRICT_POLICY, max_operations=10)

    @pytest.mark.parametrize("path", [1, "", [], {}])
    def test_bad_path_type(self, path: Any) -> None:
        with pytest.raises(InvalidPath):
            parse_patch_request(body({"op": "add", "path": path, "value": 1}), DEFAULT_POLICY, max_operations=10)

    def test_remove_without_path_is_no_target(self) -> None:
        with pytest.raises(NoTarget):
            parse_patch_request(body({"op": "remove"}), DEFAULT_POLICY, max_operations=10)

    def test_too_many_operations(self) -> None:
        ops = [{"op": "add", "path": "nickName", "value": "x"}] * 11
        with pytest.raises(PayloadTooLarge) as info:
            parse_patch_request(body(*ops), DEFAULT_POLICY, max_operations=10)
        assert info.value.status == 413

    def test_too_many_members(self) -> None:
        many = [{"value": str(i)} for i in range(6)]
        with pytest.raises(PayloadTooLarge):
            parse_patch_request(body({"op": "add", "path": "members", "value": many},
                                     {"op": "replace", "value": {"members": many}}),
                                DEFAULT_POLICY, max_operations=10, max_members=10)
        assert parse_patch_request(body({"op": "add", "path": "members", "value": many}), DEFAULT_POLICY,
                                   max_operations=10, max_members=10)

    def test_case_insensitive_keys(self) -> None:
        ops = parse_patch_request({"SCHEMAS": [PATCH_OP_URN.upper()], "operations": [
            {"OP": "add", "PATH": "nickName", "VALUE": "x"}]}, DEFAULT_POLICY, max_operations=10)
        assert ops[0].path == "nickName" and ops[0].value == "x"


# -- add ---------------------------------------------------------------------------------------------------------
class TestAdd:
    def test_single_valued(self) -> None:
        assert user({"op": "add", "path": "nickName", "value": "Babs"})["nickName"] == "Babs"

    def test_add_overwrites_single_valued(self) -> None:
        assert user({"op": "add", "path": "userName", "value": "new"})["userName"] == "new"

    def test_multi_valued_appends_without_duplicates(self) -> None:
        doc = user({"op": "add", "path": "emails", "value": [
            {"type": "home", "value": "babs@jensen.org"}, {"type": "other", "value": "o@x"}]})
        assert [e["value"] for e in doc["emails"]] == ["bjensen@example.com", "babs@jensen.org", "o@x"]

    def test_complex_merges(self) -> None:
        doc = user({"op": "add", "path": "name", "value": {"middleName": "Jane"}})
        assert doc["name"] == {"givenName": "Barbara", "familyName": "Jensen", "middleName": "Jane"}

    def test_sub_attribute_creates_parent(self) -> None:
        doc = run({"userName": "u"}, {"op": "add", "path": "name.givenName", "value": "B"}).doc
        assert doc["name"] == {"givenName": "B"}

    def test_extension_attribute(self) -> None:
        doc = user({"op": "add", "path": f"{ENTERPRISE_USER}:department", "value": "Tour"})
        assert doc[ENTERPRISE_USER] == {"department": "Tour"}

    def test_pathless_rfc_form(self) -> None:
        doc = user({"op": "add", "value": {"nickName": "Babs", ENTERPRISE_USER: {"costCenter": "4130"},
                                           "emails": [{"type": "other", "value": "o@x"}]}})
        assert doc["nickName"] == "Babs" and doc[ENTERPRISE_USER] == {"costCenter": "4130"}
        assert len(doc["emails"]) == 3

    def test_pathless_dotted_add(self) -> None:  # thomaspoignant/scim-patch#132
        doc = user({"op": "add", "value": {"displayName": "B J", "name.givenName": "Bee", "name.formatted": "Bee J"}})
        assert doc["name"] == {"givenName": "Bee", "familyName": "Jensen", "formatted": "Bee J"}
        assert "name.givenName" not in doc

    def test_pathless_urn_attribute_keys(self) -> None:
        doc = user({"op": "add", "value": {f"{ENTERPRISE_USER}:manager": "m1",
                                           f"{ENTERPRISE_USER}:employeeNumber": "7"}})
        assert doc[ENTERPRISE_USER] == {"manager": {"value": "m1"}, "employeeNumber": "7"}

    def test_dotted_keys_rejected_when_strict(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "add", "value": {"name.givenName": "x"}}, policy=STRICT_POLICY)

    def test_null_value(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "add", "path": "nickName", "value": None})

    def test_manager_forms(self) -> None:
        for value in ("m1", {"value": "m1"}, [{"value": "m1"}]):
            doc = user({"op": "add", "path": f"{ENTERPRISE_USER}:manager", "value": value})
            assert doc[ENTERPRISE_USER]["manager"] == {"value": "m1"}

    def test_manager_sub_value(self) -> None:
        doc = user({"op": "replace", "path": f"{ENTERPRISE_USER}:manager.value", "value": "m2"})
        assert doc[ENTERPRISE_USER]["manager"] == {"value": "m2"}

    def test_manager_bare_string_rejected_when_strict(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "add", "path": f"{ENTERPRISE_USER}:manager", "value": "m1"}, policy=STRICT_POLICY)


# -- filtered paths and upsert --------------------------------------------------------------------------------------
class TestFiltered:
    def test_replace_matching_sub_attribute(self) -> None:
        doc = user({"op": "replace", "path": 'emails[type eq "work"].value', "value": "new@x"})
        assert doc["emails"][0] == {"type": "work", "value": "new@x", "primary": True}
        assert len(doc["emails"]) == 2

    def test_add_on_matching_filter_overwrites_never_duplicates(self) -> None:
        doc = user({"op": "Add", "path": 'emails[type eq "work"].value', "value": "new@x"})
        assert [e["type"] for e in doc["emails"]] == ["work", "home"]
        assert doc["emails"][0]["value"] == "new@x"

    def test_upsert_creates_element(self) -> None:
        doc = user({"op": "add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555"})
        assert doc["phoneNumbers"] == [{"type": "mobile", "value": "+1 555"}]

    def test_upsert_twice_is_one_element(self) -> None:
        doc = user({"op": "add", "path": 'addresses[type eq "work"].locality', "value": "Oslo"},
                   {"op": "replace", "path": 'addresses[type eq "work"].country', "value": "NO"})
        assert doc["addresses"] == [{"type": "work", "locality": "Oslo", "country": "NO"}]

    def test_upsert_with_primary_clears_others(self) -> None:
        doc = user({"op": "add", "path": 'emails[type eq "other" and primary eq true].value', "value": "o@x"})
        assert doc["emails"][2] == {"type": "other", "primary": True, "value": "o@x"}
        assert doc["emails"][0]["primary"] is False

    def test_unmatched_filter_strict_is_no_target(self) -> None:
        with pytest.raises(NoTarget):
            user({"op": "replace", "path": 'emails[type eq "other"].value', "value": "o@x"}, policy=STRICT_POLICY)

    def test_unmatched_non_eq_filter_is_no_target(self) -> None:
        with pytest.raises(NoTarget):
            user({"op": "replace", "path": 'emails[type ne "work" and type ne "home"].value', "value": "o@x"})

    def test_string_boolean_in_filtered_sub_attribute(self) -> None:
        doc = user({"op": "Replace", "path": 'emails[type eq "home"].primary', "value": "True"})
        assert doc["emails"][1]["primary"] is True and doc["emails"][0]["primary"] is False

    def test_string_boolean_strict(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "replace", "path": 'emails[type eq "home"].primary', "value": "True"}, policy=STRICT_POLICY)

    def test_replace_whole_matching_element(self) -> None:
        doc = user({"op": "replace", "path": 'emails[type eq "home"]', "value": {"type": "home", "value": "h@x"}})
        assert doc["emails"][1] == {"type": "home", "value": "h@x"}

    def test_remove_filtered_elements(self) -> None:
        doc = user({"op": "remove", "path": 'emails[type eq "home"]'})
        assert [e["type"] for e in doc["emails"]] == ["work"]

    def test_remove_filtered_sub_attribute(self) -> None:
        doc = user({"op": "remove", "path": 'emails[type eq "work"].primary'})
        assert doc["emails"][0] == {"type": "work", "value": "bjensen@example.com"}

    def test_remove_last_element_unassigns(self) -> None:
        doc = user({"op": "remove", "path": 'emails[type eq "home" or type eq "work"]'})
        assert "emails" not in doc

    def test_remove_unmatched_is_no_target(self) -> None:
        with pytest.raises(NoTarget) as info:
            user({"op": "remove", "path": 'emails[type eq "other"]'})
        assert info.value.scim_type == "noTarget"

    def test_primary_set_on_one_clears_others(self) -> None:
        doc = user({"op": "add", "path": "emails", "value": [{"type": "other", "value": "p@x", "primary": True}]})
        assert [e.get("primary") for e in doc["emails"]] == [False, None, True]

    def test_two_primaries_rejected(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "replace", "path": "emails", "value": [{"value": "a@x", "primary": True},
                                                                {"value": "b@x", "primary": True}]})


# -- replace / remove ------------------------------------------------------------------------------------------------
class TestReplaceRemove:
    def test_replace_multi_valued_replaces_all(self) -> None:
        doc = user({"op": "replace", "path": "emails", "value": [{"value": "only@x"}]})
        assert doc["emails"] == [{"value": "only@x"}]

    def test_replace_complex_keeps_unspecified_sub_attributes(self) -> None:  # RFC 7644 §3.5.2.3
        doc = user({"op": "replace", "path": "name", "value": {"givenName": "Bee"}})
        assert doc["name"] == {"givenName": "Bee", "familyName": "Jensen"}

    def test_pathless_replace_with_read_only_ignored(self) -> None:
        doc = user({"op": "replace", "value": {"id": "other", "meta": {"version": "x"}, "schemas": ["x"],
                                               "groups": [], "active": False}})
        assert doc["active"] is False and "id" not in doc and "meta" not in doc

    def test_pathless_read_only_strict(self) -> None:
        with pytest.raises(Mutability):
            user({"op": "replace", "value": {"id": "other"}}, policy=STRICT_POLICY)

    @pytest.mark.parametrize("path", ["id", "meta", "meta.created", "groups", 'groups[value eq "x"].display'])
    def test_explicit_read_only_path(self, path: str) -> None:
        for op in ("add", "replace"):
            with pytest.raises(Mutability):
                user({"op": op, "path": path, "value": "x"})
        with pytest.raises(Mutability):
            user({"op": "remove", "path": path})

    def test_remove_attribute(self) -> None:
        doc = user({"op": "remove", "path": "name.givenName"}, {"op": "remove", "path": "active"})
        assert doc["name"] == {"familyName": "Jensen"} and "active" not in doc

    def test_remove_absent_attribute_is_fine(self) -> None:
        assert "title" not in user({"op": "remove", "path": "title"})

    def test_remove_required(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "remove", "path": "userName"})

    def test_username_must_stay_non_empty(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "replace", "path": "userName", "value": ""})
        with pytest.raises(InvalidValue):
            user({"op": "replace", "value": {"userName": None}})

    def test_clear_manager(self) -> None:
        before = {**USER, ENTERPRISE_USER: {"manager": {"value": "m1"}, "department": "d"}}
        for value in ("", None, {"value": ""}):
            doc = run(before, {"op": "Replace", "path": f"{ENTERPRISE_USER}:manager", "value": value}).doc
            assert doc[ENTERPRISE_USER] == {"department": "d"}
        doc = run(before, {"op": "remove", "path": f"{ENTERPRISE_USER}:manager"}).doc
        assert doc[ENTERPRISE_USER] == {"department": "d"}

    def test_removing_last_extension_attribute_drops_extension(self) -> None:
        before = {**USER, ENTERPRISE_USER: {"manager": {"value": "m1"}}}
        assert ENTERPRISE_USER not in run(before, {"op": "remove", "path": f"{ENTERPRISE_USER}:manager"}).doc

    def test_replace_null_strict(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "replace", "path": "nickName", "value": None}, policy=STRICT_POLICY)

    def test_remove_with_value_strict(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "remove", "path": "emails", "value": [{"value": "babs@jensen.org"}]}, policy=STRICT_POLICY)

    def test_remove_by_value_list_on_user_attribute(self) -> None:
        doc = user({"op": "remove", "path": "emails", "value": [{"value": "babs@jensen.org"}]})
        assert [e["type"] for e in doc["emails"]] == ["work"]

    def test_password_is_accepted_and_not_stored(self) -> None:  # Okta password change
        assert "password" not in user({"op": "replace", "path": "password", "value": "s3cret!"})

    def test_unknown_attribute(self) -> None:
        with pytest.raises(InvalidPath):
            user({"op": "replace", "path": "nosuch", "value": "x"})
        with pytest.raises(InvalidValue):
            user({"op": "replace", "value": {"nosuch": "x"}})

    def test_type_errors(self) -> None:
        with pytest.raises(InvalidValue):
            user({"op": "replace", "path": "active", "value": "maybe"})
        with pytest.raises(InvalidValue):
            user({"op": "replace", "path": "nickName", "value": 5})
        with pytest.raises(InvalidValue):
            user({"op": "replace", "value": "not an object"})


# -- groups ------------------------------------------------------------------------------------------------------
class TestGroups:
    def test_add_members_dedup_and_null_ref(self) -> None:
        ch = group({"op": "Add", "path": "members", "value": [{"$ref": None, "value": "a"}, {"value": "a"},
                                                                {"value": "b", "type": "User"}]})
        assert list(ch.members.add) == ["a", "b"] and not ch.members.remove and not ch.members.remove_all
        assert ch.doc == {"displayName": "Admins"}

    def test_remove_by_value_list_removes_only_those(self) -> None:
        ch = group({"op": "Remove", "path": "members", "value": [{"value": "u1091"}]})
        assert list(ch.members.remove) == ["u1091"] and not ch.members.remove_all

    def test_remove_all(self) -> None:
        assert group({"op": "remove", "path": "members"}).members.remove_all

    def test_remove_filter_or(self) -> None:
        ch = group({"op": "remove", "path": 'members[value eq "a" or value eq "b"]'})
        assert list(ch.members.remove) == ["a", "b"]

    def test_replace_members(self) -> None:
        ch = group({"op": "replace", "path": "members", "value": [{"value": "x"}]})
        assert ch.members.remove_all and list(ch.members.add) == ["x"]

    def test_okta_replace_empty(self) -> None:
        ch = group({"op": "replace", "path": "members", "value": []})
        assert ch.members.remove_all and not ch.members.add

    def test_pathless_members(self) -> None:
        ch = group({"op": "add", "value": {"members": [{"value": "x"}], "displayName": "New"}})
        assert list(ch.members.add) == ["x"] and ch.doc["displayName"] == "New"
        ch = group({"op": "replace", "value": {"members": [{"value": "y"}]}})
        assert ch.members.remove_all and list(ch.members.add) == ["y"]

    def test_add_then_remove_same_member(self) -> None:
        ch = group({"op": "add", "path": "members", "value": [{"value": "a"}]},
                   {"op": "remove", "path": 'members[value eq "a"]'})
        assert not ch.members.add and list(ch.members.remove) == ["a"]

    def test_remove_all_then_add(self) -> None:
        ch = group({"op": "remove", "path": "members"}, {"op": "add", "path": "members", "value": [{"value": "a"}]})
        assert ch.members.remove_all and list(ch.members.add) == ["a"]

    def test_group_extension_and_external_id(self) -> None:
        ch = group({"op": "replace", "path": "externalId", "value": "e1"})
        assert ch.doc == {"displayName": "Admins", "externalId": "e1"}

    def test_remove_display_name_rejected(self) -> None:
        with pytest.raises(InvalidValue):
            group({"op": "remove", "path": "displayName"})

    def test_bad_member_values(self) -> None:
        for value in ([{"value": ""}], [{"value": 5}], [{}], ["a"], {"value": "a"}, [{"value": "a", "bogus": 1}]):
            with pytest.raises(InvalidValue):
                group({"op": "add", "path": "members", "value": value})

    def test_null_ref_strict(self) -> None:
        with pytest.raises(InvalidValue):
            group({"op": "add", "path": "members", "value": [{"$ref": None, "value": "a"}]}, policy=STRICT_POLICY)

    def test_remove_by_display_needs_members(self) -> None:
        ops = parse_patch_request(body({"op": "remove", "path": 'members[display eq "Bob"]'}), DEFAULT_POLICY,
                                  max_operations=5)
        assert needs_members(ops, R, "Group")
        current = StoredResource("g", "Group", {"displayName": "G"}, 1, NOW, NOW,
                                 members=[Member("1", "User", "Bob"), Member("2", "User", "Al")])
        ch = apply_patch(current, ops, R, "Group", DEFAULT_POLICY)
        assert list(ch.members.remove) == ["1"]
        with pytest.raises(ScimError) as info:
            apply_patch(StoredResource("g", "Group", {"displayName": "G"}, 1, NOW, NOW), ops, R, "Group",
                        DEFAULT_POLICY)
        assert info.value.status == 500

    def test_remove_by_display_no_match(self) -> None:
        with pytest.raises(NoTarget):
            group({"op": "remove", "path": 'members[display eq "Zed"]'}, members=["1"])

    def test_member_sub_attribute_is_immutable(self) -> None:
        with pytest.raises(Mutability):
            group({"op": "replace", "path": 'members[value eq "1"].value', "value": "2"}, members=["1"])
        with pytest.raises(Mutability):
            group({"op": "replace", "path": 'members[value eq "1"].display', "value": "x"}, members=["1"])

    def test_replace_filtered_member(self) -> None:
        ch = group({"op": "replace", "path": 'members[value eq "1"]', "value": {"value": "2"}}, members=["1", "3"])
        assert list(ch.members.remove) == ["1"] and list(ch.members.add) == ["2"]

    @pytest.mark.parametrize("op,needed", [
        ({"op": "add", "path": "members", "value": [{"value": "a"}]}, False),
        ({"op": "remove", "path": "members", "value": [{"value": "a"}]}, False),
        ({"op": "remove", "path": "members"}, False),
        ({"op": "replace", "path": "members", "value": []}, False),
        ({"op": "remove", "path": 'members[value eq "a"]'}, False),
        ({"op": "remove", "path": 'members[value eq "a" or value eq "b"]'}, False),
        ({"op": "replace", "value": {"members": [{"value": "a"}]}}, False),
        ({"op": "replace", "path": "displayName", "value": "x"}, False),
        ({"op": "remove", "path": 'members[display eq "a"]'}, True),
        ({"op": "remove", "path": 'members[value eq "a" and type eq "User"]'}, True),
        ({"op": "replace", "path": 'members[value eq "a"].type', "value": "User"}, True),
        ({"op": "replace", "path": 'members[value eq "a"]', "value": {"value": "b"}}, True),
    ])
    def test_needs_members(self, op: dict[str, Any], needed: bool) -> None:
        ops = parse_patch_request(body(op), DEFAULT_POLICY, max_operations=5)
        assert needs_members(ops, R, "Group") is needed


# -- mutability and atomicity --------------------------------------------------------------------------------------
def test_immutable_attribute() -> None:
    from scimgrip.scim.schema import Attribute, Schema, SchemaRegistry

    ext = Schema("urn:example:params:scim:schemas:extension:acme:2.0:User", "Acme", "",
                 (Attribute("badge", mutability="immutable"),))
    reg: SchemaRegistry = R.with_extension(ext, "User")
    path = f"{ext.id}:badge"
    current = StoredResource("u", "User", {"userName": "u"}, 1, NOW, NOW)

    def patch(doc_ops: list[dict[str, Any]], doc: dict[str, Any]) -> dict[str, Any]:
        ops = parse_patch_request(body(*doc_ops), DEFAULT_POLICY, max_operations=5)
        return apply_patch(StoredResource("u", "User", doc, 1, NOW, NOW), ops, reg, "User", DEFAULT_POLICY).doc

    doc = patch([{"op": "add", "path": path, "value": "b1"}], current.doc)
    assert doc[ext.id] == {"badge": "b1"}
    assert patch([{"op": "replace", "path": path, "value": "b1"}], doc) == doc  # unchanged: allowed
    with pytest.raises(Mutability):
        patch([{"op": "replace", "path": path, "value": "b2"}], doc)
    with pytest.raises(Mutability):
        patch([{"op": "remove", "path": path}], doc)


def test_atomic_second_op_fails() -> None:
    doc = copy.deepcopy(USER)
    snapshot = copy.deepcopy(doc)
    current = StoredResource("u", "User", doc, 1, NOW, NOW)
    ops = parse_patch_request(body({"op": "replace", "path": "nickName", "value": "x"},
                                   {"op": "replace", "path": 'emails[type eq "work"].value', "value": "n@x"},
                                   {"op": "replace", "path": "id", "value": "evil"}),
                              DEFAULT_POLICY, max_operations=5)
    with pytest.raises(Mutability):
        apply_patch(current, ops, R, "User", DEFAULT_POLICY)
    assert current.doc == snapshot


def test_result_does_not_alias_input_or_values() -> None:
    current = StoredResource("u", "User", copy.deepcopy(USER), 1, NOW, NOW)
    value = [{"type": "other", "value": "o@x"}]
    ops = parse_patch_request(body({"op": "add", "path": "emails", "value": value}), DEFAULT_POLICY,
                              max_operations=5)
    ch = apply_patch(current, ops, R, "User", DEFAULT_POLICY)
    ch.doc["emails"][0]["value"] = "changed"
    ch.doc["emails"][2]["value"] = "changed"
    assert current.doc == USER and value == [{"type": "other", "value": "o@x"}]


# -- robustness (Hypothesis) ---------------------------------------------------------------------------------------
PATHS = st.sampled_from([
    "userName", "name", "name.givenName", "emails", 'emails[type eq "work"].value', 'emails[type eq "work"]',
    "emails.value", 'emails[type eq "work" and primary eq true].primary', "active", "id", "meta.created",
    f"{ENTERPRISE_USER}:manager", f"{ENTERPRISE_USER}:manager.value", f"{ENTERPRISE_USER}:employeeNumber",
    "members", 'members[value eq "a"]', 'members[display eq "a"]', 'members[value eq "a"].display',
    "displayName", "externalId", "groups", "nosuch", "emails[", "x.y.z", 'emails[type eq "w"].nosuch',
    "urn:bogus:x", "", "password", "x509Certificates", 'addresses[type eq "work"].locality',
])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["True", "False", "work", "a", ""]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["value", "type", "primary", "$ref", "display", "givenName", "id", "meta",
                                       "name.givenName", "members", "userName", "displayName", "active",
                                       ENTERPRISE_USER, f"{ENTERPRISE_USER}:manager", "x"]) | st.text(max_size=5),
                      children, max_size=4),
    max_leaves=12,
)
OPS = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "replace", "remove", "Add", "Replace", "Remove", "bogus"]) | JSON},
    optional={"path": PATHS | JSON, "value": JSON},
)
BODIES = st.fixed_dictionaries({"schemas": st.just([PATCH_OP_URN]), "Operations": st.lists(OPS, max_size=4)}) | JSON
POLICIES = st.sampled_from([DEFAULT_POLICY, STRICT_POLICY])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body_=BODIES, policy=POLICIES, rt=st.sampled_from(["User", "Group"]),
       members=st.none() | st.lists(st.sampled_from(["a", "b", "c"]), max_size=3))
def test_random_patches_only_raise_scim_errors(body_: Any, policy: TolerancePolicy, rt: str,
                                               members: list[str] | None) -> None:
    doc: dict[str, Any] = copy.deepcopy(USER) if rt == "User" else {"displayName": "G"}
    snapshot = copy.deepcopy(doc)
    try:
        ops = parse_patch_request(body_, policy, max_operations=10, max_members=50)
        # the storage loads the members (none here, unless given) when the operations need them
        loaded = [Member(m) for m in members or []] if members is not None or needs_members(ops, R, rt) else None
        current = StoredResource("id", rt, doc, 1, NOW, NOW, members=loaded)
        change = apply_patch(current, ops, R, rt, policy)
    except ScimError as exc:
        assert 400 <= exc.status < 600
        assert doc == snapshot
        return
    assert doc == snapshot
    assert isinstance(change.doc, dict)
    if rt == "User":
        assert isinstance(change.doc.get("userName"), str) and change.doc["userName"]
        assert "id" not in change.doc and "meta" not in change.doc
    else:
        assert "members" not in change.doc
    for v in change.doc.values():
        if isinstance(v, list):
            assert sum(1 for e in v if isinstance(e, dict) and e.get("primary") is True) <= 1
