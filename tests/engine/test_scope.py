"""Scoping filters, input filter, assignment scope and IsSoftDeleted (SCP-1…4; T-SCP-1/2/3)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from scimgrip.engine.model import Assignments, SourceObject
from scimgrip.engine.scope import (
    OPERATORS,
    Clause,
    ConfigWarnings,
    ScopeFilter,
    assigned_user_ids,
    canonical_operator,
    evaluate_filters,
    in_assignment_scope,
    passes_input_filter,
    scope_decision,
)


def clause(attr: str, op: str, value: str | None = None) -> Clause:
    return Clause(attr, op, value)


# -- T-SCP-1 ----------------------------------------------------------------------------------------------------
A = clause("department", "EQUALS", "Sales")
B = clause("country", "EQUALS", "NL")
C = clause("jobTitle", "EQUALS", "Boss")
FILTERS = (ScopeFilter((A, B)), ScopeFilter((C,)))


@pytest.mark.parametrize(("a", "b", "c"), list(itertools.product([False, True], repeat=3)))
def test_t_scp_1_truth_table(a: bool, b: bool, c: bool) -> None:
    attrs = {"department": "Sales" if a else "Finance", "country": "NL" if b else "BE",
             "jobTitle": "Boss" if c else "Clerk"}
    assert evaluate_filters(FILTERS, attrs) is ((a and b) or c)


def test_scp_3f_empty_filter_list_is_everything() -> None:
    assert evaluate_filters((), {}) is True
    assert ScopeFilter(()).evaluate({}) is True


# -- T-SCP-2 / SCP-3a / SCP-3b ----------------------------------------------------------------------------------
@pytest.mark.parametrize("null", [None, ""])
def test_t_scp_2_null_attribute(null: Any) -> None:
    attrs = {"department": null}
    assert clause("department", "NOT EQUALS", "x").evaluate(attrs) is False
    assert clause("department", "NOT REGEX MATCH", "x").evaluate(attrs) is False
    assert clause("department", "IS NULL").evaluate(attrs) is True
    assert clause("department", "IS NOT NULL").evaluate(attrs) is False
    assert clause("missing", "IS NULL").evaluate(attrs) is True


@pytest.mark.parametrize("op", [o for o in OPERATORS if o not in ("IS NULL", "IS NOT NULL")])
def test_scp_3a_every_other_operator_is_false_on_null(op: str) -> None:
    value = None if OPERATORS[op].arity == "Unary" else "1"
    c = Clause("x", op, value)
    assert c.evaluate({}, ConfigWarnings()) is False
    assert c.evaluate({"x": ""}, ConfigWarnings()) is False


# -- T-SCP-3 / SCP-3c -------------------------------------------------------------------------------------------
def test_t_scp_3_greater_than_non_integer_is_false_with_one_warning() -> None:
    warnings = ConfigWarnings(sink=lambda _m: None)
    c = clause("employeeId", "Greater_Than", "abc")
    assert c.evaluate({"employeeId": "5"}, warnings) is False
    assert c.evaluate({"employeeId": "7"}, warnings) is False
    assert len(warnings.messages) == 1
    assert "SCP-3c" in warnings.messages[0]


def test_integer_operators() -> None:
    w = ConfigWarnings(sink=lambda _m: None)
    attrs = {"n": "10"}
    assert clause("n", "Greater_Than", "9").evaluate(attrs, w)
    assert not clause("n", "Greater_Than", "10").evaluate(attrs, w)
    assert clause("n", "Greater_Than_OR_EQUALS", "10").evaluate(attrs, w)
    assert clause("n", "Less_Than", "11").evaluate(attrs, w)
    assert not clause("n", "Less_Than", "10").evaluate(attrs, w)
    assert clause("n", "Less_Than_OR_EQUALS", "10").evaluate(attrs, w)
    assert clause("n", "Greater_Than", "-1").evaluate({"n": 3}, w)          # integers from the source
    assert not clause("n", "Greater_Than", "1").evaluate({"n": "2.5"}, w)   # not an integer → false
    assert not clause("n", "Greater_Than", "0").evaluate({"n": True}, w)    # a boolean is not an integer
    assert len(w.messages) == 2


# -- SCP-3d regex -----------------------------------------------------------------------------------------------
def test_scp_3d_regex_is_an_unanchored_search() -> None:
    c = clause("extensionAttribute1", "REGEX MATCH", "([1-9][0-9])")
    assert c.evaluate({"extensionAttribute1": "10"}) is True
    assert c.evaluate({"extensionAttribute1": "100"}) is True    # search semantics, not a full match
    assert c.evaluate({"extensionAttribute1": "9"}) is False
    anchored = clause("extensionAttribute1", "REGEX MATCH", "^([1-9][0-9])$")
    assert anchored.evaluate({"extensionAttribute1": "100"}) is False
    assert anchored.evaluate({"extensionAttribute1": "10"}) is True


def test_regex_is_case_sensitive_and_accepts_net_named_groups() -> None:
    assert clause("mail", "REGEX MATCH", r".*\@contoso.com").evaluate({"mail": "a@contoso.com"})
    assert not clause("mail", "REGEX MATCH", r".*\@contoso.com").evaluate({"mail": "a@CONTOSO.com"})
    assert clause("mail", "NOT REGEX MATCH", r"@contoso").evaluate({"mail": "a@fabrikam.com"})
    assert clause("x", "REGEX MATCH", r"(?<d>\d+)").evaluate({"x": "a1"})


# -- the other operators ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("op", "value", "attr", "expected"), [
    ("EQUALS", "Sales", "Sales", True),
    ("EQUALS", "Sales", "sales", False),                   # case-sensitive
    ("NOT EQUALS", "Sales", "sales", True),
    ("NOT EQUALS", "Sales", "Sales", False),
    ("Includes", "ale", "Sales", True),
    ("Includes", "ALE", "Sales", False),
    ("NOT Includes", "ale", "Sales", False),
    ("NOT Includes", "xyz", "Sales", True),
    ("ENDS_WITH", "@contoso.com", "a@contoso.com", True),
    ("ENDS_WITH", "@contoso.com", "a@contoso.com.evil", False),
    ("&", "Sales,Marketing", "Sales", True),               # the attribute occurs in the clause value
    ("&", "Sales,Marketing", "Finance", False),
    ("!&", "Sales,Marketing", "Finance", True),
    ("!&", "Sales,Marketing", "Marketing", False),
    ("EQUALS", "True", True, True),                        # booleans render as True/False
])
def test_binary_operators(op: str, value: str, attr: Any, expected: bool) -> None:
    assert Clause("a", op, value).evaluate({"a": attr}) is expected


@pytest.mark.parametrize(("value", "is_true", "is_false"), [
    (True, True, False), ("True", True, False), ("true", True, False),
    (False, False, True), ("False", False, True), ("false", False, True),
    ("yes", False, False), (1, False, False),
])
def test_scp_3e_booleans(value: Any, is_true: bool, is_false: bool) -> None:
    assert clause("accountEnabled", "IS TRUE").evaluate({"accountEnabled": value}) is is_true
    assert clause("accountEnabled", "IS FALSE").evaluate({"accountEnabled": value}) is is_false


def test_multi_valued_attribute_is_false_with_a_warning() -> None:
    w = ConfigWarnings(sink=lambda _m: None)
    assert clause("otherMails", "Includes", "a").evaluate({"otherMails": ["a@x"]}, w) is False
    assert clause("otherMails", "IS NOT NULL").evaluate({"otherMails": ["a@x"]}, w) is True
    assert len(w.messages) == 1


def test_attribute_lookup_falls_back_to_case_insensitive() -> None:
    assert clause("Department", "EQUALS", "Sales").evaluate({"department": "Sales"})


def test_operator_names() -> None:
    assert canonical_operator("NOT_EQUALS") == "NOT EQUALS"
    assert canonical_operator("regex match") == "REGEX MATCH"
    assert canonical_operator("GREATER_THAN_OR_EQUALS") == "Greater_Than_OR_EQUALS"
    assert canonical_operator("not includes") == "NOT Includes"
    assert canonical_operator("&") == "&"
    assert canonical_operator("LIKE") is None
    assert {o for o, i in OPERATORS.items() if not i.entra} == {"Less_Than", "Less_Than_OR_EQUALS", "NOT Includes"}
    assert len(OPERATORS) == 17


def test_clause_validation() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Clause("a", "LIKE", "x")
    with pytest.raises(ValueError, match="needs a value"):
        Clause("a", "EQUALS")


# -- SCP-1 assignments ------------------------------------------------------------------------------------------
def user(uid: str, **attrs: Any) -> SourceObject:
    return SourceObject("User", uid, {"objectId": uid, **attrs})


MEMBERS = {"g1": ["u1", "g2"], "g2": ["u2", "g3"], "g3": ["u3", "g1"]}   # g1 → g2 → g3 → g1 (a cycle)


def test_assignment_direct_and_group() -> None:
    a = Assignments(users=frozenset({"u9"}), groups=frozenset({"g1"}))
    assert in_assignment_scope(user("u9"), a, MEMBERS)
    assert in_assignment_scope(user("u1"), a, MEMBERS)
    assert not in_assignment_scope(user("u2"), a, MEMBERS)              # nested: not in scope (Entra)
    assert in_assignment_scope(user("u2"), a, MEMBERS, "flatten")
    assert in_assignment_scope(user("u3"), a, MEMBERS, "flatten")
    assert not in_assignment_scope(user("u4"), a, MEMBERS, "flatten")   # terminates despite the cycle
    assert in_assignment_scope(SourceObject("Group", "g1"), a, MEMBERS)
    assert not in_assignment_scope(SourceObject("Group", "g2"), a, MEMBERS, "flatten")


def test_assigned_user_ids_once_per_cycle() -> None:
    a = Assignments(users=frozenset({"u9"}), groups=frozenset({"g1"}))
    assert assigned_user_ids(a, MEMBERS) == {"u9", "u1"}                     # g2 is a group, not a user
    assert assigned_user_ids(a, MEMBERS, "flatten") == {"u9", "u1", "u2", "u3"}
    assert assigned_user_ids(Assignments(), MEMBERS) == set()


def test_scope_decision_with_an_object_mapping_and_a_precomputed_set() -> None:
    from scimgrip.engine.config import default_object_mapping
    om = dataclasses.replace(default_object_mapping("User"),
                             scope=(ScopeFilter((clause("department", "EQUALS", "Sales"),)),))
    a = Assignments(groups=frozenset({"g1"}))
    assigned = assigned_user_ids(a, MEMBERS)
    sales = user("u1", department="Sales")
    assert scope_decision(sales, om, "assigned", assigned, a).in_scope
    assert scope_decision(user("u1", department="HR"), om, "assigned", assigned, a).reason == "ScopingFilterNotMet"
    assert scope_decision(user("u2", department="Sales"), om, "assigned", assigned, a).reason == \
        "NotEffectivelyEntitled"
    assert scope_decision(user("u2", department="Sales"), om, "all", None, a).in_scope
    assert scope_decision(SourceObject("Group", "g1"), None, "assigned", assigned, a).in_scope
    assert not scope_decision(SourceObject("Group", "g2"), None, "assigned", assigned, a).in_scope


# -- SCP-4 decisions --------------------------------------------------------------------------------------------
ASSIGNED = Assignments(users=frozenset({"u1"}))


def test_scope_decision_reasons() -> None:
    sales = (ScopeFilter((clause("department", "EQUALS", "Sales"),)),)
    only_nl = (ScopeFilter((clause("country", "EQUALS", "NL"),)),)

    def decide(obj: SourceObject, **kw: Any) -> tuple[bool, str, bool]:
        d = scope_decision(obj, assignments=ASSIGNED, scope=sales, input_filter=only_nl, **kw)
        assert d.is_soft_deleted is (not d.in_scope)
        return d.in_scope, d.reason, d.input_filtered

    base = {"department": "Sales", "country": "NL", "accountEnabled": True}
    assert decide(user("u1", **base)) == (True, "InScope", False)
    assert decide(user("u1", **{**base, "country": "BE"})) == (False, "InputFilterNotMet", True)
    assert decide(user("u1", **{**base, "IsSoftDeleted": True})) == (False, "SoftDeletedInSource", False)
    assert decide(user("u1", **{**base, "accountEnabled": False})) == (False, "AccountDisabled", False)
    assert decide(user("u1", **{**base, "accountEnabled": "False"})) == (False, "AccountDisabled", False)
    assert decide(user("u2", **base)) == (False, "NotEffectivelyEntitled", False)
    assert decide(user("u2", **base), mode="all") == (True, "InScope", False)
    assert decide(user("u1", **{**base, "department": "HR"})) == (False, "ScopingFilterNotMet", False)
    assert decide(SourceObject("User", "u1", deleted=True)) == (False, "DeletedInSource", False)


def test_t_scp_4_input_filter_versus_scope() -> None:
    only_nl = (ScopeFilter((clause("country", "EQUALS", "NL"),)),)
    leaves_input = scope_decision(user("u1", country="BE"), mode="all", input_filter=only_nl)
    leaves_scope = scope_decision(user("u1", country="BE"), mode="all", scope=only_nl)
    assert leaves_input.input_filtered and not leaves_input.in_scope      # no call to the target
    assert not leaves_scope.input_filtered and leaves_scope.is_soft_deleted   # PATCH active=false
    assert passes_input_filter((), {}) is True
