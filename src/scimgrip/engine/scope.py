"""Who is in scope: scoping filters (SCP-2, SCP-3a…f), the input filter, assignments (SCP-1), ``IsSoftDeleted``.

A scope is a list of :class:`ScopeFilter`; the filters are **OR**ed and the clauses of one filter are **AND**ed
(SCP-2). An empty list puts everything in scope (SCP-3f). Clause semantics follow Entra's documentation with the
ambiguities resolved as SCP-3a…f decide:

* SCP-3a: every operator except ``IS NULL``/``IS NOT NULL`` is false on a null or ``""`` attribute;
* SCP-3b: ``IS NULL`` is true for an absent attribute and for ``""``;
* SCP-3c: the integer operators are false when either side is not an integer, with one configuration warning;
* SCP-3d: ``REGEX MATCH`` is ``re.search`` (unanchored, case-sensitive); anchor with ``^…$`` for a full match;
* SCP-3e: ``IS TRUE`` accepts ``True``, ``"True"`` and ``"true"``.

Multi-valued attributes cannot be filtered on (SCP-3): such a clause is false, with one warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

from scimgrip.engine.model import Assignments, SourceObject

log = logging.getLogger(__name__)

ScopeMode = Literal["assigned", "all"]
NestedMode = Literal["direct_only", "flatten"]


@dataclass(frozen=True)
class OperatorInfo:
    """One scoping operator as listed by operator discovery (Graph ``filterOperators``, SCP-2)."""

    name: str
    arity: Literal["Unary", "Binary"]
    entra: bool = True            # False: our extension, absent from every Entra document (SCP-3)
    description: str = ""


OPERATORS: dict[str, OperatorInfo] = {o.name: o for o in (
    OperatorInfo("EQUALS", "Binary", description="the attribute equals the value exactly (case-sensitive)"),
    OperatorInfo("NOT EQUALS", "Binary", description="the attribute differs from the value (case-sensitive)"),
    OperatorInfo("IS TRUE", "Unary", description="the attribute holds Boolean true"),
    OperatorInfo("IS FALSE", "Unary", description="the attribute holds Boolean false"),
    OperatorInfo("IS NULL", "Unary", description="the attribute is absent or empty"),
    OperatorInfo("IS NOT NULL", "Unary", description="the attribute is neither absent nor empty"),
    OperatorInfo("REGEX MATCH", "Binary", description="re.search: unanchored, case-sensitive (SCP-3d)"),
    OperatorInfo("NOT REGEX MATCH", "Binary", description="negated REGEX MATCH; false on null (SCP-3a)"),
    OperatorInfo("Greater_Than", "Binary", description="integer comparison (SCP-3c)"),
    OperatorInfo("Greater_Than_OR_EQUALS", "Binary", description="integer comparison (SCP-3c)"),
    OperatorInfo("Less_Than", "Binary", entra=False, description="integer comparison (non-Entra extension)"),
    OperatorInfo("Less_Than_OR_EQUALS", "Binary", entra=False,
                 description="integer comparison (non-Entra extension)"),
    OperatorInfo("Includes", "Binary", description="the attribute contains the value (case-sensitive)"),
    OperatorInfo("NOT Includes", "Binary", entra=False,
                 description="the attribute does not contain the value (non-Entra extension)"),
    OperatorInfo("ENDS_WITH", "Binary", description="the attribute ends with the value (case-sensitive)"),
    OperatorInfo("&", "Binary", description="the attribute's value occurs in the clause value"),
    OperatorInfo("!&", "Binary", description="the attribute's value does not occur in the clause value"),
)}


def _op_key(name: str) -> str:
    return " ".join(name.replace("_", " ").upper().split())


_OP_INDEX: dict[str, str] = {_op_key(n): n for n in OPERATORS}
_INTEGER_OPS = frozenset({"Greater_Than", "Greater_Than_OR_EQUALS", "Less_Than", "Less_Than_OR_EQUALS"})
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NET_NAMED_GROUP = re.compile(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>")


def canonical_operator(name: str) -> str | None:
    """The canonical spelling of an operator name, matched ignoring case, ``_`` versus space (``NOT_EQUALS``
    as Graph spells it, ``not equals``); None if unknown."""
    return _OP_INDEX.get(_op_key(name))


@lru_cache(maxsize=512)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a scoping regex (SCP-3d). .NET named groups ``(?<name>…)`` are accepted as ``(?P<name>…)``."""
    return re.compile(_NET_NAMED_GROUP.sub(r"(?P<\1>", pattern))


class ConfigWarnings:
    """Configuration warnings of one job, each logged once (SCP-3c "a configuration warning is logged once")."""

    def __init__(self, sink: Callable[[str], None] | None = None) -> None:
        self.messages: list[str] = []
        self._keys: set[str] = set()
        self._sink = sink

    def warn(self, key: str, message: str) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        self.messages.append(message)
        if self._sink is not None:
            self._sink(message)
        else:
            log.warning("%s", message)


def _is_null(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, list | tuple) and len(value) == 0)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None


@lru_cache(maxsize=256)
def _folded(keys: tuple[str, ...]) -> dict[str, str]:
    """Lower-case name → name for one set of attribute names (objects of a source share a few such sets)."""
    return {k.lower(): k for k in reversed(keys) if isinstance(k, str)}


def lookup(attrs: Mapping[str, Any], name: str) -> Any:
    """``attrs[name]``, falling back to a case-insensitive match (source attribute names, SCP-2)."""
    if name in attrs:
        return attrs[name]
    key = _folded(tuple(attrs)).get(name.lower())
    return attrs[key] if key is not None else None


def is_true(value: Any) -> bool:
    """SCP-3e: ``True``, ``"True"`` or ``"true"``."""
    return value is True or value in ("True", "true")


def is_false(value: Any) -> bool:
    """The counterpart of :func:`is_true`: ``False``, ``"False"`` or ``"false"``."""
    return value is False or value in ("False", "false")


@dataclass(frozen=True)
class Clause:
    """One clause ``{attr, op, value}`` (Graph ``{sourceOperandName, operatorName, targetOperand}``).

    ``op`` must be a canonical name (see :func:`canonical_operator`); ``value`` is the clause's string operand
    (None for unary operators).
    """

    attr: str
    op: str
    value: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"unknown scoping operator {self.op!r}")
        if OPERATORS[self.op].arity == "Binary" and self.value is None:
            raise ValueError(f"operator {self.op!r} needs a value")

    def evaluate(self, attrs: Mapping[str, Any], warnings: ConfigWarnings | None = None) -> bool:
        """True if the clause holds for ``attrs`` (SCP-3, SCP-3a…e)."""
        raw = lookup(attrs, self.attr)
        op = self.op
        if op == "IS NULL":          # SCP-3b
            return _is_null(raw)
        if op == "IS NOT NULL":
            return not _is_null(raw)
        if _is_null(raw):            # SCP-3a
            return False
        if isinstance(raw, list | tuple | set | frozenset):
            (warnings or _FALLBACK).warn(
                f"multi:{self.attr}:{op}",
                f"scoping clause on {self.attr!r} is false: filtering on multi-valued attributes is not "
                "supported (SCP-3)")
            return False
        if op == "IS TRUE":          # SCP-3e
            return is_true(raw)
        if op == "IS FALSE":
            return is_false(raw)
        value = self.value if self.value is not None else ""
        text = _text(raw)
        if op == "EQUALS":
            return text == value
        if op == "NOT EQUALS":
            return text != value
        if op == "REGEX MATCH":      # SCP-3d
            return compile_regex(value).search(text) is not None
        if op == "NOT REGEX MATCH":
            return compile_regex(value).search(text) is None
        if op == "Includes":
            return value in text
        if op == "NOT Includes":
            return value not in text
        if op == "ENDS_WITH":
            return text.endswith(value)
        if op == "&":
            return text in value
        if op == "!&":
            return text not in value
        return self._integer(raw, value, warnings)

    def _integer(self, raw: Any, value: str, warnings: ConfigWarnings | None) -> bool:
        """SCP-3c: both sides must be integers, else false and one configuration warning."""
        left, right = _as_int(raw), _as_int(value)
        if left is None or right is None:
            (warnings or _FALLBACK).warn(
                f"int:{self.attr}:{self.op}:{value}",
                f"invalid scoping rule: {self.attr} {self.op} {value!r} needs integers on both sides; "
                "the clause is false (SCP-3c)")
            return False
        if self.op == "Greater_Than":
            return left > right
        if self.op == "Greater_Than_OR_EQUALS":
            return left >= right
        if self.op == "Less_Than":
            return left < right
        return left <= right


_FALLBACK = ConfigWarnings()   # used when the caller passes no per-job collector


@dataclass(frozen=True)
class ScopeFilter:
    """One scoping filter: its clauses are ANDed (SCP-2). No clause ⇒ true."""

    clauses: tuple[Clause, ...] = ()

    def evaluate(self, attrs: Mapping[str, Any], warnings: ConfigWarnings | None = None) -> bool:
        """True if every clause holds (SCP-2)."""
        return all(c.evaluate(attrs, warnings) for c in self.clauses)


def evaluate_filters(filters: Sequence[ScopeFilter], attrs: Mapping[str, Any],
                     warnings: ConfigWarnings | None = None) -> bool:
    """OR across filters (SCP-2); an empty list is true (SCP-3f)."""
    if not filters:
        return True
    return any(f.evaluate(attrs, warnings) for f in filters)


def passes_input_filter(filters: Sequence[ScopeFilter], attrs: Mapping[str, Any],
                        warnings: ConfigWarnings | None = None) -> bool:
    """The input filter (Graph ``inputFilterGroups``, SCP-2): same semantics as scope, but an object that fails
    it is dropped when read and **never deprovisioned** (no call to the target)."""
    return evaluate_filters(filters, attrs, warnings)


def in_assignment_scope(obj: SourceObject, assignments: Assignments,
                        group_members: Mapping[str, Iterable[str]], nested: NestedMode = "direct_only") -> bool:
    """SCP-1: is ``obj`` assigned to the application?

    A user is in scope when assigned directly or a **direct** member of an assigned group; with
    ``nested="flatten"`` (our opt-in DECISION) members of groups nested in an assigned group count too. A group
    object is in scope when the group itself is assigned (assignment of a group ≠ provisioning its nested
    groups). ``group_members`` maps a group objectId to its direct member objectIds.
    """
    if obj.object_type == "Group":
        return obj.id in assignments.groups
    if obj.id in assignments.users:
        return True
    if nested == "direct_only":
        return any(obj.id in set(group_members.get(g, ())) for g in assignments.groups)
    seen: set[str] = set()
    stack = list(assignments.groups)
    while stack:
        g = stack.pop()
        if g in seen:
            continue
        seen.add(g)
        for member in group_members.get(g, ()):
            if member == obj.id:
                return True
            if member in group_members:
                stack.append(member)
    return False


def assigned_user_ids(assignments: Assignments, group_members: Mapping[str, Iterable[str]],
                      nested: NestedMode = "direct_only") -> set[str]:
    """SCP-1, computed once per cycle: the users assigned directly or through an assigned group (its direct
    members; with ``flatten`` also members of nested groups, cycle-safe). Ids that are groups (keys of
    ``group_members``) are not users and are left out."""
    out = set(assignments.users)
    seen: set[str] = set()
    stack = list(assignments.groups)
    while stack:
        g = stack.pop()
        if g in seen:
            continue
        seen.add(g)
        for member in group_members.get(g, ()):
            if member in group_members:
                if nested == "flatten":
                    stack.append(member)
            else:
                out.add(member)
    return out


@dataclass(frozen=True)
class ScopeDecision:
    """Outcome of scoping one object (SCP-1…4).

    ``in_scope`` False with ``input_filtered`` False means "deprovision" (``IsSoftDeleted`` = true, SCP-4);
    ``input_filtered`` True means "ignore: no call to the target" (SCP-2). ``reason`` is a log reason code.
    """

    in_scope: bool
    reason: str
    input_filtered: bool = False

    @property
    def is_soft_deleted(self) -> bool:
        """SCP-4: the value of the ``IsSoftDeleted`` pseudo-attribute for this object."""
        return not self.in_scope


REASON_IN_SCOPE = "InScope"
REASON_HARD_DELETED = "DeletedInSource"
REASON_INPUT_FILTER = "InputFilterNotMet"
REASON_SOFT_DELETED = "SoftDeletedInSource"
REASON_DISABLED = "AccountDisabled"
REASON_UNASSIGNED = "NotEffectivelyEntitled"
REASON_SCOPING_FILTER = "ScopingFilterNotMet"


class FilterSet(Protocol):
    """What :func:`scope_decision` reads from an object mapping (``config.ObjectMapping``)."""

    @property
    def scope(self) -> Sequence[ScopeFilter]: ...

    @property
    def input_filter(self) -> Sequence[ScopeFilter]: ...


def scope_decision(obj: SourceObject, mapping: FilterSet | None = None, mode: ScopeMode = "assigned",
                   assigned: AbstractSet[str] | None = None, assignments: Assignments | None = None, *,
                   group_members: Mapping[str, Iterable[str]] | None = None, nested: NestedMode = "direct_only",
                   scope: Sequence[ScopeFilter] | None = None, input_filter: Sequence[ScopeFilter] | None = None,
                   warnings: ConfigWarnings | None = None) -> ScopeDecision:
    """Decide whether ``obj`` is in scope (SCP-1, SCP-2) and so compute ``IsSoftDeleted`` (SCP-4).

    Filters come from ``mapping`` (its ``scope`` and ``input_filter``) unless given as keywords. In mode
    ``assigned`` a user is in scope if its id is in ``assigned`` (precomputed once per cycle with
    :func:`assigned_user_ids`), else as :func:`in_assignment_scope` computes from ``assignments`` and
    ``group_members``; a group if it is itself assigned.

    Order: hard-deleted tombstone; input filter (dropped, not deprovisioned); soft-deleted in the source
    (``IsSoftDeleted`` attribute); ``accountEnabled`` false (SCP-1: a disabled user cannot be provisioned);
    not assigned (mode ``assigned`` only); fails the scoping filters.
    """
    scope_filters = scope if scope is not None else (mapping.scope if mapping is not None else ())
    input_filters = input_filter if input_filter is not None else (mapping.input_filter if mapping is not None
                                                                   else ())
    attrs = obj.attributes
    if obj.deleted:
        return ScopeDecision(False, REASON_HARD_DELETED)
    if input_filters and not passes_input_filter(input_filters, attrs, warnings):
        return ScopeDecision(False, REASON_INPUT_FILTER, input_filtered=True)
    if is_true(lookup(attrs, "IsSoftDeleted")) or is_true(lookup(attrs, "softDeleted")):
        # sources report a soft delete as Graph's deleted items do (``softDeleted``); SCP-4 (c)
        return ScopeDecision(False, REASON_SOFT_DELETED)
    if obj.object_type == "User" and is_false(lookup(attrs, "accountEnabled")):
        return ScopeDecision(False, REASON_DISABLED)
    if mode == "assigned":
        if obj.object_type == "User" and assigned is not None:
            is_assigned = obj.id in assigned
        else:
            is_assigned = in_assignment_scope(obj, assignments or Assignments(), group_members or {}, nested)
        if not is_assigned:
            return ScopeDecision(False, REASON_UNASSIGNED)
    if not evaluate_filters(scope_filters, attrs, warnings):
        return ScopeDecision(False, REASON_SCOPING_FILTER)
    return ScopeDecision(True, REASON_IN_SCOPE)


__all__ = [
    "OPERATORS",
    "Clause",
    "ConfigWarnings",
    "NestedMode",
    "FilterSet",
    "OperatorInfo",
    "ScopeDecision",
    "ScopeFilter",
    "ScopeMode",
    "assigned_user_ids",
    "canonical_operator",
    "compile_regex",
    "evaluate_filters",
    "in_assignment_scope",
    "is_false",
    "is_true",
    "lookup",
    "passes_input_filter",
    "scope_decision",
]
