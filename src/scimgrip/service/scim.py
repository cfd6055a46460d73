"""The SCIM service: one protocol operation at a time, independent of the web framework.

Mirrors the split that scim2-server makes between its service, handler and storage (landscape.md §6.1):
the HTTP layer (``scimgrip.server``) only turns a request into a call here and the :class:`Reply` back
into a response; the protocol rules live in ``scimgrip.scim``; I/O lives in ``scimgrip.storage``. Bulk
(RFC 7644 §3.7) calls the same methods, so every operation behaves identically inside and outside a Bulk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from scimgrip.scim import patch as patch_ops
from scimgrip.scim.errors import (
    InvalidFilter,
    InvalidValue,
    NotFound,
    PreconditionFailed,
    ScimError,
)
from scimgrip.scim.filter import Filter, bind, parse_filter
from scimgrip.scim.messages import Limits, ListParams, list_response
from scimgrip.scim.projection import etag, parse_etag, parse_projection, render, wants
from scimgrip.scim.resource import normalize_resource
from scimgrip.scim.schema import DEFAULT_REGISTRY, Schema, SchemaRegistry
from scimgrip.scim.tolerance import DEFAULT_POLICY, TolerancePolicy
from scimgrip.storage.base import Change, MemberDelta, Query, Storage, StoredResource, Tenant

RESOURCE_TYPES = ("User", "Group")


@dataclass
class Reply:
    """What the HTTP layer sends: status, JSON body (or None) and extra headers."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Preconditions:
    """``If-Match`` / ``If-None-Match`` (RFC 7644 §3.14, RFC 7232)."""

    if_match: str | None = None
    if_none_match: str | None = None

    def expected_version(self) -> int | None:
        """The version ``If-Match`` demands, or None for none / ``*``. Several tags: unsupported → 412."""
        if self.if_match is None or self.if_match.strip() == "*":
            return None
        tags = [t for t in self.if_match.split(",") if t.strip()]
        if len(tags) != 1:
            raise PreconditionFailed("If-Match must carry exactly one entity tag")
        version = parse_etag(tags[0])
        if version is None:
            raise PreconditionFailed(f"If-Match {self.if_match!r} does not match the resource version")
        return version


class RegistryCache:
    """Per-tenant schema registries: the defaults plus the tenant's extension schemas (RFC 7643 §7)."""

    def __init__(self, base: SchemaRegistry = DEFAULT_REGISTRY) -> None:
        self.base = base
        self._cache: dict[tuple[int, str], SchemaRegistry] = {}

    def for_tenant(self, tenant: Tenant) -> SchemaRegistry:
        extensions = tenant.settings.get("extensions") if tenant.settings else None
        if not extensions:
            return self.base
        key = (tenant.id, hashlib.sha256(orjson.dumps(extensions)).hexdigest())
        reg = self._cache.get(key)
        if reg is None:
            reg = self.base
            for item in extensions:
                reg = reg.with_extension(Schema.from_json(item), str(item.get("resourceType", "User")),
                                         required=bool(item.get("required", False)))
            self._cache[key] = reg
        return reg


class ScimService:
    def __init__(self, storage: Storage, *, policy: TolerancePolicy = DEFAULT_POLICY,
                 limits: Limits | None = None, registries: RegistryCache | None = None) -> None:
        self.storage = storage
        self.policy = policy
        self.limits = limits or Limits()
        self.registries = registries or RegistryCache()

    # -- helpers -----------------------------------------------------------------------------------------------
    def registry(self, tenant: Tenant) -> SchemaRegistry:
        return self.registries.for_tenant(tenant)

    def _render(self, tenant: Tenant, res: StoredResource, base_url: str,
                attributes: str | None = None, excluded: str | None = None) -> dict[str, Any]:
        reg = self.registry(tenant)
        proj = parse_projection(attributes, excluded, reg, res.resource_type)
        return render(res, reg, base_url, proj)

    def _single(self, tenant: Tenant, res: StoredResource, base_url: str, status: int = 200,
                attributes: str | None = None, excluded: str | None = None) -> Reply:
        body = self._render(tenant, res, base_url, attributes, excluded)
        headers = {"ETag": etag(res.version)}
        if status == 201:
            headers["Location"] = body.get("meta", {}).get("location") or \
                f"{base_url}/{res.resource_type}s/{res.id}"
        return Reply(status, body, headers)

    def _check_members(self, tenant: Tenant, ids: list[str] | tuple[str, ...] | Any, group_id: str | None) -> None:
        """Members must exist in the tenant; a group cannot contain itself."""
        if not ids:
            return
        if group_id is not None and group_id in ids:
            raise InvalidValue("a group cannot be a member of itself")
        found = self.storage.existing_ids(tenant.id, list(ids))
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            raise InvalidValue(f"member(s) {shown} do not exist in this tenant")

    # -- CRUD --------------------------------------------------------------------------------------------------
    def create(self, tenant: Tenant, rt: str, body: Any, base_url: str,
               attributes: str | None = None, excluded: str | None = None) -> Reply:
        """POST /Users, /Groups (RFC 7644 §3.3): 201 with the stored resource, 409 ``uniqueness``."""
        reg = self.registry(tenant)
        norm = normalize_resource(body, reg, rt, self.policy)
        members = norm.members or []
        if len(members) > self.limits.max_members_per_patch:
            raise ScimError(f"at most {self.limits.max_members_per_patch} members per request", status=413)
        self._check_members(tenant, members, None)
        res = self.storage.create(tenant.id, rt, norm.doc, members)
        if rt == "Group":
            res = self.storage.get(tenant.id, rt, res.id, include_members=wants(
                parse_projection(attributes, excluded, reg, rt), reg, rt, "members"))
        return self._single(tenant, res, base_url, 201, attributes, excluded)

    def get(self, tenant: Tenant, rt: str, rid: str, base_url: str, attributes: str | None = None,
            excluded: str | None = None, pre: Preconditions = Preconditions()) -> Reply:
        """GET /Users/{id} (RFC 7644 §3.4.1); ``If-None-Match`` → 304."""
        _existing_id(rt, rid)
        reg = self.registry(tenant)
        proj = parse_projection(attributes, excluded, reg, rt)
        res = self.storage.get(tenant.id, rt, rid, include_members=wants(proj, reg, rt, "members"),
                               include_groups=wants(proj, reg, rt, "groups"))
        if pre.if_none_match is not None:
            tags = [parse_etag(t) for t in pre.if_none_match.split(",")]
            if pre.if_none_match.strip() == "*" or res.version in tags:
                return Reply(304, None, {"ETag": etag(res.version)})
        return Reply(200, render(res, reg, base_url, proj), {"ETag": etag(res.version)})

    def replace(self, tenant: Tenant, rt: str, rid: str, body: Any, base_url: str,
                pre: Preconditions = Preconditions(), attributes: str | None = None,
                excluded: str | None = None) -> Reply:
        """PUT (RFC 7644 §3.5.1). Members given → the membership becomes exactly that set (applied as a diff
        of rows); ``members`` omitted → memberships are left alone (RFC 7644 §3.5.1 allows either, and
        dropping every membership because a client left the attribute out is the dangerous choice)."""
        _existing_id(rt, rid)
        reg = self.registry(tenant)
        norm = normalize_resource(body, reg, rt, self.policy)
        expected = pre.expected_version()
        if norm.members is not None:
            if len(norm.members) > self.limits.max_members_per_patch:
                raise ScimError(f"at most {self.limits.max_members_per_patch} members per request", status=413)
            self._check_members(tenant, norm.members, rid)

        def apply(current: StoredResource) -> Change:
            doc = dict(norm.doc)
            _check_immutable(current.doc, doc, reg, rt)
            if norm.members is None:
                return Change(doc)
            return Change(doc, MemberDelta(add=tuple(norm.members), remove_all=True))

        res = self.storage.update(tenant.id, rt, rid, apply, expected_version=expected)
        res = self.storage.get(tenant.id, rt, rid, include_members=wants(
            parse_projection(attributes, excluded, reg, rt), reg, rt, "members"))
        return self._single(tenant, res, base_url, 200, attributes, excluded)

    def patch(self, tenant: Tenant, rt: str, rid: str, body: Any, base_url: str,
              pre: Preconditions = Preconditions(), attributes: str | None = None,
              excluded: str | None = None) -> Reply:
        """PATCH (RFC 7644 §3.5.2), atomic. Users → 200 with the resource; Groups → 204 (Entra's TUT asks
        for 204 and warns against returning the member list) unless ``attributes``/``excludedAttributes``
        asks for a body."""
        _existing_id(rt, rid)
        reg = self.registry(tenant)
        ops = patch_ops.parse_patch_request(body, self.policy, max_operations=self.limits.max_patch_operations,
                                            max_members=self.limits.max_members_per_patch)
        expected = pre.expected_version()
        need_members = patch_ops.needs_members(ops)

        def apply(current: StoredResource) -> Change:
            change = patch_ops.apply_patch(current, ops, reg, rt, self.policy)
            if rid in change.members.add:
                raise InvalidValue("a group cannot be a member of itself")
            # No existence pre-check here: storage inserts members with INSERT … SELECT FROM resources in this
            # same transaction and raises InvalidValue for an id the tenant does not have. The pre-check was a
            # second connection and transaction per member PATCH (docs/performance.md).
            return change

        res = self.storage.update(tenant.id, rt, rid, apply, expected_version=expected,
                                  needs_members=need_members)
        if rt == "Group" and attributes is None and excluded is None:
            return Reply(204, None, {"ETag": etag(res.version)})
        proj = parse_projection(attributes, excluded, reg, rt)
        res = self.storage.get(tenant.id, rt, rid, include_members=wants(proj, reg, rt, "members"),
                               include_groups=wants(proj, reg, rt, "groups"))
        return Reply(200, render(res, reg, base_url, proj), {"ETag": etag(res.version)})

    def delete(self, tenant: Tenant, rt: str, rid: str, pre: Preconditions = Preconditions()) -> Reply:
        """DELETE (RFC 7644 §3.6): 204, then 404."""
        _existing_id(rt, rid)
        self.storage.delete(tenant.id, rt, rid, expected_version=pre.expected_version())
        return Reply(204)

    # -- query -------------------------------------------------------------------------------------------------
    def parse_filter_for(self, tenant: Tenant, rt: str, text: str) -> Filter:
        node = parse_filter(text, unquoted_values=self.policy.unquoted_filter_values)
        return bind(node, self.registry(tenant), rt)

    def _sort_path(self, reg: SchemaRegistry, rt: str, sort_by: str | None) -> str | None:
        if not sort_by:
            return None
        res = reg.resolve(rt, sort_by)
        if res is None:
            raise InvalidValue(f"cannot sort by unknown attribute {sort_by!r}")
        if res.attribute.type == "complex":
            raise InvalidValue(f"cannot sort by complex attribute {sort_by!r}")
        name = f"{res.parent.name}.{res.attribute.name}" if res.parent else res.attribute.name
        core = reg.resource_type(rt).schema
        return name if res.schema == core else f"{res.schema}:{name}"

    def query(self, tenant: Tenant, rt: str | None, params: ListParams, base_url: str) -> Reply:
        """GET /Users?filter=… and POST /.search (RFC 7644 §3.4.2, §3.4.3). Never 404: zero results → 200."""
        types = [rt] if rt else list(RESOURCE_TYPES)
        if len(types) > 1:
            return self._list_all_types(tenant, types, params, base_url)
        rt = types[0]
        reg = self.registry(tenant)
        flt = self.parse_filter_for(tenant, rt, params.filter) if params.filter else None
        proj = parse_projection(params.attributes, params.excluded_attributes, reg, rt)
        query = Query(filter=flt, sort_by=self._sort_path(reg, rt, params.sort_by), descending=params.descending,
                      start_index=params.start_index, count=params.count, cursor=params.cursor,
                      include_members=wants(proj, reg, rt, "members"),
                      include_groups=wants(proj, reg, rt, "groups"))
        page = self.storage.search(tenant.id, rt, query)
        resources = [render(r, reg, base_url, proj) for r in page.resources]
        return Reply(200, list_response(resources, page.total, page.start_index, next_cursor=page.next_cursor,
                                        previous_cursor=page.previous_cursor,
                                        cursor_mode=params.cursor is not None))

    def _list_all_types(self, tenant: Tenant, types: list[str], params: ListParams, base_url: str) -> Reply:
        """Root ``/.search`` across resource types (RFC 7644 §3.4.3): index pagination over the concatenation.

        A filter must be valid for at least one type; types where it names unknown attributes contribute
        nothing.
        """
        if params.cursor is not None:
            raise ScimError("cursor pagination is supported per resource type only", status=400,
                            scim_type="invalidCursor")
        totals: list[tuple[str, int, Filter | None]] = []
        errors: list[ScimError] = []
        for t in types:
            try:
                flt = self.parse_filter_for(tenant, t, params.filter) if params.filter else None
            except InvalidFilter as exc:
                errors.append(exc)
                continue
            page = self.storage.search(tenant.id, t, Query(filter=flt, count=0))
            totals.append((t, page.total, flt))
        if not totals and errors:
            raise errors[0]
        total = sum(n for _, n, _ in totals)
        out: list[dict[str, Any]] = []
        offset = params.start_index - 1
        remaining = params.count
        for t, n, flt in totals:
            if remaining <= 0:
                break
            if offset >= n:
                offset -= n
                continue
            reg = self.registry(tenant)
            proj = parse_projection(params.attributes, params.excluded_attributes, reg, t)
            page = self.storage.search(tenant.id, t, Query(
                filter=flt, start_index=offset + 1, count=remaining,
                include_members=wants(proj, reg, t, "members"), include_groups=wants(proj, reg, t, "groups")))
            out.extend(render(r, reg, base_url, proj) for r in page.resources)
            remaining -= len(page.resources)
            offset = 0
        return Reply(200, list_response(out, total, params.start_index))


def _existing_id(rt: str, rid: str) -> None:
    """Ids are uuid hex: one with NUL names nothing (and PostgreSQL text cannot hold it: it was a 500)."""
    if "\x00" in rid:
        raise NotFound(f"{rt} {rid!r} not found")


def _check_immutable(old: Mapping[str, Any], new: Mapping[str, Any], reg: SchemaRegistry, rt: str) -> None:
    """PUT must not change ``immutable`` attributes once set (RFC 7643 §2.2)."""
    core = reg.resource_type(rt).schema
    for attr in reg.attributes_of(rt, core):
        if attr.mutability == "immutable" and attr.name in old and attr.name in new \
                and old[attr.name] != new[attr.name]:
            from scimgrip.scim.errors import Mutability
            raise Mutability(f"attribute {attr.name!r} is immutable")

