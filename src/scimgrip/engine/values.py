"""Reading a target attribute path (``emails[type eq "work"].value``, ``urn:…:User:manager``) out of a SCIM
resource, so a matched target object can be compared with the mapped values (MAP-6) and reconcile can report
drift. Uses the protocol core's path grammar, so the engine and the server agree on what a path means.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from scimgrip.scim.errors import ScimError
from scimgrip.scim.filter import matches_element
from scimgrip.scim.paths import parse_patch_path
from scimgrip.scim.schema import DEFAULT_REGISTRY, SchemaRegistry


def _get_ci(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


@lru_cache(maxsize=4096)
def parsed_path(path: str, object_type: str, registry: SchemaRegistry = DEFAULT_REGISTRY) -> Any:
    """``parse_patch_path`` memoised (None when the path does not parse): a cycle asks for the same few mapped
    paths for every object, and parsing them dominated the engine's CPU time per object (bench/engine.py)."""
    try:
        return parse_patch_path(path, registry, object_type)
    except ScimError:
        return None


def value_at(resource: Mapping[str, Any], path: str, object_type: str,
             registry: SchemaRegistry = DEFAULT_REGISTRY) -> Any:
    """The value at ``path`` in ``resource``, or None. Complex single values (``manager``) yield ``value``."""
    if path == "members":
        members = resource.get("members")
        return sorted(m.get("value") for m in members if isinstance(m, Mapping)) if isinstance(members, list) \
            else None
    p = parsed_path(path, object_type, registry)
    if p is None:
        return None
    box: Any = resource
    if not p.is_core:
        box = _get_ci(resource, p.urn)
        if not isinstance(box, Mapping):
            return None
    top = _get_ci(box, p.attr)
    if top is None:
        return None
    if p.filter is not None:
        if not isinstance(top, list):
            return None
        hits = [e for e in top if isinstance(e, Mapping) and matches_element(p.filter, e)]
        if not hits:
            return None
        el = hits[0]
        return _get_ci(el, p.sub) if p.sub else el
    if p.sub:
        return _get_ci(top, p.sub) if isinstance(top, Mapping) else None
    if isinstance(top, Mapping) and p.definition.type == "complex" and not p.definition.multi_valued:
        return _get_ci(top, "value")
    return top
