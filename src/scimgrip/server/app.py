"""The HTTP layer: Starlette routes for every tenant's SCIM endpoints, kept thin.

Each request is authenticated against its tenant (Tenant URL ``/scim/v2/tenants/<tenant>``), its body read
with a hard size cap and parsed as JSON, and handed to :class:`~scimgrip.service.scim.ScimService` in one
worker-thread hop (storage is synchronous; stack-notes §4.3 measured sync pysqlite in a threadpool 1.6×
faster than aiosqlite). Every answer is ``application/scim+json`` — errors too — and every failure is a SCIM
error body with ``status`` as a string: unknown routes 404, wrong methods 405, unexpected exceptions 500
without internals. Starlette rather than FastAPI: the SCIM surface needs no request models or generated
OpenAPI, and plain Starlette measured about twice FastAPI's throughput (stack-notes §4.2).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from scimgrip.events.api import install as install_events
from scimgrip.scim.discovery import resource_types_list, schemas_list, service_provider_config
from scimgrip.scim.errors import (
    InvalidSyntax,
    MethodNotAllowed,
    NotFound,
    NotImplementedByServer,
    PayloadTooLarge,
    ScimError,
    Unauthorized,
)
from scimgrip.scim.messages import Limits, list_response, parse_list_params, parse_search_request
from scimgrip.scim.tolerance import DEFAULT_POLICY, TolerancePolicy
from scimgrip.server.limits import Guard, GuardMiddleware
from scimgrip.server.openapi import openapi_endpoint
from scimgrip.server.requestlog import RequestLogWriter, body_text, mask
from scimgrip.service.bulk import run_bulk
from scimgrip.service.scim import Preconditions, Reply, ScimService
from scimgrip.storage.base import Storage, Tenant
from scimgrip.tenancy.service import TenantService, tenant_url, utcnow
from scimgrip.web.install import install_web

log = logging.getLogger("scimgrip.server")

SCIM_MEDIA_TYPE = "application/scim+json"
BASE = "/scim/v2/tenants/{tenant}"


class ScimResponse(Response):
    media_type = SCIM_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        return orjson.dumps(content)


def error_response(exc: ScimError) -> ScimResponse:
    return ScimResponse(exc.to_body(), status_code=exc.status, headers=exc.headers or None)


@dataclass
class ServerConfig:
    limits: Limits
    policy: TolerancePolicy = DEFAULT_POLICY
    public_url: str | None = None          # e.g. https://scim.example.com; default: from the request
    request_log_retention: int = 10_000


_SLASHES = re.compile(r"/{2,}")


class NormalizePath:
    """Collapse ``//`` (an Entra Tenant URL pasted with a trailing slash) and drop a trailing slash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            new = _SLASHES.sub("/", path)
            if len(new) > 1 and new.endswith("/"):
                new = new[:-1]
            if new != path:
                scope = dict(scope)
                scope["path"] = new
                scope["raw_path"] = new.encode()
        await self.app(scope, receive, send)


class ScimApp:
    """Routes and request plumbing around one :class:`ScimService`."""

    def __init__(self, storage: Storage, config: ServerConfig) -> None:
        self.storage = storage
        self.config = config
        self.limits = config.limits
        self.tenants = TenantService(storage)
        self.service = ScimService(storage, policy=config.policy, limits=config.limits)
        self.request_log = RequestLogWriter(storage, retention=config.request_log_retention)
        self.guard = Guard(storage)   # rate limit, bad-token slowdown, body deadline (server/limits.py)

    # -- plumbing ----------------------------------------------------------------------------------------------
    def base_url(self, request: Request, tenant: str) -> str:
        root = self.config.public_url or str(request.base_url)
        return tenant_url(root, tenant)

    async def read_json(self, request: Request) -> Any:
        """The body as JSON, bounded by ``max_payload_bytes`` (413) and decoded strictly (400)."""
        limit = self.limits.max_payload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            except ValueError:
                raise InvalidSyntax("invalid Content-Length header") from None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise InvalidSyntax("the request body is empty; a JSON object is expected")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidSyntax(f"the request body is not valid JSON (UTF-8): {exc}") from None

    async def handle(self, request: Request, work: Callable[[Tenant, str, Any], Reply], *,
                     with_body: bool = False) -> Response:
        """Authenticate, read the body, run ``work`` in a worker thread, render, record in the request log."""
        started = time.perf_counter()
        tenant_name = request.path_params.get("tenant", "")
        body: Any = None
        log_tenant_id: int | None = None
        reply: Reply | None = None
        error: ScimError | None = None
        try:
            # authenticate before reading the body: an unauthenticated caller cannot make us read 1 MiB
            authed, token = await run_in_threadpool(self.tenants.authenticate, tenant_name,
                                                    request.headers.get("authorization"))
            log_tenant_id = authed.id
            self.request_log.token_used(token.id, utcnow())
            await self.guard.admit(authed.id)   # per-tenant rate limit: 429 + Retry-After
            if with_body:
                body = await self.read_json(request)
            reply = await run_in_threadpool(work, authed, self.base_url(request, tenant_name), body)
        except Unauthorized as exc:
            error = exc
            log_tenant_id = exc.tenant_id
        except ScimError as exc:
            error = exc
        except Exception:  # never leak internals; the log has the traceback
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            error = ScimError("internal server error; the request was not applied", status=500)
        if error is not None:
            response: Response = error_response(error)
            status = error.status
        else:
            assert reply is not None
            status = reply.status
            response = ScimResponse(reply.body, status_code=reply.status, headers=reply.headers or None)
        if log_tenant_id is not None:
            self.request_log.record({
                "tenant_id": log_tenant_id,
                "at": utcnow(),
                "method": request.method,
                "path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "outcome": "success" if status < 400 else "failure",
                "detail": error.detail if error is not None else None,
                "request_body": mask(body_text(body)) if with_body else None,
                "response_body": mask(body_text(error.to_body() if error is not None else
                                                 (reply.body if reply is not None else None))),
            })
        return response

    # -- endpoints ---------------------------------------------------------------------------------------------
    @staticmethod
    def _rt(request: Request) -> str:
        return "User" if request.url.path.rstrip("/").split("/")[5] == "Users" else "Group"

    async def collection(self, request: Request) -> Response:
        rt = self._rt(request)
        if request.method == "POST":
            q = request.query_params
            return await self.handle(request, lambda t, base, body: self.service.create(
                t, rt, body, base, q.get("attributes"), q.get("excludedAttributes")), with_body=True)
        params = dict(request.query_params)

        def work(t: Tenant, base: str, _: Any) -> Reply:
            return self.service.query(t, rt, parse_list_params(params, self.limits), base)

        return await self.handle(request, work)

    async def resource(self, request: Request) -> Response:
        rt = self._rt(request)
        rid = request.path_params["id"]
        q = request.query_params
        attrs, excl = q.get("attributes"), q.get("excludedAttributes")
        pre = Preconditions(request.headers.get("if-match"), request.headers.get("if-none-match"))
        m = request.method
        if m == "GET":
            return await self.handle(request, lambda t, base, _: self.service.get(t, rt, rid, base, attrs, excl, pre))
        if m == "PUT":
            return await self.handle(request, lambda t, base, body: self.service.replace(
                t, rt, rid, body, base, pre, attrs, excl), with_body=True)
        if m == "PATCH":
            return await self.handle(request, lambda t, base, body: self.service.patch(
                t, rt, rid, body, base, pre, attrs, excl), with_body=True)
        return await self.handle(request, lambda t, base, _: self.service.delete(t, rt, rid, pre))

    async def search(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        segment = path.split("/")[5]
        rt = None if segment == ".search" else ("User" if segment == "Users" else "Group")
        return await self.handle(request, lambda t, base, body: self.service.query(
            t, rt, parse_search_request(body, self.limits), base), with_body=True)

    async def bulk(self, request: Request) -> Response:
        return await self.handle(request, lambda t, base, body: run_bulk(self.service, t, body, base, self.limits),
                                 with_body=True)

    async def me(self, request: Request) -> Response:
        def work(t: Tenant, base: str, _: Any) -> Reply:
            raise NotImplementedByServer("/Me is not supported: a SCIM token identifies a tenant's provisioning "
                                         "client, not a user (RFC 7644 §3.11)")
        return await self.handle(request, work)

    async def spc(self, request: Request) -> Response:
        return await self.handle(request, lambda t, base, _: Reply(200, service_provider_config(self.limits, base)))

    async def schemas(self, request: Request) -> Response:
        sid = request.path_params.get("id")

        def work(t: Tenant, base: str, _: Any) -> Reply:
            items = schemas_list(self.service.registry(t), base)
            if sid is None:
                return Reply(200, list_response(items, len(items), 1))
            for item in items:
                if item["id"].lower() == sid.lower():
                    return Reply(200, item)
            raise NotFound(f"schema {sid!r} not found")
        return await self.handle(request, work)

    async def resource_types(self, request: Request) -> Response:
        rid = request.path_params.get("id")

        def work(t: Tenant, base: str, _: Any) -> Reply:
            items = resource_types_list(self.service.registry(t), base)
            if rid is None:
                return Reply(200, list_response(items, len(items), 1))
            for item in items:
                if item["id"].lower() == rid.lower():
                    return Reply(200, item)
            raise NotFound(f"resource type {rid!r} not found")
        return await self.handle(request, work)

    async def health(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.health, methods=["GET"]),
            Route("/scim/v2/openapi.json", openapi_endpoint, methods=["GET"]),
            Route(BASE + "/Users", self.collection, methods=["GET", "POST"]),
            Route(BASE + "/Groups", self.collection, methods=["GET", "POST"]),
            Route(BASE + "/Users/.search", self.search, methods=["POST"]),
            Route(BASE + "/Groups/.search", self.search, methods=["POST"]),
            Route(BASE + "/.search", self.search, methods=["POST"]),
            Route(BASE + "/Users/{id}", self.resource, methods=["GET", "PUT", "PATCH", "DELETE"]),
            Route(BASE + "/Groups/{id}", self.resource, methods=["GET", "PUT", "PATCH", "DELETE"]),
            Route(BASE + "/Bulk", self.bulk, methods=["POST"]),
            Route(BASE + "/Me", self.me, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route(BASE + "/ServiceProviderConfig", self.spc, methods=["GET"]),
            Route(BASE + "/Schemas", self.schemas, methods=["GET"]),
            Route(BASE + "/Schemas/{id:path}", self.schemas, methods=["GET"]),
            Route(BASE + "/ResourceTypes", self.resource_types, methods=["GET"]),
            Route(BASE + "/ResourceTypes/{id}", self.resource_types, methods=["GET"]),
        ]


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}",
                                               headers={"Allow": (exc.headers or {}).get("Allow", "")}))
    if exc.status_code == 404:
        return error_response(NotFound(f"no SCIM endpoint at {request.url.path}"))
    return error_response(ScimError(str(exc.detail), status=exc.status_code))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ScimError("internal server error", status=500))


def create_app(storage: Storage, config: ServerConfig | None = None) -> Starlette:
    """The ASGI application. The request-log writer starts and stops with the app's lifespan."""
    scim = ScimApp(storage, config or ServerConfig(limits=Limits()))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        scim.request_log.start()
        try:
            yield
        finally:
            scim.request_log.stop()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: _http_exception,
        Exception: _server_error,
    }
    app = Starlette(routes=scim.routes(), exception_handlers=handlers, lifespan=lifespan)
    app.state.scim = scim
    install_events(app, storage)   # events API + webhook dispatcher (docs/events.md)
    install_web(app, storage, scim.config)   # console, SSO, end-user pages (docs/console.md)
    app.add_middleware(GuardMiddleware, guard=scim.guard)
    app.add_middleware(NormalizePath)
    return app
