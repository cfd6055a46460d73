"""Rendering stored resources as SCIM JSON, and ``attributes`` / ``excludedAttributes`` (RFC 7644 §3.4.2.5, §3.9).

Honours the ``returned`` characteristic (RFC 7643 §2.4): ``always`` (``id``, and ``schemas``) is returned
whatever is asked, ``never`` (``password``) never, ``request`` only when named in ``attributes``, ``default``
unless excluded. Names are case-insensitive and may be URN-qualified; unknown names are ignored.

:func:`wants` lets the HTTP layer skip loading group members when ``excludedAttributes=members`` (or an
``attributes`` list without ``members``), so a group read never touches the membership rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from scimgrip.scim.schema import Attribute, SchemaRegistry


class MemberLike(Protocol):
    @property
    def value(self) -> str: ...
    @property
    def type(self) -> str | None: ...
    @property
    def display(self) -> str | None: ...


class ResourceLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def resource_type(self) -> str: ...
    @property
    def doc(self) -> dict[str, Any]: ...
    @property
    def version(self) -> int: ...
    @property
    def created(self) -> dt.datetime: ...
    @property
    def last_modified(self) -> dt.datetime: ...
    @property
    def members(self) -> Sequence[MemberLike] | None: ...
    @property
    def groups(self) -> Sequence[MemberLike] | None: ...


@dataclass(frozen=True)
class Projection:
    """Parsed ``attributes`` / ``excludedAttributes``: sets of (schema URN, attr, sub or None), lower-cased."""

    include: frozenset[tuple[str, str, str | None]] | None = None
    exclude: frozenset[tuple[str, str, str | None]] = frozenset()


ALL = Projection()


def _parse_list(text: str | Sequence[str] | None, registry: SchemaRegistry,
                resource_type: str) -> set[tuple[str, str, str | None]]:
    if not text:
        return set()
    names: Iterable[str] = text.split(",") if isinstance(text, str) else text
    out: set[tuple[str, str, str | None]] = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        try:
            urn, rest = registry.split_urn(resource_type, name)
        except KeyError:
            continue
        if not rest:
            # a whole extension schema: every attribute of it
            for attr in registry.attributes_of(resource_type, urn):
                out.add((urn.lower(), attr.name.lower(), None))
            continue
        res = registry.resolve(resource_type, f"{urn}:{rest}" if urn else rest)
        if res is None:
            continue
        if res.parent is not None:
            out.add((res.schema.lower(), res.parent.name.lower(), res.attribute.name.lower()))
        else:
            out.add((res.schema.lower(), res.attribute.name.lower(), None))
    return out


def parse_projection(attributes: str | Sequence[str] | None, excluded: str | Sequence[str] | None,
                     registry: SchemaRegistry, resource_type: str) -> Projection:
    inc = _parse_list(attributes, registry, resource_type)
    exc = _parse_list(excluded, registry, resource_type)
    return Projection(frozenset(inc) if attributes and inc else (frozenset() if attributes else None),
                      frozenset(exc))


def _decide(p: Projection, urn: str, attr: Attribute, sub: Attribute | None = None,
            parent: Attribute | None = None) -> bool:
    """Should this (sub-)attribute be in the response?"""
    a = parent if parent is not None else attr
    returned = (sub or attr).returned
    if returned == "never":
        return False
    if returned == "always" or a.returned == "always":
        return True
    if p.include is None and not p.exclude:
        # no attributes/excludedAttributes (most requests): the characteristic alone decides; skips building
        # the lower-cased keys, which was most of render()'s time (docs/performance.md)
        return returned != "request"
    key_attr = (urn.lower(), a.name.lower(), None)
    key_sub = (urn.lower(), a.name.lower(), sub.name.lower()) if sub is not None else None
    if key_attr in p.exclude or (key_sub is not None and key_sub in p.exclude):
        return False
    if p.include is not None:
        if key_attr in p.include:
            return True
        if key_sub is not None:
            return key_sub in p.include
        # attribute itself: keep if any of its sub-attributes was asked for
        return any(k[0] == key_attr[0] and k[1] == key_attr[1] for k in p.include)
    return returned != "request"


def wants(p: Projection, registry: SchemaRegistry, resource_type: str, name: str) -> bool:
    """Would attribute ``name`` (core schema) be returned under projection ``p``?"""
    core = registry.resource_type(resource_type).schema
    attr = registry.top_attribute(resource_type, core, name)
    return attr is not None and _decide(p, core, attr)


def _project_value(p: Projection, urn: str, attr: Attribute, value: Any) -> Any:
    if attr.type != "complex" or not attr.sub_attributes:
        return value

    def one(obj: Any) -> Any:
        if not isinstance(obj, Mapping):
            return obj
        out = {}
        for k, v in obj.items():
            sub = attr.sub(k)
            if sub is None or _decide(p, urn, attr, sub, attr):
                out[k] = v
        return out

    if isinstance(value, list):
        return [x for x in (one(v) for v in value) if x]
    return one(value)


def render(resource: ResourceLike, registry: SchemaRegistry, base_url: str,
           projection: Projection = ALL) -> dict[str, Any]:
    """Full SCIM representation of a stored resource (RFC 7643 §3), shaped by ``projection``."""
    rt = registry.resource_type(resource.resource_type)
    core = rt.schema
    location = f"{base_url}{rt.endpoint}/{resource.id}"
    extensions = [urn for urn, _ in rt.extensions if urn in resource.doc]
    out: dict[str, Any] = {"schemas": [core, *extensions], "id": resource.id}
    doc = resource.doc
    for key, value in doc.items():
        if key in extensions:
            continue
        attr = registry.top_attribute(resource.resource_type, core, key)
        if attr is None or not _decide(projection, core, attr):
            continue
        projected = _project_value(projection, core, attr, value)
        if projected not in (None, [], {}):
            out[attr.name] = projected
    if resource.members is not None and resource.resource_type == "Group":
        attr = registry.top_attribute("Group", core, "members")
        if attr is not None and _decide(projection, core, attr):
            out["members"] = _project_value(projection, core, attr,
                                            _member_list(resource.members, base_url, registry))
    if resource.groups is not None and resource.resource_type == "User":
        attr = registry.top_attribute("User", core, "groups")
        if attr is not None and _decide(projection, core, attr) and resource.groups:
            out["groups"] = _project_value(projection, core, attr, [
                {"value": g.value, "$ref": f"{base_url}/Groups/{g.value}", "display": g.display or "",
                 "type": "direct"} for g in resource.groups])
    for urn in extensions:
        ext_doc = doc.get(urn)
        if not isinstance(ext_doc, Mapping):
            continue
        ext_out: dict[str, Any] = {}
        for key, value in ext_doc.items():
            attr = registry.top_attribute(resource.resource_type, urn, key)
            if attr is None or not _decide(projection, urn, attr):
                continue
            projected = _project_value(projection, urn, attr, value)
            if projected not in (None, [], {}):
                ext_out[attr.name] = projected
        if ext_out:
            out[urn] = ext_out
        else:
            out["schemas"].remove(urn)
    meta_attr = registry.top_attribute(resource.resource_type, core, "meta")
    if meta_attr is not None and _decide(projection, core, meta_attr):
        meta = {
            "resourceType": rt.name,
            "created": format_datetime(resource.created),
            "lastModified": format_datetime(resource.last_modified),
            "location": location,
            "version": etag(resource.version),
        }
        out["meta"] = _project_value(projection, core, meta_attr, meta)
    return out


def _member_list(members: Sequence[MemberLike], base_url: str, registry: SchemaRegistry) -> list[dict[str, Any]]:
    out = []
    for m in members:
        item: dict[str, Any] = {"value": m.value}
        endpoint = "Groups" if m.type == "Group" else "Users"
        item["$ref"] = f"{base_url}/{endpoint}/{m.value}"
        if m.display:
            item["display"] = m.display
        if m.type:
            item["type"] = m.type
        out.append(item)
    return out


def format_datetime(value: dt.datetime) -> str:
    """RFC 7643 §2.3.5 xsd:dateTime in UTC with millisecond precision and a ``Z``."""
    v = value.astimezone(dt.UTC)   # formatted by hand: strftime cost more than the rest of a user's meta
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{value.microsecond // 1000:03d}Z")


def etag(version: int) -> str:
    """Weak entity tag for ``meta.version`` and the ``ETag`` header (RFC 7644 §3.14)."""
    return f'W/"{version}"'


def parse_etag(text: str) -> int | None:
    """``W/"3"`` or ``"3"`` → 3; anything else → None."""
    t = text.strip()
    if t.startswith("W/"):
        t = t[2:]
    t = t.strip('"')
    return int(t) if t.isascii() and t.isdigit() else None   # "³".isdigit() is True; int("³") fails
