"""Schema registry: attribute definitions and their characteristics (RFC 7643 §2, §4, §7, §8.7.1).

The registry knows the core ``User`` and ``Group`` schemas, the Enterprise User extension, and any extension
schema a tenant loads from a JSON file in the RFC 7643 §7 format. Attribute names and schema URNs are
case-insensitive (RFC 7643 §2.1); every lookup here goes through lower-cased keys and answers with the
canonical spelling.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scimgrip.scim.errors import InvalidValue

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"

TYPES = frozenset({"string", "boolean", "decimal", "integer", "dateTime", "binary", "reference", "complex"})
MUTABILITIES = frozenset({"readOnly", "readWrite", "immutable", "writeOnly"})
RETURNED = frozenset({"always", "never", "default", "request"})
UNIQUENESS = frozenset({"none", "server", "global"})


@dataclass(frozen=True)
class Attribute:
    """One attribute definition with every RFC 7643 §2.2 characteristic."""

    name: str
    type: str = "string"
    multi_valued: bool = False
    description: str = ""
    required: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"
    returned: str = "default"
    uniqueness: str = "none"
    canonical_values: tuple[str, ...] = ()
    reference_types: tuple[str, ...] = ()
    sub_attributes: tuple[Attribute, ...] = ()
    _sub_index: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for sub in self.sub_attributes:
            self._sub_index[sub.name.lower()] = sub

    def sub(self, name: str) -> Attribute | None:
        """The sub-attribute called ``name`` (case-insensitive), or None."""
        return self._sub_index.get(name.lower())

    def to_json(self) -> dict[str, Any]:
        """RFC 7643 §7 attribute representation."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "multiValued": self.multi_valued,
            "description": self.description,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": self.uniqueness,
        }
        if self.canonical_values:
            out["canonicalValues"] = list(self.canonical_values)
        if self.type == "reference":
            out["referenceTypes"] = list(self.reference_types) or ["external"]
        if self.sub_attributes:
            out["subAttributes"] = [s.to_json() for s in self.sub_attributes]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attribute:
        """Parse an RFC 7643 §7 attribute definition, validating the characteristics."""
        try:
            name = str(data["name"])
        except KeyError as exc:
            raise InvalidValue("attribute definition without a name") from exc
        typ = str(data.get("type", "string"))
        if typ not in TYPES:
            raise InvalidValue(f"attribute {name!r}: unknown type {typ!r}")
        mut = str(data.get("mutability", "readWrite"))
        ret = str(data.get("returned", "default"))
        uniq = str(data.get("uniqueness", "none"))
        if mut not in MUTABILITIES or ret not in RETURNED or uniq not in UNIQUENESS:
            raise InvalidValue(f"attribute {name!r}: invalid mutability/returned/uniqueness")
        subs = tuple(cls.from_json(s) for s in data.get("subAttributes", ()) or ())
        return cls(
            name=name,
            type=typ,
            multi_valued=bool(data.get("multiValued", False)),
            description=str(data.get("description", "")),
            required=bool(data.get("required", False)),
            case_exact=bool(data.get("caseExact", False)),
            mutability=mut,
            returned=ret,
            uniqueness=uniq,
            canonical_values=tuple(str(v) for v in data.get("canonicalValues", ()) or ()),
            reference_types=tuple(str(v) for v in data.get("referenceTypes", ()) or ()),
            sub_attributes=subs,
        )


@dataclass(frozen=True)
class Schema:
    """A schema (RFC 7643 §7): a URN id, a name and its top-level attributes."""

    id: str
    name: str
    description: str
    attributes: tuple[Attribute, ...]
    _index: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for attr in self.attributes:
            self._index[attr.name.lower()] = attr

    def attribute(self, name: str) -> Attribute | None:
        return self._index.get(name.lower())

    def to_json(self, location: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemas": [SCHEMA_SCHEMA],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": [a.to_json() for a in self.attributes],
            "meta": {"resourceType": "Schema"},
        }
        if location:
            out["meta"]["location"] = location
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schema:
        if "id" not in data or not str(data["id"]).startswith("urn:"):
            raise InvalidValue("schema definition needs an 'id' that is a URN")
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            attributes=tuple(Attribute.from_json(a) for a in data.get("attributes", ())),
        )


@dataclass(frozen=True)
class ResourceType:
    """A resource type (RFC 7643 §6): endpoint, core schema and extensions (URN -> required)."""

    name: str
    endpoint: str
    schema: str
    description: str = ""
    extensions: tuple[tuple[str, bool], ...] = ()

    def to_json(self, location: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": self.name,
            "name": self.name,
            "endpoint": self.endpoint,
            "description": self.description,
            "schema": self.schema,
            "schemaExtensions": [{"schema": urn, "required": req} for urn, req in self.extensions],
            "meta": {"resourceType": "ResourceType"},
        }
        if location:
            out["meta"]["location"] = location
        return out


def _a(name: str, typ: str = "string", **kw: Any) -> Attribute:
    return Attribute(name=name, type=typ, **kw)


def _multi_complex(name: str, description: str, *, value_type: str = "string", types: tuple[str, ...] = (),
                   extra: tuple[Attribute, ...] = (), value_ref: tuple[str, ...] = (),
                   mutability: str = "readWrite") -> Attribute:
    subs: list[Attribute] = [
        _a("value", value_type, reference_types=value_ref, mutability=mutability,
           description=f"The value of the {name} entry."),
        _a("display", description="A human-readable name, primarily used for display purposes.",
           mutability=mutability),
        *extra,
        _a("type", canonical_values=types, mutability=mutability, description="A label indicating the function."),
        _a("primary", "boolean", mutability=mutability,
           description="Indicates the 'primary' or preferred attribute value."),
    ]
    return _a(name, "complex", multi_valued=True, description=description, sub_attributes=tuple(subs),
              mutability=mutability)


def _common_attributes() -> tuple[Attribute, ...]:
    """``id``, ``externalId`` and ``meta`` (RFC 7643 §3.1), which every resource carries."""
    return (
        _a("id", case_exact=True, mutability="readOnly", returned="always", uniqueness="server",
           description="Unique identifier for the SCIM resource as defined by the service provider."),
        _a("externalId", case_exact=True,
           description="A String that is an identifier for the resource as defined by the provisioning client."),
        _a("meta", "complex", mutability="readOnly", description="Resource metadata.", sub_attributes=(
            _a("resourceType", case_exact=True, mutability="readOnly"),
            _a("created", "dateTime", mutability="readOnly"),
            _a("lastModified", "dateTime", mutability="readOnly"),
            _a("location", "reference", case_exact=True, mutability="readOnly", reference_types=("uri",)),
            _a("version", case_exact=True, mutability="readOnly"),
        )),
    )


def user_schema() -> Schema:
    """RFC 7643 §4.1 and §8.7.1: the core User schema."""
    attrs = (
        _a("userName", required=True, uniqueness="server",
           description="Unique identifier for the User, typically used by the user to directly authenticate."),
        _a("name", "complex", description="The components of the user's real name.", sub_attributes=(
            _a("formatted"), _a("familyName"), _a("givenName"), _a("middleName"),
            _a("honorificPrefix"), _a("honorificSuffix"),
        )),
        _a("displayName", description="The name of the User, suitable for display to end-users."),
        _a("nickName"),
        _a("profileUrl", "reference", reference_types=("external",)),
        _a("title"),
        _a("userType"),
        _a("preferredLanguage"),
        _a("locale"),
        _a("timezone"),
        _a("active", "boolean", description="A Boolean value indicating the User's administrative status."),
        _a("password", mutability="writeOnly", returned="never",
           description="The User's cleartext password; never returned."),
        _multi_complex("emails", "Email addresses for the user.", types=("work", "home", "other")),
        _multi_complex("phoneNumbers", "Phone numbers for the User.",
                       types=("work", "home", "mobile", "fax", "pager", "other")),
        _multi_complex("ims", "Instant messaging addresses for the User.",
                       types=("aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo")),
        _multi_complex("photos", "URLs of photos of the User.", value_type="reference", value_ref=("external",),
                       types=("photo", "thumbnail")),
        _a("addresses", "complex", multi_valued=True, description="A physical mailing address for this User.",
           sub_attributes=(
               _a("formatted"), _a("streetAddress"), _a("locality"), _a("region"), _a("postalCode"),
               _a("country"), _a("type", canonical_values=("work", "home", "other")), _a("primary", "boolean"),
           )),
        _a("groups", "complex", multi_valued=True, mutability="readOnly",
           description="A list of groups to which the user belongs.", sub_attributes=(
               _a("value", mutability="readOnly"),
               _a("$ref", "reference", mutability="readOnly", reference_types=("User", "Group")),
               _a("display", mutability="readOnly"),
               _a("type", mutability="readOnly", canonical_values=("direct", "indirect")),
           )),
        _multi_complex("entitlements", "A list of entitlements for the User."),
        _multi_complex("roles", "A list of roles for the User."),
        _a("x509Certificates", "complex", multi_valued=True, sub_attributes=(
            _a("value", "binary"), _a("display"), _a("type"), _a("primary", "boolean"),
        )),
    )
    return Schema(CORE_USER, "User", "User Account", attrs)


def group_schema() -> Schema:
    """RFC 7643 §4.2 and §8.7.1: the core Group schema."""
    attrs = (
        _a("displayName", required=True, description="A human-readable name for the Group."),
        _a("members", "complex", multi_valued=True, description="A list of members of the Group.",
           sub_attributes=(
               _a("value", mutability="immutable"),
               _a("$ref", "reference", mutability="immutable", reference_types=("User", "Group")),
               _a("display", mutability="readOnly"),
               _a("type", mutability="immutable", canonical_values=("User", "Group")),
           )),
    )
    return Schema(CORE_GROUP, "Group", "Group", attrs)


def enterprise_user_schema() -> Schema:
    """RFC 7643 §4.3: the Enterprise User extension."""
    attrs = (
        _a("employeeNumber"),
        _a("costCenter"),
        _a("organization"),
        _a("division"),
        _a("department"),
        _a("manager", "complex", description="The User's manager.", sub_attributes=(
            _a("value", description="The id of the SCIM resource representing the User's manager."),
            _a("$ref", "reference", reference_types=("User",)),
            _a("displayName", mutability="readOnly"),
        )),
    )
    return Schema(ENTERPRISE_USER, "EnterpriseUser", "Enterprise User", attrs)


COMMON_ATTRIBUTES: tuple[Attribute, ...] = _common_attributes()
_COMMON_INDEX = {a.name.lower(): a for a in COMMON_ATTRIBUTES}


@dataclass(frozen=True)
class ResolvedAttribute:
    """Where an attribute name landed: its schema URN, its definition and, for a sub-attribute, the parent."""

    schema: str
    attribute: Attribute
    parent: Attribute | None = None

    @property
    def is_core(self) -> bool:
        return self.schema in (CORE_USER, CORE_GROUP) or self.schema == ""


class SchemaRegistry:
    """All schemas and resource types one tenant can use.

    Lookups are case-insensitive. ``resolve`` turns an attribute path such as ``name.givenName``,
    ``emails.value`` or ``urn:...:enterprise:2.0:User:manager.value`` into a schema URN and definition.
    """

    def __init__(self, schemas: Iterable[Schema], resource_types: Iterable[ResourceType]) -> None:
        self._schemas: dict[str, Schema] = {s.id.lower(): s for s in schemas}
        self._types: dict[str, ResourceType] = {r.name.lower(): r for r in resource_types}
        self._by_endpoint: dict[str, ResourceType] = {r.endpoint.lower().lstrip("/"): r for r in resource_types}

    # -- lookups -----------------------------------------------------------------------------------------------
    def schema(self, urn: str) -> Schema | None:
        return self._schemas.get(urn.lower())

    def schemas(self) -> list[Schema]:
        return list(self._schemas.values())

    def resource_type(self, name: str) -> ResourceType:
        rt = self._types.get(name.lower())
        if rt is None:
            raise KeyError(name)
        return rt

    def resource_types(self) -> list[ResourceType]:
        return list(self._types.values())

    def by_endpoint(self, endpoint: str) -> ResourceType | None:
        return self._by_endpoint.get(endpoint.lower().lstrip("/"))

    def schemas_for(self, resource_type: str) -> list[Schema]:
        """Core schema first, then the extensions of ``resource_type``."""
        rt = self.resource_type(resource_type)
        out = [self._schemas[rt.schema.lower()]]
        out.extend(self._schemas[urn.lower()] for urn, _ in rt.extensions if urn.lower() in self._schemas)
        return out

    def extension_urns(self, resource_type: str) -> list[str]:
        return [urn for urn, _ in self.resource_type(resource_type).extensions]

    def canonical_urn(self, resource_type: str, urn: str) -> str | None:
        """The canonical spelling of ``urn`` if it is the core schema or an extension of ``resource_type``."""
        low = urn.lower()
        for s in self.schemas_for(resource_type):
            if s.id.lower() == low:
                return s.id
        return None

    def split_urn(self, resource_type: str, path: str) -> tuple[str, str]:
        """Split ``urn:...:User:manager.value`` into (canonical URN, ``manager.value``).

        A path that starts with no known URN is returned with the core schema URN. A path that is exactly a
        known URN returns (URN, ""). Unknown URN prefixes raise ``KeyError``.
        """
        low = path.lower()
        if not low.startswith("urn:"):
            return self.resource_type(resource_type).schema, path
        # longest schema id that prefixes the path, followed by ':' or end
        best: str | None = None
        for s in self.schemas_for(resource_type):
            sid = s.id.lower()
            if (low == sid or low.startswith(sid + ":")) and (best is None or len(sid) > len(best)):
                best = s.id
        if best is None:
            raise KeyError(path)
        rest = path[len(best) + 1:] if len(path) > len(best) else ""
        return best, rest

    def resolve(self, resource_type: str, path: str) -> ResolvedAttribute | None:
        """Resolve ``attr`` / ``attr.sub`` / ``urn:…:attr[.sub]`` for ``resource_type``; None if unknown."""
        try:
            urn, rest = self.split_urn(resource_type, path)
        except KeyError:
            return None
        if not rest:
            return None
        parts = rest.split(".", 1)
        top = parts[0].lower()
        core = self.resource_type(resource_type).schema
        attr: Attribute | None = None
        if urn == core and top in _COMMON_INDEX:
            attr = _COMMON_INDEX[top]
        else:
            schema = self._schemas.get(urn.lower())
            attr = schema.attribute(top) if schema else None
        if attr is None:
            return None
        if len(parts) == 1:
            return ResolvedAttribute(urn, attr)
        sub = attr.sub(parts[1])
        if sub is None:
            return None
        return ResolvedAttribute(urn, sub, parent=attr)

    def top_attribute(self, resource_type: str, urn: str, name: str) -> Attribute | None:
        core = self.resource_type(resource_type).schema
        if urn == core and name.lower() in _COMMON_INDEX:
            return _COMMON_INDEX[name.lower()]
        schema = self._schemas.get(urn.lower())
        return schema.attribute(name) if schema else None

    def attributes_of(self, resource_type: str, urn: str) -> Iterator[Attribute]:
        core = self.resource_type(resource_type).schema
        if urn == core:
            yield from COMMON_ATTRIBUTES
        schema = self._schemas.get(urn.lower())
        if schema:
            yield from schema.attributes

    # -- construction ------------------------------------------------------------------------------------------
    def with_extension(self, schema: Schema, resource_type: str, *, required: bool = False) -> SchemaRegistry:
        """A new registry with ``schema`` added as an extension of ``resource_type`` (RFC 7643 §3.3)."""
        schemas = [s for s in self._schemas.values() if s.id.lower() != schema.id.lower()] + [schema]
        types = []
        for rt in self._types.values():
            if rt.name.lower() == resource_type.lower():
                ext = tuple(e for e in rt.extensions if e[0].lower() != schema.id.lower()) + ((schema.id, required),)
                rt = ResourceType(rt.name, rt.endpoint, rt.schema, rt.description, ext)
            types.append(rt)
        return SchemaRegistry(schemas, types)

    def with_extension_file(self, path: str | Path) -> SchemaRegistry:
        """Load extension schemas from a JSON file (RFC 7643 §7 format).

        The file holds one schema object or a list of them. Each may carry a non-standard ``"resourceType"``
        key naming the resource type it extends (default ``User``) and ``"required"``.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        items = data if isinstance(data, list) else [data]
        reg = self
        for item in items:
            if not isinstance(item, dict):
                raise InvalidValue(f"{path}: each schema must be a JSON object")
            schema = Schema.from_json(item)
            reg = reg.with_extension(schema, str(item.get("resourceType", "User")),
                                     required=bool(item.get("required", False)))
        return reg


def default_registry() -> SchemaRegistry:
    """Core User (with Enterprise User extension) and core Group."""
    return SchemaRegistry(
        [user_schema(), group_schema(), enterprise_user_schema()],
        [
            ResourceType("User", "/Users", CORE_USER, "User Account", ((ENTERPRISE_USER, False),)),
            ResourceType("Group", "/Groups", CORE_GROUP, "Group"),
        ],
    )


DEFAULT_REGISTRY = default_registry()
