"""SCIM message shapes (RFC 7644 §3.4.2, §3.4.3, §3.7, §3.12): ListResponse, SearchRequest, Bulk, query params.

Parsing is strict about structure (wrong types → 400 ``invalidSyntax`` / ``invalidValue`` with a useful
``detail``) and bounded by :class:`Limits`, which are also what ``/ServiceProviderConfig`` advertises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scimgrip.scim.errors import InvalidSyntax, InvalidValue, PayloadTooLarge, ScimError

LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client request can make the server do; advertised in /ServiceProviderConfig."""

    max_payload_bytes: int = 1_048_576          # RFC 7644 §3.7 bulk.maxPayloadSize, applied to every body
    max_bulk_operations: int = 1000
    max_patch_operations: int = 1000
    max_members_per_patch: int = 10_000
    default_page_size: int = 100
    max_page_size: int = 1000
    max_filter_results: int = 1000              # filter.maxResults
    cursor_timeout_seconds: int = 3600


@dataclass(frozen=True)
class ListParams:
    """Query parameters of a list/search (RFC 7644 §3.4.2), validated."""

    filter: str | None
    sort_by: str | None
    descending: bool
    start_index: int
    count: int
    cursor: str | None                 # None: index pagination; "" first cursor page; else a cursor
    attributes: str | None
    excluded_attributes: str | None


def _int_param(name: str, value: Any, *, minimum: int | None = None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidValue(f"{name!r} must be an integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidValue(f"{name!r} must be an integer, got {value!r}") from None
    if minimum is not None and n < minimum:
        n = minimum
    return n


def _str_param(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise InvalidValue(f"{name!r} must be a string")
    return value


def parse_list_params(params: Mapping[str, Any], limits: Limits) -> ListParams:
    """From query parameters (GET) or a SearchRequest body (POST /.search); unknown keys are ignored.

    RFC 7644 §3.4.2.4: ``startIndex`` < 1 is taken as 1, ``count`` < 0 as 0; a ``count`` above the
    maximum is reduced to the maximum (the response's ``itemsPerPage`` says how many were returned).
    RFC 9865: a ``cursor`` parameter (empty for the first page) selects cursor pagination.
    """
    lower = {str(k).lower(): v for k, v in params.items()}
    order = _str_param("sortOrder", lower.get("sortorder"))
    if order is not None and order.lower() not in ("ascending", "descending"):
        raise InvalidValue('"sortOrder" must be "ascending" or "descending"')
    start = _int_param("startIndex", lower.get("startindex"), minimum=1) or 1
    count = _int_param("count", lower.get("count"), minimum=0)
    if count is None:
        count = limits.default_page_size
    count = min(count, limits.max_page_size)
    cursor = lower.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise InvalidValue('"cursor" must be a string')
    if cursor is not None and "startindex" in lower and lower.get("startindex") not in (None, ""):
        raise ScimError('"cursor" and "startIndex" cannot be combined', status=400, scim_type="invalidValue")
    flt = _str_param("filter", lower.get("filter"))
    if flt is not None and not flt.strip():
        flt = None
    return ListParams(
        filter=flt,
        sort_by=_str_param("sortBy", lower.get("sortby")) or None,
        descending=(order or "").lower() == "descending",
        start_index=start,
        count=count,
        cursor=cursor,
        attributes=_str_param("attributes", lower.get("attributes")),
        excluded_attributes=_str_param("excludedAttributes", lower.get("excludedattributes")),
    )


def parse_search_request(body: Any, limits: Limits) -> ListParams:
    """POST /.search body (RFC 7644 §3.4.3)."""
    if not isinstance(body, Mapping):
        raise InvalidSyntax("the SearchRequest body must be a JSON object")
    schemas = body.get("schemas")
    if schemas is not None and (not isinstance(schemas, list) or SEARCH_REQUEST not in schemas):
        raise InvalidSyntax(f'"schemas" must contain {SEARCH_REQUEST}')
    return parse_list_params({k: v for k, v in body.items() if k != "schemas"}, limits)


def list_response(resources: Sequence[Mapping[str, Any]], total: int, start_index: int, *,
                  next_cursor: str | None = None, previous_cursor: str | None = None,
                  cursor_mode: bool = False) -> dict[str, Any]:
    """RFC 7644 §3.4.2 ListResponse; ``itemsPerPage`` is exactly the number of resources returned."""
    out: dict[str, Any] = {
        "schemas": [LIST_RESPONSE],
        "totalResults": total,
        "itemsPerPage": len(resources),
    }
    if not cursor_mode:
        out["startIndex"] = start_index
    if next_cursor:
        out["nextCursor"] = next_cursor
    if previous_cursor:
        out["previousCursor"] = previous_cursor
    out["Resources"] = list(resources)
    return out


@dataclass(frozen=True)
class BulkOperation:
    method: str
    path: str
    bulk_id: str | None
    version: str | None
    data: Any


@dataclass(frozen=True)
class BulkRequest:
    operations: list[BulkOperation]
    fail_on_errors: int | None


def parse_bulk_request(body: Any, limits: Limits) -> BulkRequest:
    """RFC 7644 §3.7: validate the envelope; each operation's ``data`` is validated when it runs."""
    if not isinstance(body, Mapping):
        raise InvalidSyntax("the BulkRequest body must be a JSON object")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or BULK_REQUEST not in schemas:
        raise InvalidSyntax(f'"schemas" must contain {BULK_REQUEST}')
    ops = body.get("Operations")
    if not isinstance(ops, list) or not ops:
        raise InvalidSyntax('"Operations" must be a non-empty list')
    if len(ops) > limits.max_bulk_operations:
        raise PayloadTooLarge(f"the BulkRequest has {len(ops)} operations; the maximum is "
                              f"{limits.max_bulk_operations}")
    fail = body.get("failOnErrors")
    if fail is not None and (isinstance(fail, bool) or not isinstance(fail, int) or fail < 1):
        raise InvalidValue('"failOnErrors" must be a positive integer')
    out: list[BulkOperation] = []
    seen: set[str] = set()
    for i, op in enumerate(ops):
        if not isinstance(op, Mapping):
            raise InvalidSyntax(f"Operations[{i}] must be an object")
        method = op.get("method")
        if not isinstance(method, str) or method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
            raise InvalidValue(f"Operations[{i}].method must be POST, PUT, PATCH or DELETE")
        path = op.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidValue(f'Operations[{i}].path must be a string starting with "/"')
        bulk_id = op.get("bulkId")
        if bulk_id is not None and not isinstance(bulk_id, str):
            raise InvalidValue(f"Operations[{i}].bulkId must be a string")
        if method.upper() == "POST" and not bulk_id:
            raise InvalidValue(f"Operations[{i}]: POST operations need a bulkId")
        if bulk_id:
            if bulk_id in seen:
                raise InvalidValue(f"Operations[{i}]: duplicate bulkId {bulk_id!r}")
            seen.add(bulk_id)
        version = op.get("version")
        out.append(BulkOperation(method.upper(), path, bulk_id, version if isinstance(version, str) else None,
                                 op.get("data")))
    return BulkRequest(out, fail)
