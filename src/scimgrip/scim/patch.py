"""PATCH (RFC 7644 §3.5.2) on a resource document: parse the PatchOp message, apply it purely and atomically.

:func:`apply_patch` works on a deep copy of the stored document and either returns the complete result
(new document and, for groups, a :class:`~scimgrip.storage.base.MemberDelta`) or raises a
:class:`~scimgrip.scim.errors.ScimError`; the input is never modified. Group members are rows, not part of
the document: member operations become a delta, and the current member list is only consulted for the few
operations that need it (see :func:`needs_members`).

IdP dialects (Entra default and ``aadOptscim062020`` modes, Okta) are accepted only through the switches of
:class:`~scimgrip.scim.tolerance.TolerancePolicy`: capitalised ops, string booleans, dotted and URN keys in
path-less values, upsert on unmatched filtered paths, bare-string ``manager``, ``remove members`` with a
value list, ``"$ref": null``, read-only ``id``/``meta`` inside values, clearing with ``""``/``null``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scimgrip.scim.errors import (
    InvalidPath,
    InvalidSyntax,
    InvalidValue,
    Mutability,
    NoTarget,
    PayloadTooLarge,
    ScimError,
)
from scimgrip.scim.filter import And, Compare, Filter, Or, matches_element
from scimgrip.scim.model import Change, MemberDelta, StoredResource
from scimgrip.scim.paths import PatchPath, parse_patch_path
from scimgrip.scim.resource import check_required, normalize_value
from scimgrip.scim.schema import CORE_GROUP, DEFAULT_REGISTRY, ENTERPRISE_USER, Attribute, SchemaRegistry
from scimgrip.scim.tolerance import (
    TolerancePolicy,
    drop_null_ref,
    is_clear_value,
    manager_value,
    normalize_op,
)

PATCH_OP_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@dataclass(frozen=True)
class PatchOperation:
    """One validated operation (RFC 7644 §3.5.2): ``op`` lower-case, ``path`` or None, ``value`` if given."""

    op: str
    path: str | None = None
    value: Any = None
    has_value: bool = False
    index: int = 0


def _get_ci(obj: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    if key in obj:
        return True, obj[key]
    low = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == low:
            return True, v
    return False, None


def _count_members(path: str | None, value: Any) -> int:
    """How many member objects one operation carries (for the ``max_members`` bound)."""
    if path is not None:
        if path.lower().startswith("members") and isinstance(value, list):
            return len(value)
        return 0
    if isinstance(value, Mapping):
        found, members = _get_ci(value, "members")
        if found and isinstance(members, list):
            return len(members)
    return 0


def parse_patch_request(body: Any, policy: TolerancePolicy, *, max_operations: int,
                        max_members: int | None = None) -> list[PatchOperation]:
    """Validate a PatchOp message (RFC 7644 §3.5.2) and return its operations.

    ``schemas`` must contain the PatchOp URN; ``Operations`` must be a non-empty list of at most
    ``max_operations`` objects (else 413), carrying at most ``max_members`` member objects in total (else
    413). ``op`` goes through :func:`~scimgrip.scim.tolerance.normalize_op`; ``add``/``replace`` need a
    ``value``; ``remove`` needs a ``path`` (§3.5.2.2: else ``noTarget``).
    """
    if not isinstance(body, Mapping):
        raise InvalidSyntax("the PATCH body must be a JSON object")
    _, schemas = _get_ci(body, "schemas")
    if not isinstance(schemas, list) or not any(
            isinstance(s, str) and s.lower() == PATCH_OP_URN.lower() for s in schemas):
        raise InvalidSyntax(f'"schemas" must be a list containing {PATCH_OP_URN!r}')
    found, raw_ops = _get_ci(body, "Operations")
    if not found:
        raise InvalidSyntax('the PATCH body has no "Operations"')
    if not isinstance(raw_ops, list):
        raise InvalidSyntax('"Operations" must be a list')
    if not raw_ops:
        raise InvalidValue('"Operations" must contain at least one operation')
    if len(raw_ops) > max_operations:
        raise PayloadTooLarge(f"the PATCH request has {len(raw_ops)} operations; at most {max_operations} "
                              "are allowed")
    ops: list[PatchOperation] = []
    member_count = 0
    for i, raw in enumerate(raw_ops):
        if not isinstance(raw, Mapping):
            raise InvalidSyntax(f"Operations[{i}] must be a JSON object")
        _, raw_op = _get_ci(raw, "op")
        op = normalize_op(raw_op, policy)
        _, path = _get_ci(raw, "path")
        if path is not None and (not isinstance(path, str) or not path):
            raise InvalidPath(f'Operations[{i}].path must be a non-empty string')
        has_value, value = _get_ci(raw, "value")
        if has_value and value is None and op == "remove":
            has_value = False
        if op in ("add", "replace") and not has_value:
            raise InvalidValue(f'Operations[{i}] ({op}) needs a "value" (RFC 7644 §3.5.2.1, §3.5.2.3)')
        if op == "remove" and path is None:
            raise NoTarget(f'Operations[{i}]: "remove" needs a "path" (RFC 7644 §3.5.2.2)')
        member_count += _count_members(path, value)
        if max_members is not None and member_count > max_members:
            raise PayloadTooLarge(f"the PATCH request carries more than {max_members} members")
        ops.append(PatchOperation(op, path, value, has_value, i))
    return ops


# ------------------------------------------------------------------------------------------------------
# Which operations need the current member list
# --------------------------------------------------------------------------------------------------------
def _value_eq_ids(node: Filter) -> list[str] | None:
    """``value eq "a" [or value eq "b" …]`` → ["a", "b"]; None for any other filter."""
    if isinstance(node, Or):
        left, right = _value_eq_ids(node.left), _value_eq_ids(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, Compare) and node.op == "eq" and node.path.attr == "value" \
            and isinstance(node.value, str):
        return [node.value]
    return None


def _is_members(path: PatchPath, registry: SchemaRegistry, resource_type: str) -> bool:
    return (path.is_core and path.attr == "members"
            and registry.resource_type(resource_type).schema == CORE_GROUP)


def _path_needs_members(op: str, path: PatchPath) -> bool:
    if path.sub is not None:
        return op != "remove"
    if path.filter is None or op == "add":
        return False
    return not (op == "remove" and _value_eq_ids(path.filter) is not None)


def needs_members(ops: Sequence[PatchOperation], registry: SchemaRegistry | None = None,
                  resource_type: str = "Group") -> bool:
    """True if applying ``ops`` to a group needs its current members (load them for :func:`apply_patch`).

    Plain ``add``/``replace``/``remove`` of ``members`` and ``remove`` with ``members[value eq "x"]``
    (or an ``or`` of those) become a :class:`MemberDelta` without reading the members. Other value filters
    (``members[display eq "x"]``), ``replace`` with a filter and member sub-attribute paths need them.
    """
    reg = registry or DEFAULT_REGISTRY
    for op in ops:
        candidates: list[str] = []
        if op.path is not None:
            candidates.append(op.path)
        elif isinstance(op.value, Mapping):
            candidates.extend(k for k in op.value if isinstance(k, str) and k.lower().startswith("members"))
        for text in candidates:
            try:
                path = parse_patch_path(text, reg, resource_type)
            except ScimError:
                continue
            if _is_members(path, reg, resource_type) and _path_needs_members(op.op, path):
                return True
    return False


# ------------------------------------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------------------------------------
class _Members:
    """The membership change accumulated over the operations; ``known`` simulates the list when loaded."""

    def __init__(self, known: list[dict[str, Any]] | None) -> None:
        self.known = known
        self.add: dict[str, None] = {}
        self.remove: dict[str, None] = {}
        self.remove_all = False

    def add_ids(self, ids: Sequence[str]) -> None:
        for i in ids:
            self.remove.pop(i, None)
            self.add[i] = None
            if self.known is not None and not any(m.get("value") == i for m in self.known):
                self.known.append({"value": i})

    def remove_ids(self, ids: Sequence[str]) -> None:
        for i in ids:
            self.add.pop(i, None)
            if not self.remove_all:
                self.remove[i] = None
        if self.known is not None:
            gone = set(ids)
            self.known = [m for m in self.known if m.get("value") not in gone]

    def clear(self) -> None:
        self.add.clear()
        self.remove.clear()
        self.remove_all = True
        if self.known is not None:
            self.known = []

    def delta(self) -> MemberDelta:
        return MemberDelta(add=tuple(self.add), remove=tuple(self.remove), remove_all=self.remove_all)


def _upsert_base(node: Filter) -> dict[str, Any] | None:
    """The element a filter like ``type eq "work" and primary eq true`` describes; None if not a plain
    conjunction of ``eq`` comparisons (``upsert_filtered_path``)."""
    if isinstance(node, And):
        left, right = _upsert_base(node.left), _upsert_base(node.right)
        if left is None or right is None:
            return None
        for k, v in right.items():
            if k in left and left[k] != v:
                return None
        return {**left, **right}
    if isinstance(node, Compare) and node.op == "eq" and isinstance(node.value, str | bool | int):
        return {node.path.attr: node.value}
    return None


class _Patcher:
    def __init__(self, current: StoredResource, registry: SchemaRegistry, resource_type: str,
                 policy: TolerancePolicy) -> None:
        self.registry = registry
        self.rt = resource_type
        self.policy = policy
        self.core = registry.resource_type(resource_type).schema
        self.doc: dict[str, Any] = copy.deepcopy(current.doc)
        known: list[dict[str, Any]] | None = None
        if current.members is not None:
            known = [{k: v for k, v in (("value", m.value), ("type", m.type), ("display", m.display))
                      if v is not None} for m in current.members]
        self.members = _Members(known)

    # -- entry points ------------------------------------------------------------------------------------
    def apply(self, op: PatchOperation) -> None:
        if op.op not in ("add", "replace", "remove"):
            raise InvalidValue(f"unknown PATCH operation {op.op!r}")
        if op.path is None:
            if op.op == "remove":
                raise NoTarget('"remove" needs a "path" (RFC 7644 §3.5.2.2)')
            self._pathless(op.op, op.value, None)
            return
        urn = self.registry.canonical_urn(self.rt, op.path) if op.path.lower().startswith("urn:") else None
        if urn is not None and urn != self.core:
            # the path is a whole extension schema: its attributes as one complex value (RFC 7644 §3.5.2.3
            # semantics for a complex target: sub-attributes given are set, others are left alone)
            if op.op == "remove":
                if _get_ci(self.doc, urn)[0] is False:
                    raise NoTarget(f"the resource has no {urn} attributes to remove")
                self._drop_key(self.doc, urn)
            else:
                self._pathless(op.op, op.value, urn)
            return
        path = parse_patch_path(op.path, self.registry, self.rt)
        self._apply_path(op.op, path, op.value, op.has_value, from_value=False)

    def finish(self) -> Change:
        for key in [k for k, v in self.doc.items() if k.lower().startswith("urn:")]:
            if not self.doc[key]:
                del self.doc[key]
        check_required(self.doc, self.registry, self.rt)
        return Change(doc=self.doc, members=self.members.delta())

    # -- path-less add/replace (RFC 7644 §3.5.2.1, §3.5.2.3) ---------------------------------------------
    def _pathless(self, op: str, value: Any, prefix: str | None) -> None:
        if not isinstance(value, Mapping):
            raise InvalidValue(f'a path-less "{op}" needs a JSON object as "value" (RFC 7644 §3.5.2.1)')
        for key, v in value.items():
            if not isinstance(key, str) or not key:
                raise InvalidValue(f"invalid attribute name {key!r} in the value of a path-less {op!r}")
            low = key.lower()
            if low == "schemas":
                continue  # the message's own "schemas"; the resource's are derived from its attributes
            if prefix is None and low.startswith("urn:"):
                urn = self.registry.canonical_urn(self.rt, key)
                if urn is not None:  # {"urn:…:enterprise:2.0:User": {...}}: the extension's attributes
                    if v is None and op == "replace" and is_clear_value(v, self.policy):
                        if urn != self.core:
                            self._drop_key(self.doc, urn)
                        continue
                    self._pathless(op, v, None if urn == self.core else urn)
                    continue
            plain = all(c not in key for c in ".:[]")
            if not plain and not self.policy.dotted_pathless_keys:
                raise InvalidValue(f"key {key!r} in the value of a path-less {op!r} is not an attribute "
                                   "name; dotted and URN keys are an Entra quirk (dotted_pathless_keys)")
            text = key if prefix is None else f"{prefix}:{key}"
            try:
                path = parse_patch_path(text, self.registry, self.rt)
            except InvalidPath as exc:
                raise InvalidValue(f"in the value of a path-less {op!r}: {exc.detail}") from None
            self._apply_path(op, path, v, True, from_value=True)

    # -- one attribute -----------------------------------------------------------------------------------
    def _apply_path(self, op: str, path: PatchPath, value: Any, has_value: bool, *, from_value: bool) -> None:
        if _is_members(path, self.registry, self.rt):
            self._members_op(op, path, value, has_value)
            return
        d = path.definition
        if d.mutability == "readOnly" or path.target.mutability == "readOnly":
            if from_value and self.policy.ignore_read_only_in_values:
                return  # Okta/Entra echo id/meta in values (ignore_read_only_in_values)
            raise Mutability(f"attribute {path.text!r} is read-only (RFC 7643 §2.2)")
        if d.mutability == "writeOnly" or path.target.mutability == "writeOnly":
            return  # write-only (password): accepted and never stored, as for POST/PUT
        if op == "remove":
            self._remove(path, value, has_value)
        elif op == "add":
            self._add(path, value)
        else:
            self._replace(path, value)

    # container helpers
    def _container(self, urn: str, *, create: bool) -> dict[str, Any] | None:
        if urn == self.core:
            return self.doc
        key = self._find_key(self.doc, urn)
        if key is None:
            if not create:
                return None
            created: dict[str, Any] = {}
            self.doc[urn] = created
            return created
        box = self.doc.pop(key)
        if not isinstance(box, dict):
            box = {}
        self.doc[urn] = box
        return box

    @staticmethod
    def _find_key(obj: Mapping[str, Any], name: str) -> str | None:
        if name in obj:
            return name
        low = name.lower()
        for k in obj:
            if k.lower() == low:
                return k
        return None

    def _drop_key(self, obj: dict[str, Any], name: str) -> None:
        key = self._find_key(obj, name)
        if key is not None:
            del obj[key]

    def _get(self, box: Mapping[str, Any], d: Attribute) -> Any:
        key = self._find_key(box, d.name)
        return None if key is None else box[key]

    def _store(self, box: dict[str, Any], path: PatchPath, new: Any) -> None:
        """Set (or, for None/empty, unassign) the top-level attribute, enforcing ``immutable``."""
        d = path.definition
        old = self._get(box, d)
        if new == [] or new == {}:
            new = None
        if d.mutability == "immutable" and old is not None and old != new and not (
                d.multi_valued and isinstance(new, list) and isinstance(old, list) and new[:len(old)] == old):
            raise Mutability(f"attribute {path.text!r} is immutable (RFC 7643 §2.2)")
        self._drop_key(box, d.name)
        if new is not None:
            box[d.name] = new

    def _where(self, path: PatchPath) -> str:
        return path.dotted() if path.is_core else f"{path.urn}:{path.dotted()}"

    def _clear(self, value: Any) -> bool:
        return is_clear_value(value, self.policy)

    def _no_null(self, path: PatchPath, value: Any, op: str) -> None:
        if value is None:
            raise InvalidValue(f'"{op}" of {path.text!r} with a null value; use "remove" (RFC 7644 §3.5.2)')

    # normalisation through resource.normalize_value
    def _norm_attr(self, path: PatchPath, value: Any) -> Any:
        return normalize_value(self.registry, self.rt, path.urn, path.definition, value, self.policy,
                               where=self._where(path))

    def _norm_element(self, path: PatchPath, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            raise InvalidValue(f"each value of {path.attr!r} must be an object, got {type(value).__name__}")
        out = normalize_value(self.registry, self.rt, path.urn, path.definition, [value], self.policy,
                              where=self._where(path))
        return dict(out[0]) if out else None

    def _norm_sub(self, path: PatchPath, value: Any) -> Any:
        assert path.sub is not None
        if path.definition.multi_valued:
            element = self._norm_element(path, {path.sub: value})
            return None if element is None else element.get(path.sub)
        out = normalize_value(self.registry, self.rt, path.urn, path.definition, {path.sub: value},
                              self.policy, where=self._where(path))
        return out.get(path.sub) if isinstance(out, Mapping) else None

    def _elements(self, box: Mapping[str, Any], path: PatchPath) -> list[Any]:
        cur = self._get(box, path.definition)
        return [copy.deepcopy(e) for e in cur] if isinstance(cur, list) else []

    def _matching(self, elements: list[Any], path: PatchPath) -> list[dict[str, Any]]:
        assert path.filter is not None
        return [e for e in elements if isinstance(e, dict) and matches_element(path.filter, e)]

    def _store_elements(self, box: dict[str, Any], path: PatchPath, elements: list[Any],
                        changed: Sequence[Any]) -> None:
        """Store a multi-valued attribute: drop empty and duplicate elements, keep one ``primary``."""
        out: list[Any] = []
        for e in elements:
            if e is None or e == {} or e in out:
                continue
            out.append(e)
        if path.definition.sub("primary") is not None:
            winners = [e for e in out if any(e is c for c in changed) and isinstance(e, dict)
                       and e.get("primary") is True]
            if len(winners) > 1:
                raise InvalidValue(f'more than one value of {path.attr!r} has "primary": true '
                                   "(RFC 7643 §2.4)")
            if winners:
                for e in out:  # RFC 7643 §2.4: "primary" true at most once
                    if e is not winners[0] and isinstance(e, dict) and e.get("primary") is True:
                        e["primary"] = False
        self._store(box, path, out or None)

    # -- add (RFC 7644 §3.5.2.1) -------------------------------------------------------------------------
    def _add(self, path: PatchPath, value: Any) -> None:
        d = path.definition
        self._no_null(path, value, "add")
        box = self._container(path.urn, create=True)
        assert box is not None
        if path.filter is not None:
            self._filtered_set(box, path, value, "add")
        elif path.sub is not None:
            self._sub_set(box, path, value, "add")
        elif d.multi_valued:
            new = self._norm_attr(path, value)
            elements = self._elements(box, path)
            added = [e for e in (new or []) if e not in elements]
            self._store_elements(box, path, elements + added, added)
        elif d.type == "complex":
            self._merge_complex(box, path, value, "add")
        else:
            self._store(box, path, self._norm_attr(path, value))

    # -- replace (RFC 7644 §3.5.2.3) ---------------------------------------------------------------------
    def _replace(self, path: PatchPath, value: Any) -> None:
        d = path.definition
        if path.filter is None and self._clear(value):
            self._remove(path, None, False)  # clear_with_empty_value
            return
        self._no_null(path, value, "replace")
        box = self._container(path.urn, create=True)
        assert box is not None
        if path.filter is not None:
            self._filtered_set(box, path, value, "replace")
        elif path.sub is not None:
            self._sub_set(box, path, value, "replace")
        elif d.multi_valued:
            new = self._norm_attr(path, value)
            self._store_elements(box, path, list(new or []), list(new or []))
        elif d.type == "complex":
            self._merge_complex(box, path, value, "replace")
        else:
            self._store(box, path, self._norm_attr(path, value))

    def _merge_complex(self, box: dict[str, Any], path: PatchPath, value: Any, op: str) -> None:
        """Single-valued complex: the given sub-attributes replace or add; the others stay (§3.5.2.1/.3)."""
        d = path.definition
        if path.urn == ENTERPRISE_USER and d.name == "manager":
            value = manager_value(value, self.policy)  # manager_bare_string
        if not isinstance(value, Mapping):
            raise InvalidValue(f"attribute {path.text!r} is complex; its value must be an object")
        clears: list[str] = []
        given: dict[str, Any] = {}
        for k, v in value.items():
            if op == "replace" and v is not None and self._clear(v):
                sub = d.sub(k)
                if sub is None:
                    raise InvalidValue(f"unknown sub-attribute {k!r} of {path.text!r}")
                clears.append(sub.name)
            else:
                given[k] = v
        new = self._norm_attr(path, given) if given else None
        cur = self._get(box, d)
        merged: dict[str, Any] = dict(cur) if isinstance(cur, Mapping) else {}
        if isinstance(new, Mapping):
            merged.update(new)
        for name in clears:
            merged.pop(name, None)
        self._store(box, path, merged or None)

    def _sub_set(self, box: dict[str, Any], path: PatchPath, value: Any, op: str) -> None:
        """``attr.sub`` without filter: a single-valued complex's sub-attribute, or every element's."""
        assert path.sub is not None
        d = path.definition
        clear = op == "replace" and self._clear(value)
        if d.multi_valued:
            elements = self._elements(box, path)
            if clear:
                for e in elements:
                    if isinstance(e, dict):
                        e.pop(path.sub, None)
                self._store_elements(box, path, elements, [])
                return
            if not elements:
                created = self._norm_element(path, {path.sub: value})
                self._store_elements(box, path, [created], [created])
                return
            new = self._norm_sub(path, value)
            for e in elements:
                if isinstance(e, dict):
                    self._check_sub_immutable(path, e, new)
                    e[path.sub] = new
            self._store_elements(box, path, elements, elements)
            return
        cur = self._get(box, d)
        merged: dict[str, Any] = dict(cur) if isinstance(cur, Mapping) else {}
        if clear:
            merged.pop(path.sub, None)
        else:
            new = self._norm_sub(path, value)
            if new is None:
                raise InvalidValue(f"no value for {path.text!r}")
            self._check_sub_immutable(path, merged, new)
            merged[path.sub] = new
        self._store(box, path, merged or None)

    def _check_sub_immutable(self, path: PatchPath, element: Mapping[str, Any], new: Any = None) -> None:
        sub = path.sub_definition
        if sub is not None and sub.mutability == "immutable" and element.get(sub.name) is not None \
                and element.get(sub.name) != new:
            raise Mutability(f"sub-attribute {path.text!r} is immutable (RFC 7643 §2.2)")

    def _filtered_set(self, box: dict[str, Any], path: PatchPath, value: Any, op: str) -> None:
        """``attr[filter]`` / ``attr[filter].sub`` for add and replace.

        Matching elements are updated (replace: the element is replaced, or its sub-attribute set; add:
        merged). No match: RFC 7644 §3.5.2.3 says ``noTarget``; with ``upsert_filtered_path`` (Entra sends
        ``Add``/``Replace`` on ``emails[type eq "work"].value``) one element built from the filter's ``eq``
        terms is created, so there is never a second element of that type.
        """
        elements = self._elements(box, path)
        matched = self._matching(elements, path)
        clear = op == "replace" and self._clear(value)
        if matched:
            if path.sub is not None:
                if clear:
                    for e in matched:
                        e.pop(path.sub, None)
                    self._store_elements(box, path, elements, [])
                    return
                new = self._norm_sub(path, value)
                if new is None:
                    raise InvalidValue(f"no value for {path.text!r}")
                for e in matched:
                    self._check_sub_immutable(path, e, new)
                    e[path.sub] = new
                self._store_elements(box, path, elements, matched)
                return
            if clear:
                self._store_elements(box, path, [e for e in elements if not any(e is m for m in matched)], [])
                return
            element = self._norm_element(path, value)
            if element is None:
                raise InvalidValue(f"no value for {path.text!r}")
            changed: list[Any] = []
            for i, e in enumerate(elements):
                if any(e is m for m in matched):
                    elements[i] = dict(element) if op == "replace" else {**e, **element}
                    changed.append(elements[i])
            self._store_elements(box, path, elements, changed)
            return
        if clear:
            return  # nothing to clear
        assert path.filter is not None
        if not self.policy.upsert_filtered_path:
            raise NoTarget(f"no value of {path.attr!r} matches {path.text!r} (RFC 7644 §3.5.2.3)")
        base = _upsert_base(path.filter)
        if base is None:
            raise NoTarget(f"no value of {path.attr!r} matches {path.text!r}, and the filter does not "
                           "describe one value to create")
        if path.sub is not None:
            raw: Any = {**base, path.sub: value}
        elif isinstance(value, Mapping):
            raw = {**base, **value}
        else:
            raise InvalidValue(f"the value for {path.text!r} must be an object")
        created = self._norm_element(path, raw)
        self._store_elements(box, path, elements + [created], [created])

    # -- remove (RFC 7644 §3.5.2.2) ----------------------------------------------------------------------
    def _remove(self, path: PatchPath, value: Any, has_value: bool) -> None:
        d = path.definition
        box = self._container(path.urn, create=False)
        if has_value:
            if not self.policy.remove_members_by_value:
                raise InvalidValue(f'"remove" of {path.text!r} takes no "value" (RFC 7644 §3.5.2.2)')
            if d.multi_valued and d.type == "complex" and path.filter is None and path.sub is None \
                    and d.sub("value") is not None:
                self._remove_by_value(box, path, value)
                return
            # otherwise the value is ignored: the path says what goes
        if path.filter is not None:
            elements = self._elements(box, path) if box is not None else []
            matched = self._matching(elements, path)
            if not matched:
                raise NoTarget(f"no value of {path.attr!r} matches {path.text!r} (RFC 7644 Table 9)")
            assert box is not None
            if path.sub is not None:
                for e in matched:
                    self._check_sub_immutable(path, e)
                    e.pop(path.sub, None)
            else:
                elements = [e for e in elements if not any(e is m for m in matched)]
            self._store_elements(box, path, elements, [])
            return
        if box is None:
            return
        if path.sub is not None:
            if d.multi_valued:
                elements = self._elements(box, path)
                for e in elements:
                    if isinstance(e, dict):
                        self._check_sub_immutable(path, e)
                        e.pop(path.sub, None)
                self._store_elements(box, path, elements, [])
                return
            cur = self._get(box, d)
            if isinstance(cur, Mapping):
                merged = dict(cur)
                if isinstance(cur, dict):
                    self._check_sub_immutable(path, cur)
                merged.pop(path.sub, None)
                self._store(box, path, merged or None)
            return
        self._store(box, path, None)

    def _remove_by_value(self, box: dict[str, Any] | None, path: PatchPath, value: Any) -> None:
        """``remove_members_by_value``, generalised: remove exactly the listed values of a multi-valued
        complex attribute (never all of them)."""
        wanted = self._listed_values(path, value)
        if box is None:
            return
        elements = self._elements(box, path)
        keep = [e for e in elements if not (isinstance(e, dict) and e.get("value") in wanted)]
        self._store_elements(box, path, keep, [])

    def _listed_values(self, path: PatchPath, value: Any) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        out: list[Any] = []
        for e in items:
            e = drop_null_ref(e, self.policy)
            if not isinstance(e, Mapping):
                raise InvalidValue(f'each value to remove from {path.attr!r} must be an object with "value"')
            found, v = _get_ci(e, "value")
            if not found or v is None:
                raise InvalidValue(f'each value to remove from {path.attr!r} needs a "value"')
            out.append(v)
        return out

    # -- group members (rows, not document) --------------------------------------------------------------
    def _member_ids(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidValue(f'{where}: the value must be a list of {{"value": id}} objects')
        ids: list[str] = []
        for i, element in enumerate(value):
            element = drop_null_ref(element, self.policy)  # null_ref
            if not isinstance(element, Mapping):
                raise InvalidValue(f"{where}[{i}] must be an object")
            mid: Any = None
            for k, v in element.items():
                low = k.lower() if isinstance(k, str) else ""
                if low == "value":
                    mid = v
                elif low == "$ref":
                    if not isinstance(v, str):
                        raise InvalidValue(f'{where}[{i}]."$ref" must be a string URI')
                elif low == "type":
                    if not isinstance(v, str):
                        raise InvalidValue(f'{where}[{i}].type must be a string')
                elif low != "display":
                    raise InvalidValue(f"{where}[{i}]: unknown member attribute {k!r}")
            if not isinstance(mid, str) or not mid or "\x00" in mid:
                raise InvalidValue(f'{where}[{i}] needs a non-empty string "value" (the member id)')
            if mid not in ids:
                ids.append(mid)
        return ids

    def _known(self) -> list[dict[str, Any]]:
        if self.members.known is None:
            raise ScimError("internal error: the operation needs the group's members, which were not loaded "
                            "(call needs_members)", status=500)
        return self.members.known

    def _members_op(self, op: str, path: PatchPath, value: Any, has_value: bool) -> None:
        """``members`` of a Group → :class:`MemberDelta` (RFC 7644 §3.5.2 on rows)."""
        where = path.text
        if path.sub is not None:
            if op == "remove" or path.target.mutability == "readOnly":
                raise Mutability(f"{where!r}: member sub-attributes cannot be changed (RFC 7643 §4.2)")
            known = self._known()
            matched = [m for m in known if path.filter is None or matches_element(path.filter, m)]
            if not matched:
                raise NoTarget(f"no member matches {where!r}")
            if any(m.get(path.sub) != value for m in matched):
                raise Mutability(f"{where!r}: member sub-attributes are immutable (RFC 7643 §4.2)")
            return
        if path.filter is None:
            if op == "add":
                self.members.add_ids(self._member_ids(value, where))
            elif op == "replace":
                # includes Okta's "replace members []" (replace_members_empty): unassign all (RFC 7643 §2.5)
                ids = [] if self._clear(value) else self._member_ids(value, where)
                if value is None and not ids and not self._clear(value):
                    raise InvalidValue(f'"replace" of {where!r} needs a list value')
                self.members.clear()
                self.members.add_ids(ids)
            elif has_value:
                if not self.policy.remove_members_by_value:
                    raise InvalidValue('"remove" of "members" takes no "value" (RFC 7644 §3.5.2.2); remove '
                                       'one member with members[value eq "id"]')
                self.members.remove_ids(self._member_ids(value, where))  # remove_members_by_value
            else:
                self.members.clear()
            return
        if op == "remove":
            if has_value and not self.policy.remove_members_by_value:
                raise InvalidValue(f'"remove" of {where!r} takes no "value" (RFC 7644 §3.5.2.2)')
            eq_ids = _value_eq_ids(path.filter)
            if eq_ids is None:
                matched = [m for m in self._known() if matches_element(path.filter, m)]
                if not matched:
                    raise NoTarget(f"no member matches {where!r} (RFC 7644 Table 9)")
                eq_ids = [str(m["value"]) for m in matched]
            self.members.remove_ids(eq_ids)
            return
        new_ids = self._member_ids(value if isinstance(value, list) else [value], where)
        if op == "add":
            self.members.add_ids(new_ids)
            return
        matched = [m for m in self._known() if matches_element(path.filter, m)]
        if not matched and not self.policy.upsert_filtered_path:
            raise NoTarget(f"no member matches {where!r} (RFC 7644 §3.5.2.3)")
        self.members.remove_ids([str(m["value"]) for m in matched])
        self.members.add_ids(new_ids)


def apply_patch(current: StoredResource, ops: Sequence[PatchOperation], registry: SchemaRegistry,
                resource_type: str, policy: TolerancePolicy) -> Change:
    """Apply ``ops`` in order (RFC 7644 §3.5.2: all or nothing) and return the new document and member delta.

    Pure: ``current`` is not modified; any error raises a :class:`ScimError` and nothing is returned.
    Group member operations become a :class:`MemberDelta`; ``current.members`` must be loaded when
    :func:`needs_members` says so. After the operations the required attributes (``userName``,
    ``displayName``) must still be non-empty (RFC 7643 §4.1, §4.2).
    """
    patcher = _Patcher(current, registry, resource_type, policy)
    for op in ops:
        patcher.apply(op)
    return patcher.finish()


__all__ = [
    "PATCH_OP_URN",
    "PatchOperation",
    "apply_patch",
    "needs_members",
    "parse_patch_request",
]
