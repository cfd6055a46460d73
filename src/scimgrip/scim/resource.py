"""Validation and normalisation of incoming resources and attribute values (RFC 7643 §2, §3; RFC 7644 §3.3).

What comes in is checked against the schema and brought to one shape before storage:

* attribute names and schema URNs take their canonical spelling (RFC 7643 §2.1: case-insensitive);
* values are type-checked (string, boolean, integer, decimal, dateTime, reference, binary, complex,
  multi-valued); tolerated IdP forms are rewritten through :mod:`scimgrip.scim.tolerance`;
* read-only attributes (``id``, ``meta``, ``groups``, ``members.display``) are ignored (RFC 7644 §3.3:
  "the service provider SHALL ignore" read-only values in a create), write-only ``password`` is dropped
  (scimgrip authenticates users by SSO and never stores passwords), ``null`` means unassigned;
* *values* are kept verbatim: no trimming, re-casing or reformatting, because Entra diffs what it reads
  against what it would send (entra-scim-wire.md §4.3).

Group ``members`` are split off: they are stored as rows, not in the document.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from scimgrip.scim.errors import InvalidSyntax, InvalidValue
from scimgrip.scim.filter import parse_datetime
from scimgrip.scim.schema import ENTERPRISE_USER, Attribute, SchemaRegistry
from scimgrip.scim.tolerance import (
    TolerancePolicy,
    coerce_boolean,
    drop_null_ref,
    manager_value,
)

MAX_STRING_LENGTH = 65536
# Attributes the server owns; never taken from a request body (RFC 7643 §3.1).
SERVER_OWNED = frozenset({"id", "meta"})


@dataclass(frozen=True)
class NormalizedResource:
    """A validated body: the document to store and, for groups, the member ids it carries (None if absent)."""

    doc: dict[str, Any]
    members: list[str] | None
    external_id_given: bool = False


def _type_error(where: str, expected: str, value: Any) -> InvalidValue:
    shown = json.dumps(value)[:80] if not isinstance(value, Decimal) else str(value)
    return InvalidValue(f"attribute {where!r} must be {expected}, got {shown}")


def _scalar(attr: Attribute, value: Any, policy: TolerancePolicy, where: str) -> Any:
    t = attr.type
    if t in ("string", "reference"):
        if not isinstance(value, str):
            raise _type_error(where, "a string", value)
        if len(value) > MAX_STRING_LENGTH:
            raise InvalidValue(f"attribute {where!r} is longer than {MAX_STRING_LENGTH} characters")
        if "\x00" in value:
            raise InvalidValue(f"attribute {where!r} contains a NUL character")
        if attr.canonical_values and not policy.non_canonical_types and attr.name == "type" \
                and value.lower() not in {c.lower() for c in attr.canonical_values}:
            raise InvalidValue(f"attribute {where!r} must be one of {list(attr.canonical_values)}")
        return value
    if t == "boolean":
        return coerce_boolean(value, policy, where)
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(where, "an integer", value)
        return value
    if t == "decimal":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise _type_error(where, "a number", value)
        return value
    if t == "dateTime":
        if not isinstance(value, str) or parse_datetime(value) is None:
            raise _type_error(where, "an xsd:dateTime string", value)
        return value
    if t == "binary":
        if not isinstance(value, str):
            raise _type_error(where, "a base64 string", value)
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _type_error(where, "base64", value) from exc
        return value
    raise InvalidValue(f"attribute {where!r} has unsupported type {t!r}")


def _complex(attr: Attribute, value: Any, policy: TolerancePolicy, where: str) -> dict[str, Any] | None:
    value = drop_null_ref(value, policy)
    if not isinstance(value, Mapping):
        raise _type_error(where, "an object", value)
    out: dict[str, Any] = {}
    for key, sub_value in value.items():
        sub = attr.sub(key)
        if sub is None:
            raise InvalidValue(f"unknown sub-attribute {key!r} of {where!r}")
        if sub.mutability == "readOnly" or sub_value is None:
            continue
        out[sub.name] = _scalar(sub, sub_value, policy, f"{where}.{sub.name}")
    return out or None


def normalize_value(registry: SchemaRegistry, resource_type: str, urn: str, attr: Attribute, value: Any,
                    policy: TolerancePolicy, *, where: str) -> Any:
    """Validate and canonicalise one value of top-level attribute ``attr`` (of schema ``urn``).

    Returns None when the value amounts to "unassigned" (null, empty list, object of nulls).
    """
    del registry, resource_type  # the definition carries everything needed today
    if value is None:
        return None
    if urn == ENTERPRISE_USER and attr.name == "manager":
        value = manager_value(value, policy)
    if attr.multi_valued:
        if not isinstance(value, list):
            raise _type_error(where, "a list", value)
        items: list[Any] = []
        for i, element in enumerate(value):
            if element is None:
                continue
            item = (_complex(attr, element, policy, f"{where}[{i}]") if attr.type == "complex"
                    else _scalar(attr, element, policy, f"{where}[{i}]"))
            if item is not None and item not in items:
                items.append(item)
        return items or None
    if attr.type == "complex":
        return _complex(attr, value, policy, where)
    return _scalar(attr, value, policy, where)


def _check_schemas(body: Mapping[str, Any], registry: SchemaRegistry, resource_type: str,
                   policy: TolerancePolicy) -> None:
    schemas = body.get("schemas")
    if schemas is None:
        return  # lenient: the endpoint already says what the resource is
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas):
        raise InvalidSyntax('"schemas" must be a list of URN strings')
    core = registry.resource_type(resource_type).schema
    known = {s.id.lower() for s in registry.schemas_for(resource_type)}
    if schemas and core.lower() not in {s.lower() for s in schemas}:
        raise InvalidSyntax(f'"schemas" must contain {core}')
    unknown = [s for s in schemas if s.lower() not in known]
    if unknown and not policy.unknown_schema_urns:
        raise InvalidSyntax(f"unknown schema URN(s) in \"schemas\": {unknown}")


def normalize_resource(body: Any, registry: SchemaRegistry, resource_type: str,
                       policy: TolerancePolicy) -> NormalizedResource:
    """Validate a POST/PUT body (RFC 7644 §3.3, §3.5.1) and return the document to store."""
    if not isinstance(body, Mapping):
        raise InvalidSyntax("the request body must be a JSON object")
    _check_schemas(body, registry, resource_type, policy)
    rt = registry.resource_type(resource_type)
    core = rt.schema
    doc: dict[str, Any] = {}
    members: list[str] | None = None
    for key, value in body.items():
        low = key.lower()
        if low == "schemas":
            continue
        if low in SERVER_OWNED:
            continue  # RFC 7644 §3.3: read-only values in a create are ignored
        if low.startswith("urn:"):
            urn = registry.canonical_urn(resource_type, key)
            if urn is None or urn == core:
                # A URN-qualified single attribute ("urn:…:User:employeeNumber") in a body
                try:
                    urn2, rest = registry.split_urn(resource_type, key)
                except KeyError:
                    if policy.unknown_schema_urns and value is None:
                        continue
                    raise InvalidValue(f"unknown schema extension {key!r}") from None
                if not rest:
                    if urn2 == core and isinstance(value, Mapping):
                        # {"urn:…:core:2.0:User": {...}} — fold into the top level
                        nested = normalize_resource({**value, "schemas": [core]}, registry, resource_type, policy)
                        doc.update(nested.doc)
                        continue
                    raise InvalidValue(f"unknown schema extension {key!r}")
                _set_attr(doc, registry, resource_type, core, urn2, rest, value, policy)
                continue
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise InvalidValue(f"extension {urn!r} must be an object")
            ext: dict[str, Any] = dict(doc.get(urn, {}))
            for sub_key, sub_value in value.items():
                attr = registry.top_attribute(resource_type, urn, sub_key)
                if attr is None:
                    raise InvalidValue(f"unknown attribute {sub_key!r} in {urn}")
                if attr.mutability == "readOnly":
                    continue
                norm = normalize_value(registry, resource_type, urn, attr, sub_value, policy,
                                       where=f"{urn}:{attr.name}")
                if norm is not None:
                    ext[attr.name] = norm
            if ext:
                doc[urn] = ext
            continue
        attr = registry.top_attribute(resource_type, core, key)
        if attr is None:
            raise InvalidValue(f"unknown attribute {key!r} for resource type {resource_type}")
        if resource_type == "Group" and attr.name == "members":
            members = _member_ids(value, policy)
            continue
        if attr.mutability == "readOnly" or attr.mutability == "writeOnly":
            continue
        norm = normalize_value(registry, resource_type, core, attr, value, policy, where=attr.name)
        if norm is not None:
            doc[attr.name] = norm
    _check_required(doc, registry, resource_type)
    return NormalizedResource(doc, members, "externalId" in doc)


def _set_attr(doc: dict[str, Any], registry: SchemaRegistry, resource_type: str, core: str, urn: str,
              rest: str, value: Any, policy: TolerancePolicy) -> None:
    name = rest.split(".", 1)[0]
    attr = registry.top_attribute(resource_type, urn, name)
    if attr is None or "." in rest:
        raise InvalidValue(f"unknown attribute {urn}:{rest}")
    if attr.mutability in ("readOnly", "writeOnly"):
        return
    norm = normalize_value(registry, resource_type, urn, attr, value, policy, where=f"{urn}:{attr.name}")
    if norm is None:
        return
    if urn == core:
        doc[attr.name] = norm
    else:
        doc.setdefault(urn, {})[attr.name] = norm


def _member_ids(value: Any, policy: TolerancePolicy) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidValue('"members" must be a list of {"value": id} objects')
    ids: list[str] = []
    for i, element in enumerate(value):
        element = drop_null_ref(element, policy)
        if not isinstance(element, Mapping) or not isinstance(element.get("value"), str) or not element["value"] \
                or "\x00" in element["value"]:
            raise InvalidValue(f'"members[{i}]" must be an object with a string "value"')
        if element["value"] not in ids:
            ids.append(element["value"])
    return ids


def _check_required(doc: Mapping[str, Any], registry: SchemaRegistry, resource_type: str) -> None:
    """RFC 7643 §4.1/§4.2: ``userName`` / ``displayName`` are required, non-empty strings."""
    core = registry.resource_type(resource_type).schema
    for attr in registry.attributes_of(resource_type, core):
        if attr.required and attr.mutability != "readOnly":
            v = doc.get(attr.name)
            if v is None or (isinstance(v, str) and not v.strip()):
                raise InvalidValue(f"attribute {attr.name!r} is required")


def check_required(doc: Mapping[str, Any], registry: SchemaRegistry, resource_type: str) -> None:
    """Public form of the required-attribute check (used after PATCH)."""
    _check_required(doc, registry, resource_type)
