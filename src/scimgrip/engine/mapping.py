"""Attribute mapping: source object → desired target values → POST body or PATCH operations (MAP, EXP-3, MAT-1).

* :func:`desired_values` evaluates the mappings of one object into ``{target path: value}`` (MAP-1…5).
* :func:`scim_resource` builds the POST body with the protocol core's PATCH engine, so filtered paths such as
  ``emails[type eq "work"].value`` become list elements exactly as a server would read them.
* :func:`patch_operations` diffs desired values against the values last exported (MAP-6): only changed paths,
  lower-case ops, JSON booleans, case-insensitive comparison unless the target is ``caseExact`` (EXP-3).
* :func:`matching_attributes` / :func:`match_filter` drive matching by precedence (MAT-1).

Reference attributes (:data:`REFERENCE_TARGETS`) carry **source** objectIds here; the engine translates them to
target ids (GRP) before building requests.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from scimgrip.engine.config import AttributeMapping
from scimgrip.engine.model import ObjectType, SourceObject
from scimgrip.engine.scope import is_false, is_true, lookup
from scimgrip.engine.values import parsed_path
from scimgrip.scim.errors import ScimError
from scimgrip.scim.model import StoredResource
from scimgrip.scim.patch import PatchOperation, apply_patch
from scimgrip.scim.schema import CORE_GROUP, CORE_USER, DEFAULT_REGISTRY, Attribute, SchemaRegistry
from scimgrip.scim.tolerance import DEFAULT_POLICY

if TYPE_CHECKING:
    from scimgrip.engine.expressions import EvalContext, Expression

MANAGER_PATH = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
REFERENCE_TARGETS: frozenset[str] = frozenset({MANAGER_PATH, "members"})
_ADD_ONLY_VALUES = ("MultiValueAddOnly", "ValueAddOnly")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class MappingError(ValueError):
    """A per-object mapping failure (EXP-4: escrowed, never a stop of the job). ``code`` is the log error code."""

    def __init__(self, target: str, message: str, code: str = "ExpressionEvaluationFailed") -> None:
        super().__init__(f"{target}: {message}")
        self.target = target
        self.message = message
        self.code = code


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1024)
def compiled_expression(text: str) -> Expression:
    """Parse (once) the expression text of a mapping (EXP-1)."""
    from scimgrip.engine.expressions import parse_expression
    return parse_expression(text)


def _is_null(value: Any) -> bool:
    """MAP-5: null, ``""`` and an empty list are "no value"."""
    return value is None or value == "" or (isinstance(value, list | tuple) and len(value) == 0)


def source_attributes(obj: SourceObject, *, soft_deleted: bool | None = None) -> dict[str, Any]:
    """The attributes expressions see: Entra names, plus ``objectId``, ``members`` (groups) and ``IsSoftDeleted``.

    ``IsSoftDeleted`` (SCP-4) is ``"True"``/``"False"`` as Entra renders booleans: ``soft_deleted`` when the
    caller computed it from :func:`scimgrip.engine.scope.scope_decision`, else derived from the source's own
    ``IsSoftDeleted`` and ``accountEnabled`` (SCP-4 c, d).
    """
    attrs: dict[str, Any] = dict(obj.attributes)
    attrs.setdefault("objectId", obj.id)
    if obj.members is not None:
        attrs["members"] = list(obj.members)
    if soft_deleted is None:
        soft_deleted = (is_true(attrs.get("IsSoftDeleted")) or is_true(attrs.get("softDeleted"))
                        or is_false(attrs.get("accountEnabled")))
    attrs["IsSoftDeleted"] = "True" if soft_deleted else "False"
    return attrs


def _raw_value(m: AttributeMapping, attrs: Mapping[str, Any], ctx: EvalContext | None) -> Any:
    if m.kind == "Direct":
        return lookup(attrs, m.source or "")
    if m.kind == "Constant":
        return m.constant
    if m.kind == "Expression":
        from scimgrip.engine.expressions import ExpressionError
        try:
            return compiled_expression(m.source or "").evaluate(attrs, ctx)
        except ExpressionError as exc:
            raise MappingError(m.target, f"expression {m.source!r}: {exc}") from exc
        except (ValueError, TypeError, ArithmeticError, KeyError, IndexError) as exc:
            raise MappingError(m.target, f"expression {m.source!r} failed: {exc}") from exc
    return None   # kind "None": only the default, on create (MAP-1)


def target_attribute(path: str, object_type: ObjectType | str, registry: SchemaRegistry = DEFAULT_REGISTRY) \
        -> Attribute | None:
    """The schema definition ``path`` designates (the sub-attribute for ``emails[type eq "work"].value``)."""
    parsed = parsed_path(path, str(object_type), registry)
    return None if parsed is None else parsed.target


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _single(path: str, value: Any) -> Any:
    if isinstance(value, list | tuple):
        values = [v for v in value if not _is_null(v)]
        if not values:
            return None
        if len(values) > 1:
            raise MappingError(path, f"{len(values)} values for a single-valued target (use Item(…, 1) or Join)",
                               "AttributeMappingFailed")
        return values[0]
    return value


def convert_value(path: str, value: Any, object_type: ObjectType | str,
                  registry: SchemaRegistry = DEFAULT_REGISTRY) -> Any:
    """Convert a mapped value to the target attribute's type (MAP-1): ``boolean`` → JSON bool from
    ``"True"``/``"False"``; ``integer``/``decimal`` → numbers; strings → ``str`` (booleans as ``True``/``False``);
    ``manager`` → the id string; ``members`` → a sorted list of ids. Unknown (custom) targets pass through."""
    if path == "members":
        items = value if isinstance(value, list | tuple | set | frozenset) else [value]
        return sorted({str(v.get("value") if isinstance(v, Mapping) else v) for v in items if not _is_null(v)})
    if path == MANAGER_PATH:
        v = _single(path, value)
        if isinstance(v, Mapping):
            v = v.get("value")
        return None if _is_null(v) else str(v)
    attr = target_attribute(path, object_type, registry)
    if attr is None:
        return value
    if attr.multi_valued and "[" not in path and attr.sub_attributes and not path.count("."):
        return value   # a whole multi-valued complex attribute (e.g. roles from AppRoleAssignmentsComplex)
    v = _single(path, value)
    if v is None:
        return None
    if attr.type == "boolean":
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise MappingError(path, f"{v!r} is not a Boolean", "AttributeMappingFailed")
    if attr.type == "integer":
        try:
            return int(v)
        except (TypeError, ValueError):
            raise MappingError(path, f"{v!r} is not an integer", "AttributeMappingFailed") from None
    if attr.type == "decimal":
        try:
            return float(v)
        except (TypeError, ValueError):
            raise MappingError(path, f"{v!r} is not a number", "AttributeMappingFailed") from None
    if attr.type == "complex":
        return v
    if isinstance(v, dt.datetime):
        return v.isoformat()
    return _text(v)


def desired_values(obj: SourceObject, mappings: Sequence[AttributeMapping], *, creating: bool,
                   ctx: EvalContext | None = None, soft_deleted: bool | None = None,
                   registry: SchemaRegistry = DEFAULT_REGISTRY) -> dict[str, Any]:
    """``{target path: value}`` for one object (MAP-1…5).

    * ``ObjectAddOnly`` mappings only when ``creating`` (MAP-3);
    * ``default`` only when ``creating`` and the value is null (MAP-2);
    * ``IgnoreFlowIfNullOrEmpty`` (``IGNORE``) → the path is absent;
    * null/empty → absent, unless ``flow_null`` → explicit ``None`` (MAP-5 DECISION);
    * values converted to the target type (:func:`convert_value`).

    Raises :class:`MappingError` (per-object failure, EXP-4).
    """
    attrs = source_attributes(obj, soft_deleted=soft_deleted)
    ignore: object | None = None
    if any(m.kind == "Expression" for m in mappings):
        from scimgrip.engine.expressions import IGNORE
        ignore = IGNORE
    out: dict[str, Any] = {}
    for m in mappings:
        if m.flow_type == "ObjectAddOnly" and not creating:
            continue
        raw = _raw_value(m, attrs, ctx)
        if ignore is not None and raw is ignore:
            continue
        value = None if _is_null(raw) else convert_value(m.target, raw, obj.object_type, registry)
        if _is_null(value) and creating and m.default is not None:
            value = convert_value(m.target, m.default, obj.object_type, registry)
        if _is_null(value):
            if m.flow_null:
                out[m.target] = None
            continue
        out[m.target] = value
    return out


# ------------------------------------------------------------------------------------------------------------
# POST body
# ------------------------------------------------------------------------------------------------------------
def _split_custom_urn(path: str) -> tuple[str, str]:
    urn, _, attr = path.rpartition(":")
    return urn, attr


_SLOT = "scimgrip-slot-{}-" + secrets.token_hex(8)   # unguessable: a source value can never equal a slot


def _fill(value: Any, slots: Mapping[str, Any]) -> tuple[Any, int]:
    """``value`` with every slot string replaced by its value; also how many were replaced."""
    if isinstance(value, str):
        return (slots[value], 1) if value in slots else (value, 0)
    if isinstance(value, list):
        pairs = [_fill(v, slots) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        filled = 0
        for k, v in value.items():
            out[k], n = _fill(v, slots)
            filled += n
        return out, filled
    return value, 0


@lru_cache(maxsize=256)
def _resource_template(object_type: str, shape: tuple[tuple[str, Any], ...],
                       registry: SchemaRegistry) -> dict[str, Any] | None:
    """The POST body of one *shape* of desired values (the paths, and the non-string values) with slot strings
    where the string values go: the protocol core builds it once per shape instead of once per object (it was
    the largest engine-side cost of an initial cycle, bench/engine.py). None if the core rejects it."""
    desired = {path: (_SLOT.format(i) if value is _STRING else value) for i, (path, value) in enumerate(shape)}
    try:
        return _build_resource(desired, object_type, include_members=False, registry=registry)
    except MappingError:
        return None


_STRING = object()   # a string value in a template shape


def scim_resource(desired: Mapping[str, Any], object_type: ObjectType | str, *, include_members: bool = False,
                  registry: SchemaRegistry = DEFAULT_REGISTRY) -> dict[str, Any]:
    """The POST body for ``desired`` (see :func:`_build_resource`), from a per-shape template when every value
    is a scalar (users), else built directly. Both give the same body: a template is used only if every string
    value landed verbatim in it."""
    if "members" not in desired and all(v is None or isinstance(v, str | bool | int | float)
                                        for v in desired.values()):
        shape = tuple((p, _STRING if isinstance(v, str) else v) for p, v in desired.items())
        template = _resource_template(str(object_type), shape, registry)
        if template is not None:
            slots = {_SLOT.format(i): v for i, (_, v) in enumerate(desired.items()) if isinstance(v, str)}
            body, filled = _fill(template, slots)
            if filled == len(slots):
                return dict(body)
    return _build_resource(desired, object_type, include_members=include_members, registry=registry)


def _build_resource(desired: Mapping[str, Any], object_type: ObjectType | str, *, include_members: bool = False,
                    registry: SchemaRegistry = DEFAULT_REGISTRY) -> dict[str, Any]:
    """The POST body for ``desired`` (WIRE): ``replace`` operations applied to an empty resource by the
    protocol core (filtered paths become typed list elements; ``manager`` becomes ``{"value": id}``, RFC 7643
    §4.3), ``schemas`` with the enterprise (or custom) extension URN when used. ``None`` values are omitted.

    Groups get ``members: []`` (T-GRP-1: members are added afterwards in PATCH chunks) unless
    ``include_members``. Raises :class:`MappingError` if the protocol core rejects a value.
    """
    ops: list[PatchOperation] = []
    custom: dict[str, dict[str, Any]] = {}
    members: list[str] = []
    for i, (path, value) in enumerate(desired.items()):
        if value is None:
            continue
        if path == "members":
            members = list(value)
            continue
        if target_attribute(path, object_type, registry) is None and path.lower().startswith("urn:"):
            urn, attr = _split_custom_urn(path)
            custom.setdefault(urn, {})[attr] = value
            continue
        ops.append(PatchOperation("replace", path, value, True, i))
    empty = StoredResource("", object_type, {}, 0, _EPOCH, _EPOCH)
    try:
        doc = apply_patch(empty, ops, registry, object_type, DEFAULT_POLICY).doc
    except ScimError as exc:
        raise MappingError(object_type, exc.detail, "AttributeMappingFailed") from exc
    core = CORE_USER if object_type == "User" else CORE_GROUP
    schemas = [core]
    for urn in registry.extension_urns(object_type):
        if urn in doc:
            schemas.append(urn)
    for urn, values in custom.items():
        doc[urn] = values
        schemas.append(urn)
    body: dict[str, Any] = {"schemas": schemas, **doc}
    if object_type == "Group":
        body["members"] = [{"value": m} for m in members] if include_members else []
    return body


# ------------------------------------------------------------------------------------------------------------
# PATCH
# ------------------------------------------------------------------------------------------------------------
def schema_case_exact(path: str, object_type: ObjectType | str = "User",
                      registry: SchemaRegistry = DEFAULT_REGISTRY) -> bool:
    """``caseExact`` of the attribute ``path`` designates (EXP-3); unknown attributes compare case-sensitively."""
    attr = target_attribute(path, object_type, registry)
    return True if attr is None else attr.case_exact


def values_equal(a: Any, b: Any, case_exact: bool) -> bool:
    """Equality for the diff (MAP-6, EXP-3): strings ignore case unless ``case_exact``; lists as multisets."""
    if isinstance(a, bool) or isinstance(b, bool):
        return _text(a) == _text(b) if isinstance(a, bool) != isinstance(b, bool) else a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b if case_exact else a.casefold() == b.casefold()
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return False
        rest = list(b)
        for item in a:
            hit = next((i for i, o in enumerate(rest) if values_equal(item, o, case_exact)), None)
            if hit is None:
                return False
            rest.pop(hit)
        return True
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k], case_exact) for k in a)
    return bool(a == b)


def _wire_value(path: str, value: Any) -> Any:
    return {"value": value} if path == MANAGER_PATH and isinstance(value, str) else value


def _member_operations(new: Iterable[str], old: Iterable[str], *, add_only: bool) -> list[dict[str, Any]]:
    old_set, new_list = set(old), list(dict.fromkeys(new))
    ops: list[dict[str, Any]] = []
    added = [m for m in new_list if m not in old_set]
    if added:
        ops.append({"op": "add", "path": "members", "value": [{"value": m} for m in added]})
    if not add_only:
        new_set = set(new_list)
        ops.extend({"op": "remove", "path": f"members[value eq {json.dumps(m, ensure_ascii=False)}]"}
                   for m in sorted(old_set - new_set))
    return ops


def patch_operations(desired: Mapping[str, Any], exported: Mapping[str, Any], *,
                     case_exact: Callable[[str], bool] | None = None, object_type: ObjectType | str = "User",
                     mappings: Sequence[AttributeMapping] = ()) -> list[dict[str, Any]]:
    """The RFC 7644 operations that turn ``exported`` (values last sent, or read from the matched target) into
    ``desired`` (MAP-6): one ``replace`` per changed path (``add`` for a filtered path such as
    ``emails[type eq "work"].value`` that has no value yet), ``remove`` for a ``flow_null`` ``None`` the target
    still holds; op names lower-case; booleans JSON. Paths absent from ``desired`` are left alone (MAP-5).

    ``case_exact(path)`` decides the comparison (EXP-3; default: the target schema's ``caseExact``).
    ``mappings`` supplies per-path ``flow_always`` (send even if equal, MAP-3), ``AttributeAddOnly`` (only when
    the target has no value) and ``ValueAddOnly``/``MultiValueAddOnly`` (add values, never remove).
    ``members`` become one ``add`` with the new ids and one ``remove`` per dropped id
    (``members[value eq "id"]``); the engine chunks them (GRP).
    """
    exact = case_exact or (lambda p: schema_case_exact(p, object_type))
    by_target = {m.target: m for m in mappings}
    ops: list[dict[str, Any]] = []
    member_ops: list[dict[str, Any]] = []
    for path, value in desired.items():
        m = by_target.get(path)
        flow = m.flow_type if m is not None else "Always"
        old = exported.get(path)
        if path == "members":
            member_ops = _member_operations(value or (), old or (), add_only=flow in _ADD_ONLY_VALUES)
            continue
        if value is None:
            if not _is_null(old) and flow not in _ADD_ONLY_VALUES:
                ops.append({"op": "remove", "path": path})
            continue
        if flow == "AttributeAddOnly" and not _is_null(old):
            continue
        if flow in _ADD_ONLY_VALUES and isinstance(value, list):
            have = old if isinstance(old, list) else []
            new = [v for v in value if not any(values_equal(v, o, exact(path)) for o in have)]
            if new:
                ops.append({"op": "add", "path": path, "value": new})
            continue
        if (m is not None and m.flow_always) or not values_equal(value, old, exact(path)):
            # a filtered path the target has no element for: "add" (Entra's upsert; a strict server answers
            # "replace" on an unmatched filter with noTarget, RFC 7644 §3.5.2.3)
            op = "add" if "[" in path and _is_null(old) else "replace"
            ops.append({"op": op, "path": path, "value": _wire_value(path, value)})
    return ops + member_ops


# ------------------------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------------------------
def matching_attributes(mappings: Sequence[AttributeMapping]) -> list[tuple[str, AttributeMapping]]:
    """The matching mappings, lowest ``matching_priority`` first (MAT-1: tried in order, first hit wins)."""
    found = [m for m in mappings if m.matching_priority > 0]
    return [(m.target, m) for m in sorted(found, key=lambda m: m.matching_priority)]


def match_filter(target_path: str, value: Any) -> str:
    """The SCIM filter for one matching query (MAT-1, entra-scim-wire.md §8): ``userName eq "…"`` with the value
    JSON-escaped; booleans and numbers unquoted."""
    if value is None:
        raise ValueError(f"no value to match {target_path} on")
    if isinstance(value, bool):
        literal = "true" if value else "false"
    elif isinstance(value, int | float):
        literal = json.dumps(value)
    else:
        literal = json.dumps(str(value), ensure_ascii=False)
    return f"{target_path} eq {literal}"


__all__ = [
    "MANAGER_PATH",
    "REFERENCE_TARGETS",
    "MappingError",
    "compiled_expression",
    "convert_value",
    "desired_values",
    "match_filter",
    "matching_attributes",
    "patch_operations",
    "schema_case_exact",
    "scim_resource",
    "source_attributes",
    "target_attribute",
    "values_equal",
]
