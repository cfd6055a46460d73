"""``/Bulk`` (RFC 7644 §3.7): operations in order, ``bulkId`` references, ``failOnErrors``.

Each operation runs through the same :class:`ScimService` method as a single request, so it is validated
and applied exactly as it would be alone (and each is atomic on its own; RFC 7644 §3.7 does not make a Bulk
request atomic). An operation whose data or path references a ``bulkId:x`` that is not yet resolved is
deferred until the operation creating ``x`` has run (RFC 7644 §3.7.2); references that can never resolve
(unknown or circular) fail with 409 ``invalidValue``... per operation, leaving the others to run.

All operations of one request run in one storage batch (:meth:`Storage.batch`): one transaction, one commit —
one fsync — for the request, each operation in its own savepoint, so a failing operation is undone alone and
the others stand, as before. The response is built only after the batch has committed, so every operation it
reports as done is durable. Should the batch hit a lock/serialization conflict, storage rolls all of it back
(``BatchAborted``) and the request is run again operation by operation, each in its own retried transaction:
same results, the old cost.
"""

from __future__ import annotations

import json
import re
from typing import Any

from scimgrip.scim.errors import InvalidValue, ScimError
from scimgrip.scim.messages import BULK_RESPONSE, BulkOperation, BulkRequest, Limits, parse_bulk_request
from scimgrip.service.scim import Preconditions, Reply, ScimService
from scimgrip.storage.base import BatchAborted, Tenant

_REF = re.compile(r"bulkId:([A-Za-z0-9._~\-]+)")
_PATH = re.compile(r"^/(Users|Groups)(?:/([^/?#]+))?$")


def _refs(op: BulkOperation) -> set[str]:
    text = op.path + (json.dumps(op.data) if op.data is not None else "")
    return set(_REF.findall(text))


def _substitute(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _REF.sub(lambda m: ids.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_substitute(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, ids) for k, v in value.items()}
    return value


def run_bulk(service: ScimService, tenant: Tenant, body: Any, base_url: str, limits: Limits) -> Reply:
    req = parse_bulk_request(body, limits)
    try:
        with service.storage.batch():
            return _run_all(service, tenant, req, base_url)
    except BatchAborted:
        return _run_all(service, tenant, req, base_url)


def _run_all(service: ScimService, tenant: Tenant, req: BulkRequest, base_url: str) -> Reply:
    ids: dict[str, str] = {}
    results: list[dict[str, Any] | None] = [None] * len(req.operations)
    pending = list(range(len(req.operations)))
    defined = {op.bulk_id for op in req.operations if op.bulk_id}
    errors = 0
    while pending:
        progressed = False
        still: list[int] = []
        for i in pending:
            op = req.operations[i]
            unresolved = {r for r in _refs(op) if r not in ids}
            if unresolved and unresolved <= defined - {op.bulk_id}:
                still.append(i)  # wait for the operations that create them
                continue
            if req.fail_on_errors is not None and errors >= req.fail_on_errors:
                continue
            results[i] = _run_one(service, tenant, op, ids, base_url, unresolved)
            progressed = True
            if int(results[i]["status"]) >= 400:  # type: ignore[index]
                errors += 1
        if not progressed:
            for i in still:
                op = req.operations[i]
                results[i] = _error(op, InvalidValue(
                    f"bulkId reference(s) {sorted(r for r in _refs(op) if r not in ids)} cannot be resolved "
                    "(unknown, failed or circular)", status=409))
                errors += 1
            break
        pending = still
    out = [r for r in results if r is not None]
    return Reply(200, {"schemas": [BULK_RESPONSE], "Operations": out})


def _error(op: BulkOperation, exc: ScimError) -> dict[str, Any]:
    item: dict[str, Any] = {"method": op.method, "status": str(exc.status), "response": exc.to_body()}
    if op.bulk_id:
        item["bulkId"] = op.bulk_id
    return item


def _run_one(service: ScimService, tenant: Tenant, op: BulkOperation, ids: dict[str, str], base_url: str,
             unresolved: set[str]) -> dict[str, Any]:
    if unresolved:
        return _error(op, InvalidValue(f"unknown bulkId reference(s) {sorted(unresolved)}", status=409))
    path = _substitute(op.path, ids)
    m = _PATH.match(path)
    if m is None:
        return _error(op, InvalidValue(f"unsupported Bulk path {op.path!r}", scim_type="invalidPath"))
    rt = "User" if m.group(1) == "Users" else "Group"
    rid = m.group(2)
    data = _substitute(op.data, ids)
    pre = Preconditions(if_match=op.version)
    try:
        if op.method == "POST":
            if rid:
                raise InvalidValue("POST operations target /Users or /Groups, not a resource")
            reply = service.create(tenant, rt, data, base_url)
        elif rid is None:
            raise InvalidValue(f"{op.method} operations need a resource path like /{m.group(1)}/<id>")
        elif op.method == "PUT":
            reply = service.replace(tenant, rt, rid, data, base_url, pre)
        elif op.method == "PATCH":
            reply = service.patch(tenant, rt, rid, data, base_url, pre, attributes="id")
        else:
            reply = service.delete(tenant, rt, rid, pre)
    except ScimError as exc:
        return _error(op, exc)
    item: dict[str, Any] = {"method": op.method, "status": str(reply.status)}
    if op.bulk_id:
        item["bulkId"] = op.bulk_id
    if reply.body is not None:
        rid = rid or reply.body.get("id")
        meta = reply.body.get("meta") or {}
        if meta.get("version"):
            item["version"] = meta["version"]
    if "ETag" in reply.headers:
        item["version"] = reply.headers["ETag"]
    if rid:
        item["location"] = f"{base_url}/{m.group(1)}/{rid}"
        if op.method == "POST" and op.bulk_id:
            ids[op.bulk_id] = rid
    return item
