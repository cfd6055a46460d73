"""PATCH ``path`` grammar (RFC 7644 §3.5.2, Figure 5) bound to a schema.

::

    PATH      = attrPath / valuePath [subAttr]
    attrPath  = [URI ":"] ATTRNAME *1subAttr
    valuePath = attrPath "[" valFilter "]"          ; attrPath without subAttr here

URNs contain dots and colons (``urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value``),
so the URN prefix is split off by the schema registry (longest known schema id followed by ``:``) before the
rest is split on ``.``. Attribute names and URNs are case-insensitive (RFC 7643 §2.1); a bound path carries
the canonical spelling and the attribute definitions.

Errors: a malformed path or an attribute the schema does not define → ``invalidPath``; a malformed or
unbindable value filter inside ``[...]`` → ``invalidFilter`` (RFC 7644 Table 9 lists ``invalidFilter`` for
"PATCH (Path Filter)"). ``noTarget`` is reserved for paths that are valid but match nothing in the resource
(raised by :mod:`scimgrip.scim.patch`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from scimgrip.scim.errors import InvalidPath
from scimgrip.scim.filter import AttrPath, Filter, bind, parse_value_filter
from scimgrip.scim.schema import Attribute, SchemaRegistry

MAX_PATH_LENGTH = 4096
_ATTRNAME = re.compile(r"^\$?[A-Za-z][A-Za-z0-9_\-$]*$")


@dataclass(frozen=True)
class PatchPath:
    """A parsed and bound PATCH path.

    ``urn``/``attr``/``definition`` name the top-level attribute (canonical URN and name). ``sub`` and
    ``sub_definition`` are the sub-attribute, whether written as ``attr.sub`` or ``attr[filter].sub``.
    ``filter`` is the bound relative value filter of ``attr[filter]`` (evaluate one element with
    :func:`scimgrip.scim.filter.matches_element`).
    """

    text: str
    urn: str
    attr: str
    definition: Attribute = field(compare=False)
    sub: str | None = None
    sub_definition: Attribute | None = field(default=None, compare=False)
    filter: Filter | None = field(default=None, compare=False)
    is_core: bool = True

    @property
    def target(self) -> Attribute:
        """The definition of what the path designates: the sub-attribute if any, else the attribute."""
        return self.sub_definition if self.sub_definition is not None else self.definition

    @property
    def multi_valued(self) -> bool:
        return self.definition.multi_valued

    def dotted(self) -> str:
        return f"{self.attr}.{self.sub}" if self.sub else self.attr

    def __str__(self) -> str:
        return self.text


def _find_closing_bracket(text: str, start: int) -> int:
    """Index of the ``]`` closing the ``[`` at ``start - 1``, skipping quoted strings; -1 if none."""
    i = start
    in_string = False
    n = len(text)
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "[":
            return -2  # nested value filters are not allowed (RFC 7644 §3.4.2.2)
        elif c == "]":
            return i
        i += 1
    return -1


def _split_attr_path(text: str, registry: SchemaRegistry, resource_type: str) -> tuple[str, list[str]]:
    """``[URI:]ATTR[.SUB]`` → (canonical URN, [ATTR] or [ATTR, SUB]); unknown URN → invalidPath."""
    try:
        urn, rest = registry.split_urn(resource_type, text)
    except KeyError:
        raise InvalidPath(f"unknown schema URN in path {text!r}") from None
    if not rest:
        raise InvalidPath(f"path {text!r} names a schema, not an attribute")
    parts = rest.split(".")
    if len(parts) > 2 or not all(_ATTRNAME.match(p) for p in parts):
        raise InvalidPath(f"invalid attribute path {text!r}")
    return urn, parts


def parse_patch_path(text: str, registry: SchemaRegistry, resource_type: str) -> PatchPath:
    """Parse and bind a PATCH ``path`` (RFC 7644 §3.5.2); raises ``InvalidPath`` / ``InvalidFilter``."""
    if not isinstance(text, str):
        raise InvalidPath("PATCH \"path\" must be a string")
    if not text or text != text.strip():
        raise InvalidPath(f"invalid PATCH path {text!r}")
    if len(text) > MAX_PATH_LENGTH:
        raise InvalidPath(f"PATCH path is longer than {MAX_PATH_LENGTH} characters")
    core = registry.resource_type(resource_type).schema

    open_at = text.find("[")
    filter_text: str | None = None
    after = ""
    head = text
    if open_at >= 0:
        close_at = _find_closing_bracket(text, open_at + 1)
        if close_at == -2:
            raise InvalidPath(f"nested value filters are not allowed: {text!r}")
        if close_at < 0:
            raise InvalidPath(f"unclosed '[' in path {text!r}")
        head = text[:open_at]
        filter_text = text[open_at + 1:close_at]
        after = text[close_at + 1:]
        if after and (not after.startswith(".") or not _ATTRNAME.match(after[1:])):
            raise InvalidPath(f"invalid text after value filter in path {text!r}")
    elif "]" in text:
        raise InvalidPath(f"unbalanced ']' in path {text!r}")

    urn, parts = _split_attr_path(head, registry, resource_type)
    definition = registry.top_attribute(resource_type, urn, parts[0])
    if definition is None:
        raise InvalidPath(f"unknown attribute {parts[0]!r} in path {text!r} "
                          f"for resource type {resource_type}")

    sub_name: str | None = parts[1] if len(parts) == 2 else None
    bound: Filter | None = None
    if filter_text is not None:
        if sub_name is not None:
            raise InvalidPath(f"a value filter cannot follow a sub-attribute: {text!r}")
        if definition.type != "complex" or not definition.multi_valued:
            raise InvalidPath(f"value filter on {definition.name!r}, which is not a multi-valued complex "
                              f"attribute: {text!r}")
        parsed = parse_value_filter(filter_text)  # InvalidFilter (RFC 7644 Table 9, PATCH path filter)
        parent_path = AttrPath(urn, definition.name, None, definition, None)
        bound = bind(parsed, registry, resource_type, _parent=definition, _parent_path=parent_path)
        if after:
            sub_name = after[1:]

    sub_def: Attribute | None = None
    if sub_name is not None:
        if definition.type != "complex":
            raise InvalidPath(f"{definition.name!r} has no sub-attributes: {text!r}")
        sub_def = definition.sub(sub_name)
        if sub_def is None:
            raise InvalidPath(f"unknown sub-attribute {sub_name!r} of {definition.name!r} in path {text!r}")
    return PatchPath(
        text=text,
        urn=urn,
        attr=definition.name,
        definition=definition,
        sub=sub_def.name if sub_def is not None else None,
        sub_definition=sub_def,
        filter=bound,
        is_core=urn == core,
    )


__all__ = ["MAX_PATH_LENGTH", "PatchPath", "parse_patch_path"]
