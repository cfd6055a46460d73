"""OpenAPI 3 description of the SCIM API that scimgrip serves (``GET /scim/v2/openapi.json``).

Built as data from the schema registry (the same attribute definitions that validate requests), so the
description cannot drift from what the server accepts: every route under ``/scim/v2/tenants/{tenant}``,
bearer authentication, ``application/scim+json`` bodies, and schemas for User, Group, PatchOp,
ListResponse, SearchRequest, BulkRequest/BulkResponse and the Error message (``status`` as a *string*,
RFC 7644 §3.12). The schemathesis suite (``tests/reliability/test_fuzz_api.py``) fuzzes the server against it.

Request schemas are strict (no unknown attributes; read-only attributes left out), response schemas say what
a response must have and allow more (extension schemas, ``returned: request`` attributes).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from scimgrip.scim.errors import ERROR_SCHEMA
from scimgrip.scim.messages import BULK_REQUEST, BULK_RESPONSE, LIST_RESPONSE, PATCH_OP, SEARCH_REQUEST
from scimgrip.scim.schema import (
    CORE_GROUP,
    CORE_USER,
    DEFAULT_REGISTRY,
    ENTERPRISE_USER,
    Attribute,
    SchemaRegistry,
)

SCIM_MEDIA_TYPE = "application/scim+json"
BASE = "/scim/v2/tenants/{tenant}"
SCIM_TYPES = ["invalidFilter", "tooMany", "uniqueness", "mutability", "invalidSyntax", "invalidPath", "noTarget",
              "invalidValue", "invalidVers", "sensitive", "invalidCursor", "expiredCursor"]

_SCALAR: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "reference": {"type": "string"},
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer"},
    "decimal": {"type": "number"},
    "dateTime": {"type": "string", "format": "date-time"},
    "binary": {"type": "string", "format": "byte"},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _attr_schema(attr: Attribute, *, request: bool) -> dict[str, Any]:
    if attr.type == "complex":
        props = {s.name: _attr_schema(s, request=request) for s in attr.sub_attributes
                 if not (request and s.mutability == "readOnly")}
        one: dict[str, Any] = {"type": "object", "properties": props}
        if request:
            one["additionalProperties"] = False
    else:
        one = dict(_SCALAR.get(attr.type, {"type": "string"}))
        if request and attr.type in ("string", "reference"):
            one["maxLength"] = 65536
    if attr.description:
        one["description"] = attr.description
    return {"type": "array", "items": one} if attr.multi_valued else one


def _resource_schema(registry: SchemaRegistry, resource_type: str, *, request: bool) -> dict[str, Any]:
    """The JSON schema of a resource of ``resource_type``: core attributes plus extensions as URN keys."""
    rt = registry.resource_type(resource_type)
    core = rt.schema
    props: dict[str, Any] = {"schemas": {"type": "array", "items": {"type": "string"}}}
    required: list[str] = []
    for attr in registry.attributes_of(resource_type, core):
        if request and attr.mutability == "readOnly":
            continue
        if not request and attr.returned == "never":
            continue
        if attr.name == "meta" and not request:
            props["meta"] = _ref("Meta")
            continue
        props[attr.name] = _attr_schema(attr, request=request)
        if request and attr.required:
            required.append(attr.name)
    for urn, _required in rt.extensions:
        ext_props = {a.name: _attr_schema(a, request=request) for a in registry.attributes_of(resource_type, urn)
                     if not (request and a.mutability == "readOnly")}
        ext: dict[str, Any] = {"type": "object", "properties": ext_props}
        if request:
            ext["additionalProperties"] = False
        props[urn] = ext
    out: dict[str, Any] = {"type": "object", "properties": props}
    if request:
        urns = [core, *(u for u, _ in rt.extensions)]
        props["schemas"] = {"type": "array", "items": {"type": "string", "enum": urns}, "minItems": 1,
                            "uniqueItems": True}
        out["additionalProperties"] = False
        if required:
            out["required"] = required
    else:
        out["required"] = ["schemas", "id"]   # meta is returned "default": attributes= may leave it out
        props["id"] = {"type": "string", "minLength": 1}
    return out


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {SCIM_MEDIA_TYPE: {"schema": _ref("Error")}}}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {SCIM_MEDIA_TYPE: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request (SCIM error with scimType)", 401: "Missing, unknown, expired or revoked token",
            404: "Not found", 409: "Uniqueness conflict", 412: "If-Match precondition failed",
            413: "Payload too large or too many operations", 501: "Not implemented"}
    out = {str(c): _error_response(text[c]) for c in codes}
    # any route: the tenant's rate limit, or too many failed authentications from one client
    out["429"] = {**_error_response("Too many requests"),
                  "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}}
    out["431"] = _error_response("Request header fields (or the URL) too large")
    return out


_ETAG = {"ETag": {"description": "Weak entity tag: meta.version (RFC 7644 §3.14)", "schema": {"type": "string"}}}
_TENANT = {"name": "tenant", "in": "path", "required": True, "description": "Tenant name (Tenant URL segment)",
           "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_PROJECTION = [
    {"name": "attributes", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "excludedAttributes", "in": "query", "required": False, "schema": {"type": "string"}},
]
_LIST_PARAMS = [
    {"name": "filter", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 4096}},
    {"name": "sortBy", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "sortOrder", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["ascending", "descending"]}},
    {"name": "startIndex", "in": "query", "required": False, "schema": {"type": "integer"}},
    {"name": "count", "in": "query", "required": False, "schema": {"type": "integer"}},
    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
    *_PROJECTION,
]
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}
_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}


def _body(schema_name: str) -> dict[str, Any]:
    return {"required": True, "content": {SCIM_MEDIA_TYPE: {"schema": _ref(schema_name)}}}


def _collection(name: str, schema: str) -> dict[str, Any]:
    return {
        "get": {"operationId": f"list{name}", "summary": f"List or filter {name} (RFC 7644 §3.4.2)",
                "parameters": _LIST_PARAMS,
                "responses": {"200": _json(_ref("ListResponse"), "A page of resources"), **_errors(400, 401)}},
        "post": {"operationId": f"create{schema}", "summary": f"Create a {schema} (RFC 7644 §3.3)",
                 "parameters": _PROJECTION, "requestBody": _body(f"{schema}Request"),
                 "responses": {
                     "201": _json(_ref(schema), "Created", {**_ETAG, "Location": {"schema": {"type": "string"}}}),
                     **_errors(400, 401, 409, 413)}},
    }


def _item(name: str, schema: str) -> dict[str, Any]:
    group = schema == "Group"
    patch_responses: dict[str, Any] = {"200": _json(_ref(schema), "Patched", _ETAG)}
    if group:
        patch_responses["204"] = {"description": "Patched (groups without attributes/excludedAttributes)",
                                  "headers": _ETAG}
    return {
        "parameters": [_ID],
        "get": {"operationId": f"get{schema}", "summary": f"Read a {schema} (RFC 7644 §3.4.1)",
                "parameters": [*_PROJECTION, _IF_NONE_MATCH],
                "responses": {"200": _json(_ref(schema), "The resource", _ETAG),
                              "304": {"description": "Not modified (If-None-Match)", "headers": _ETAG},
                              **_errors(400, 401, 404)}},
        "put": {"operationId": f"replace{schema}", "summary": f"Replace a {schema} (RFC 7644 §3.5.1)",
                "parameters": [*_PROJECTION, _IF_MATCH], "requestBody": _body(f"{schema}Request"),
                "responses": {"200": _json(_ref(schema), "Replaced", _ETAG), **_errors(400, 401, 404, 409, 412, 413)}},
        "patch": {"operationId": f"patch{schema}", "summary": f"Modify a {schema} (RFC 7644 §3.5.2)",
                  "parameters": [*_PROJECTION, _IF_MATCH], "requestBody": _body("PatchOp"),
                  "responses": {**patch_responses, **_errors(400, 401, 404, 409, 412, 413)}},
        "delete": {"operationId": f"delete{schema}", "summary": f"Delete a {schema} (RFC 7644 §3.6)",
                   "parameters": [_IF_MATCH],
                   "responses": {"204": {"description": "Deleted"}, **_errors(401, 404, 412)}},
    }


def _search(op_id: str, summary: str) -> dict[str, Any]:
    return {"post": {"operationId": op_id, "summary": summary, "requestBody": _body("SearchRequest"),
                     "responses": {"200": _json(_ref("ListResponse"), "A page of resources"),
                                   **_errors(400, 401, 413)}}}


def _components(registry: SchemaRegistry) -> dict[str, Any]:
    any_value: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "User": _resource_schema(registry, "User", request=False),
        "UserRequest": _resource_schema(registry, "User", request=True),
        "Group": _resource_schema(registry, "Group", request=False),
        "GroupRequest": _resource_schema(registry, "Group", request=True),
        "Meta": {"type": "object", "required": ["resourceType"], "properties": {
            "resourceType": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "lastModified": {"type": "string", "format": "date-time"},
            "location": {"type": "string"},
            "version": {"type": "string"}}},
        "Error": {"type": "object", "required": ["schemas", "status"], "properties": {
            "schemas": {"type": "array", "items": {"type": "string", "enum": [ERROR_SCHEMA]}, "minItems": 1},
            "status": {"type": "string", "pattern": "^[1-5][0-9][0-9]$",
                       "description": "The HTTP status code as a string (RFC 7644 §3.12)"},
            "scimType": {"type": "string", "enum": SCIM_TYPES},
            "detail": {"type": "string"}}},
        "ListResponse": {"type": "object", "required": ["schemas", "totalResults", "itemsPerPage", "Resources"],
                         "properties": {
                             "schemas": {"type": "array", "items": {"type": "string", "enum": [LIST_RESPONSE]}},
                             "totalResults": {"type": "integer", "minimum": 0},
                             "itemsPerPage": {"type": "integer", "minimum": 0},
                             "startIndex": {"type": "integer", "minimum": 1},
                             "nextCursor": {"type": "string"},
                             "previousCursor": {"type": "string"},
                             "Resources": {"type": "array", "items": {
                                 "type": "object", "required": ["schemas"],
                                 "properties": {"schemas": {"type": "array", "items": {"type": "string"}}}}}}},
        "SearchRequest": {"type": "object", "required": ["schemas"], "additionalProperties": False, "properties": {
            "schemas": {"type": "array", "items": {"type": "string", "enum": [SEARCH_REQUEST]}, "minItems": 1},
            "attributes": {"type": "array", "items": {"type": "string"}},
            "excludedAttributes": {"type": "array", "items": {"type": "string"}},
            "filter": {"type": "string", "maxLength": 4096},
            "sortBy": {"type": "string"},
            "sortOrder": {"type": "string", "enum": ["ascending", "descending"]},
            "startIndex": {"type": "integer"},
            "count": {"type": "integer"},
            "cursor": {"type": "string"}}},
        "PatchOp": {"type": "object", "required": ["schemas", "Operations"], "additionalProperties": False,
                    "properties": {
                        "schemas": {"type": "array", "items": {"type": "string", "enum": [PATCH_OP]}, "minItems": 1},
                        "Operations": {"type": "array", "minItems": 1, "items": _ref("PatchOperation")}}},
        "PatchOperation": {"type": "object", "required": ["op"], "additionalProperties": False, "properties": {
            "op": {"type": "string", "enum": ["add", "remove", "replace"]},
            "path": {"type": "string", "minLength": 1},
            "value": any_value}},
        "BulkRequest": {"type": "object", "required": ["schemas", "Operations"], "additionalProperties": False,
                        "properties": {
                            "schemas": {"type": "array", "items": {"type": "string", "enum": [BULK_REQUEST]},
                                        "minItems": 1},
                            "failOnErrors": {"type": "integer", "minimum": 1},
                            "Operations": {"type": "array", "minItems": 1, "items": _ref("BulkOperation")}}},
        "BulkOperation": {"type": "object", "required": ["method", "path"], "additionalProperties": False,
                          "properties": {
                              "method": {"type": "string", "enum": ["POST", "PUT", "PATCH", "DELETE"]},
                              "bulkId": {"type": "string"},
                              "version": {"type": "string"},
                              "path": {"type": "string", "pattern": "^/"},
                              "data": {"type": "object"}}},
        "BulkResponse": {"type": "object", "required": ["schemas", "Operations"], "properties": {
            "schemas": {"type": "array", "items": {"type": "string", "enum": [BULK_RESPONSE]}},
            "Operations": {"type": "array", "items": {
                "type": "object", "required": ["method", "status"], "properties": {
                    "method": {"type": "string"},
                    "bulkId": {"type": "string"},
                    "version": {"type": "string"},
                    "location": {"type": "string"},
                    "status": {"type": "string", "pattern": "^[1-5][0-9][0-9]$"},
                    "response": any_value}}}}},
        "Discovery": {"type": "object", "required": ["schemas"],
                      "properties": {"schemas": {"type": "array", "items": {"type": "string"}}}},
    }
    return {
        "schemas": schemas,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "A tenant's Secret Token (sgt_…)"}},
    }


def build_openapi(registry: SchemaRegistry = DEFAULT_REGISTRY) -> dict[str, Any]:
    """The OpenAPI 3.0 document for every SCIM route (the default schemas; tenants may add extensions)."""
    paths: dict[str, Any] = {
        f"{BASE}/Users": _collection("Users", "User"),
        f"{BASE}/Groups": _collection("Groups", "Group"),
        f"{BASE}/Users/.search": _search("searchUsers", "Search Users (RFC 7644 §3.4.3)"),
        f"{BASE}/Groups/.search": _search("searchGroups", "Search Groups (RFC 7644 §3.4.3)"),
        f"{BASE}/.search": _search("searchAll", "Search all resource types (RFC 7644 §3.4.3)"),
        f"{BASE}/Users/{{id}}": _item("Users", "User"),
        f"{BASE}/Groups/{{id}}": _item("Groups", "Group"),
        f"{BASE}/Bulk": {"post": {
            "operationId": "bulk", "summary": "Bulk operations (RFC 7644 §3.7)", "requestBody": _body("BulkRequest"),
            "responses": {"200": _json(_ref("BulkResponse"), "Results per operation"), **_errors(400, 401, 413)}}},
        f"{BASE}/Me": {method: {
            "operationId": f"me{method.capitalize()}", "summary": "/Me is not supported (RFC 7644 §3.11)",
            "responses": _errors(401, 501)} for method in ("get", "post", "put", "patch", "delete")},
        f"{BASE}/ServiceProviderConfig": {"get": {
            "operationId": "serviceProviderConfig", "summary": "Service provider configuration (RFC 7644 §4)",
            "responses": {"200": _json(_ref("Discovery"), "The configuration"), **_errors(401)}}},
        f"{BASE}/Schemas": {"get": {
            "operationId": "listSchemas", "summary": "Schemas (RFC 7643 §7)",
            "responses": {"200": _json(_ref("ListResponse"), "All schemas"), **_errors(401)}}},
        f"{BASE}/Schemas/{{id}}": {"parameters": [_ID], "get": {
            "operationId": "getSchema", "summary": "One schema by URN",
            "responses": {"200": _json(_ref("Discovery"), "The schema"), **_errors(401, 404)}}},
        f"{BASE}/ResourceTypes": {"get": {
            "operationId": "listResourceTypes", "summary": "Resource types (RFC 7643 §6)",
            "responses": {"200": _json(_ref("ListResponse"), "All resource types"), **_errors(401)}}},
        f"{BASE}/ResourceTypes/{{id}}": {"parameters": [_ID], "get": {
            "operationId": "getResourceType", "summary": "One resource type",
            "responses": {"200": _json(_ref("Discovery"), "The resource type"), **_errors(401, 404)}}},
    }
    for item in paths.values():
        item["parameters"] = [_TENANT, *item.get("parameters", [])]
    # stateful testing: the id of a created resource feeds the item operations
    for plural, schema in (("Users", "User"), ("Groups", "Group")):
        post = paths[f"{BASE}/{plural}"]["post"]
        post["responses"]["201"]["links"] = {
            f"{verb}{schema}": {"operationId": f"{verb}{schema}",
                                "parameters": {"tenant": "$request.path.tenant", "id": "$response.body#/id"}}
            for verb in ("get", "replace", "patch", "delete")}
    return {
        "openapi": "3.0.3",
        "info": {"title": "scimgrip SCIM 2.0 API", "version": "2.0",
                 "description": "RFC 7643/7644 service provider. Every answer is application/scim+json; errors "
                                "carry status as a string. Schemas: " + ", ".join(
                                    (CORE_USER, CORE_GROUP, ENTERPRISE_USER))},
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": _components(registry),
    }


_CACHED: bytes | None = None


async def openapi_endpoint(request: Request) -> Response:
    """``GET /scim/v2/openapi.json``: the document, unauthenticated (it describes, it reveals no data)."""
    global _CACHED
    if _CACHED is None:
        _CACHED = orjson.dumps(build_openapi())
    return Response(_CACHED, media_type="application/json")


__all__ = ["SCIM_MEDIA_TYPE", "build_openapi", "openapi_endpoint"]
