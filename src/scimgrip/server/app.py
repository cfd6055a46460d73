"""The HTTP layer: every tenant's SCIM endpoints, kept thin and cheap.

Each request is authenticated against its tenant (Tenant URL ``/scim/v2/tenants/<tenant>``), its body read
with a hard size cap and parsed as JSON, and handed to :class:`~scimgrip.service.scim.ScimService`. Every
answer is ``application/scim+json`` — errors too — and every failure is a SCIM error body with ``status`` as a
string: unknown routes 404, wrong methods 405, unexpected exceptions 500 without internals.

**The hot path** (docs/performance.md, "Where the time goes"): the SCIM routes are dispatched by
:class:`FrontDoor`, one plain ASGI wrapper that also does what two middlewares did (``//`` and trailing-slash
normalisation, the body deadline, the bad-token slowdown), straight off the ASGI scope — no Starlette
``Request``, routing, exception middleware or ``Response`` objects per request, which were about 40 % of a
simple request's CPU. Authentication, JSON decoding, the rate-limit check and the work run in **one**
worker-thread call (storage is synchronous; stack-notes §4.3 measured sync pysqlite in a threadpool 1.6×
faster than aiosqlite) on a plain :class:`~concurrent.futures.ThreadPoolExecutor` (about 40 µs a hop here,
against 60–130 µs for ``anyio.to_thread``). A body whose declared ``Content-Length`` is small is read before
that call, raw (its JSON is only decoded after authentication); a large or chunked body is read only after a
separate authentication hop, so an unauthenticated caller still cannot make the server read a megabyte.

The same routes stay registered on the Starlette app (their endpoints go through the same handler), so route
enumeration, 404/405 answers and anything that reaches the router behave exactly as before. Starlette rather
than FastAPI: the SCIM surface needs no request models or generated OpenAPI (stack-notes §4.2).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
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
from scimgrip.server.limits import Guard, TooManyRequests, retry_after, with_deadline
from scimgrip.server.openapi import openapi_endpoint
from scimgrip.server.requestlog import RequestLogWriter
from scimgrip.service.bulk import run_bulk
from scimgrip.service.scim import Preconditions, Reply, ScimService
from scimgrip.storage.base import Storage, Tenant
from scimgrip.tenancy.service import TenantService, tenant_url, utcnow
from scimgrip.web.install import install_web

log = logging.getLogger("scimgrip.server")

SCIM_MEDIA_TYPE = "application/scim+json"
BASE = "/scim/v2/tenants/{tenant}"
PREFIX = "/scim/v2/tenants/"
PRE_READ_BYTES = 64 * 1024      # bodies up to this declared size are read before authentication (raw)
WORKER_THREADS = 40             # like anyio's default limiter; below the SQLite pool (dialects.py)

_CT = (b"content-type", SCIM_MEDIA_TYPE.encode())


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


@dataclass(slots=True)
class Answer:
    """One HTTP answer: status, extra headers, body (already JSON bytes)."""

    status: int
    headers: dict[str, str] | None
    body: bytes


class ScimRequest:
    """What a SCIM handler reads of one request, straight from the ASGI scope (no Starlette ``Request``)."""

    __slots__ = ("scope", "receive", "method", "path", "params", "query_string", "_query")

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.params = params
        self.query_string: str = scope.get("query_string", b"").decode("latin-1")
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the last of repeated names wins (as Starlette's ``query_params``)."""
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True)) if self.query_string else {}
        return self._query

    def header(self, name: bytes) -> str | None:
        """The first header called ``name`` (lower-case bytes), decoded as Latin-1."""
        for key, value in self.scope["headers"]:
            if key == name:
                return value.decode("latin-1")   # type: ignore[no-any-return]
        return None

    @property
    def full_path(self) -> str:
        return self.path + (f"?{self.query_string}" if self.query_string else "")


Work = Callable[[Tenant, str, Any], Reply]

_SLASHES = re.compile(r"/{2,}")
# filters that are one index probe in storage (``storage.sql.filters.equality_probe``): Entra's Test Connection
# and match filters. Only these GETs run inline on SQLite (see ScimApp.handle).
_PROBE_FILTER = re.compile(r'^\s*(?:urn:ietf:params:scim:schemas:core:2\.0:(?:User|Group):)?'
                           r'(?:userName|externalId|displayName|id|emails\[type eq "[^"\\]*"\]\.value)'
                           r'\s+eq\s+"(?:[^"\\]|\\.)*"\s*$', re.I)


def normalize_path(path: str) -> str:
    """Collapse ``//`` (an Entra Tenant URL pasted with a trailing slash) and drop a trailing slash."""
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


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
        self._executor: ThreadPoolExecutor | None = None
        self._base_urls: dict[tuple[Any, ...], str] = {}
        # SQLite reads take tens of microseconds and never wait for a writer (WAL): cheaper on the event loop
        # than the hop to a worker thread and back (docs/performance.md)
        self.inline_reads = getattr(storage, "dialect", None) == "sqlite"

    # -- plumbing ----------------------------------------------------------------------------------------------
    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="scimgrip-worker")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def base_url(self, request: ScimRequest, tenant: str) -> str:
        root = self.config.public_url
        if root is None:
            s = request.scope
            server = s.get("server")    # ASGI allows any iterable here (a list under Starlette's TestClient)
            key = (s.get("scheme"), request.header(b"host"), tuple(server) if server else None,
                   s.get("app_root_path", s.get("root_path", "")))
            root = self._base_urls.get(key)
            if root is None:            # Starlette's own rule (Host header, else server address), cached
                root = str(Request(s).base_url)
                if len(self._base_urls) > 1000:
                    self._base_urls.clear()
                self._base_urls[key] = root
        return tenant_url(root, tenant)

    async def read_body(self, request: ScimRequest) -> bytes:
        """The raw body, bounded by ``max_payload_bytes`` (413); the deadline is on ``request.receive``."""
        limit = self.limits.max_payload_bytes
        declared = request.header(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            except ValueError:
                raise InvalidSyntax("invalid Content-Length header") from None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def parse_json(raw: bytes) -> Any:
        if not raw.strip():
            raise InvalidSyntax("the request body is empty; a JSON object is expected")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidSyntax(f"the request body is not valid JSON (UTF-8): {exc}") from None

    def _authenticated(self, tenant_name: str, authorization: str | None) -> Tenant:
        authed, token = self.tenants.authenticate(tenant_name, authorization)
        self.request_log.token_used(token.id, utcnow())
        self.guard.admit_now(authed.id)          # per-tenant rate limit: 429 + Retry-After
        return authed

    def _serve(self, tenant_name: str, authorization: str | None, authed: Tenant | None, raw: bytes | None,
               with_body: bool, base: str, work: Work, seen: list[Tenant]) -> tuple[Tenant, Reply]:
        """The worker-thread part of a request: authenticate (unless done), decode the body, do the work.

        ``seen`` receives the authenticated tenant at once, so a request that fails after authentication
        (400, 409, 412 …) is still written to that tenant's request log."""
        if authed is None:
            authed = self._authenticated(tenant_name, authorization)
        seen.append(authed)
        body = self.parse_json(raw) if with_body and raw is not None else None
        return authed, work(authed, base, body)

    def _runs_inline(self) -> bool:
        # the shared rate-limit counter (several workers) writes to SQLite: never on the event loop
        return self.inline_reads and (self.guard.local is not None or not self.guard.settings.rate_limit_enabled)

    async def handle(self, request: ScimRequest, work: Work, *, with_body: bool = False,
                     bounded_read: bool = False) -> Answer:
        """Authenticate, read the body, run ``work`` in a worker thread, render, record in the request log.

        ``bounded_read``: the work is a read of a few index probes (a user, a group without its members, an
        equality filter, discovery); on SQLite it then runs inline on the event loop."""
        started = time.perf_counter()
        tenant_name = request.params.get("tenant", "")
        log_tenant_id: int | None = None
        reply: Reply | None = None
        error: ScimError | None = None
        raw: bytes | None = None
        seen: list[Tenant] = []
        try:
            authorization = request.header(b"authorization")
            authed: Tenant | None = None
            if with_body:
                declared = request.header(b"content-length")
                small = declared is not None and declared.isdigit() and int(declared) <= PRE_READ_BYTES
                if not small:
                    # authenticate before reading: an unauthenticated caller cannot make us read 1 MiB
                    authed = await self.in_thread(self._authenticated, tenant_name, authorization)
                    log_tenant_id = authed.id
                raw = await self.read_body(request)
            base = self.base_url(request, tenant_name)
            if bounded_read and self._runs_inline():
                authed, reply = self._serve(tenant_name, authorization, authed, raw, with_body, base, work, seen)
            else:
                authed, reply = await self.in_thread(self._serve, tenant_name, authorization, authed, raw,
                                                     with_body, base, work, seen)
            log_tenant_id = authed.id
        except Unauthorized as exc:
            error = exc
            log_tenant_id = exc.tenant_id
        except ScimError as exc:
            error = exc
        except Exception:  # never leak internals; the log has the traceback
            log.exception("unhandled error on %s %s", request.method, request.path)
            error = ScimError("internal server error; the request was not applied", status=500)
        if log_tenant_id is None and seen:
            log_tenant_id = seen[0].id
        if error is not None:
            status = error.status
            body_obj: Any = error.to_body()
            headers = error.headers or None
        else:
            assert reply is not None
            status = reply.status
            body_obj = reply.body
            headers = reply.headers or None
        body = orjson.dumps(body_obj) if body_obj is not None else b""
        if log_tenant_id is not None:
            # masking and JSON happen in the writer thread, off the request's path
            self.request_log.record_raw(log_tenant_id, utcnow(), request.method, request.full_path, status,
                                        round((time.perf_counter() - started) * 1000, 3),
                                        error.detail if error is not None else None,
                                        # an unauthenticated caller's body stays out of the tenant's log
                                        raw if with_body and not isinstance(error, Unauthorized) else None,
                                        body)
        return Answer(status, headers, body)

    # -- endpoints ---------------------------------------------------------------------------------------------
    @staticmethod
    def _rt(request: ScimRequest) -> str:
        return "User" if request.path.split("/")[5] == "Users" else "Group"

    async def collection(self, request: ScimRequest) -> Answer:
        rt = self._rt(request)
        q = request.query
        if request.method == "POST":
            return await self.handle(request, lambda t, base, body: self.service.create(
                t, rt, body, base, q.get("attributes"), q.get("excludedAttributes")), with_body=True)

        def work(t: Tenant, base: str, _: Any) -> Reply:
            return self.service.query(t, rt, parse_list_params(q, self.limits), base)

        bounded = (_PROBE_FILTER.match(q.get("filter") or "") is not None and "sortBy" not in q
                   and "cursor" not in q and q.get("startIndex", "1") == "1"
                   and (rt == "User" or "members" in (q.get("excludedAttributes") or "").lower()))
        return await self.handle(request, work, bounded_read=bounded)

    async def resource(self, request: ScimRequest) -> Answer:
        rt = self._rt(request)
        rid = request.params["id"]
        q = request.query
        attrs, excl = q.get("attributes"), q.get("excludedAttributes")
        pre = Preconditions(request.header(b"if-match"), request.header(b"if-none-match"))
        m = request.method
        if m in ("GET", "HEAD"):
            bounded = rt == "User" or "members" in (excl or "").lower()
            return await self.handle(request, lambda t, base, _: self.service.get(t, rt, rid, base, attrs, excl, pre),
                                     bounded_read=bounded)
        if m == "PUT":
            return await self.handle(request, lambda t, base, body: self.service.replace(
                t, rt, rid, body, base, pre, attrs, excl), with_body=True)
        if m == "PATCH":
            return await self.handle(request, lambda t, base, body: self.service.patch(
                t, rt, rid, body, base, pre, attrs, excl), with_body=True)
        return await self.handle(request, lambda t, base, _: self.service.delete(t, rt, rid, pre))

    async def search(self, request: ScimRequest) -> Answer:
        segment = request.path.split("/")[5]
        rt = None if segment == ".search" else ("User" if segment == "Users" else "Group")
        return await self.handle(request, lambda t, base, body: self.service.query(
            t, rt, parse_search_request(body, self.limits), base), with_body=True)

    async def bulk(self, request: ScimRequest) -> Answer:
        return await self.handle(request, lambda t, base, body: run_bulk(self.service, t, body, base, self.limits),
                                 with_body=True)

    async def me(self, request: ScimRequest) -> Answer:
        def work(t: Tenant, base: str, _: Any) -> Reply:
            raise NotImplementedByServer("/Me is not supported: a SCIM token identifies a tenant's provisioning "
                                         "client, not a user (RFC 7644 §3.11)")
        return await self.handle(request, work)

    async def spc(self, request: ScimRequest) -> Answer:
        return await self.handle(request, lambda t, base, _: Reply(200, service_provider_config(self.limits, base)),
                                 bounded_read=True)

    async def schemas(self, request: ScimRequest) -> Answer:
        sid = request.params.get("id")

        def work(t: Tenant, base: str, _: Any) -> Reply:
            items = schemas_list(self.service.registry(t), base)
            if sid is None:
                return Reply(200, list_response(items, len(items), 1))
            for item in items:
                if item["id"].lower() == sid.lower():
                    return Reply(200, item)
            raise NotFound(f"schema {sid!r} not found")
        return await self.handle(request, work, bounded_read=True)

    async def resource_types(self, request: ScimRequest) -> Answer:
        rid = request.params.get("id")

        def work(t: Tenant, base: str, _: Any) -> Reply:
            items = resource_types_list(self.service.registry(t), base)
            if rid is None:
                return Reply(200, list_response(items, len(items), 1))
            for item in items:
                if item["id"].lower() == rid.lower():
                    return Reply(200, item)
            raise NotFound(f"resource type {rid!r} not found")
        return await self.handle(request, work, bounded_read=True)

    async def health(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    # -- routing -----------------------------------------------------------------------------------------------
    def scim_routes(self) -> list[tuple[str, frozenset[str], Callable[[ScimRequest], Awaitable[Answer]]]]:
        """(path under the Tenant URL, methods, handler), in matching order. ``{id}`` is one path segment;
        ``{id:path}`` the rest of the path. A GET route answers HEAD too, as Starlette's routes do."""
        get = frozenset({"GET", "HEAD"})
        get_post = frozenset({"GET", "HEAD", "POST"})
        post = frozenset({"POST"})
        item = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
        every = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
        return [
            ("/Users", get_post, self.collection),
            ("/Groups", get_post, self.collection),
            ("/Users/.search", post, self.search),
            ("/Groups/.search", post, self.search),
            ("/.search", post, self.search),
            ("/Users/{id}", item, self.resource),
            ("/Groups/{id}", item, self.resource),
            ("/Bulk", post, self.bulk),
            ("/Me", every, self.me),
            ("/ServiceProviderConfig", get, self.spc),
            ("/Schemas", get, self.schemas),
            ("/Schemas/{id:path}", get, self.schemas),
            ("/ResourceTypes", get, self.resource_types),
            ("/ResourceTypes/{id}", get, self.resource_types),
        ]

    def _starlette_endpoint(self, handler: Callable[[ScimRequest], Awaitable[Answer]]) \
            -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            answer = await handler(ScimRequest(request.scope, request.receive, dict(request.path_params)))
            return Response(answer.body, status_code=answer.status, headers=answer.headers,
                            media_type=SCIM_MEDIA_TYPE)
        return endpoint

    def routes(self) -> list[Route]:
        out = [
            Route("/healthz", self.health, methods=["GET"]),
            Route("/scim/v2/openapi.json", openapi_endpoint, methods=["GET"]),
        ]
        for path, methods, handler in self.scim_routes():
            out.append(Route(BASE + path, self._starlette_endpoint(handler),
                             methods=sorted(m for m in methods if m != "HEAD")))
        return out


class ScimRouter:
    """Match ``/scim/v2/tenants/<tenant>/…`` against the SCIM routes: first route whose path and method both
    match wins (Starlette's rule); ``None`` when none does (the Starlette router then answers 404/405)."""

    def __init__(self, scim: ScimApp) -> None:
        self._routes: list[tuple[re.Pattern[str], frozenset[str], Callable[[ScimRequest], Awaitable[Answer]]]] = []
        for path, methods, handler in scim.scim_routes():
            rx = "^" + re.escape(path).replace(r"\{id:path\}", "(?P<id>.*)").replace(r"\{id\}", "(?P<id>[^/]+)") + "$"
            self._routes.append((re.compile(rx), methods, handler))

    def match(self, method: str, path: str) -> tuple[Callable[[ScimRequest], Awaitable[Answer]], dict[str, str]] | None:
        tenant, slash, rest = path[len(PREFIX):].partition("/")
        if not tenant or not slash:
            return None
        rest = "/" + rest
        for rx, methods, handler in self._routes:
            if method in methods:
                m = rx.match(rest)
                if m is not None:
                    params = {"tenant": tenant}
                    params.update(m.groupdict())
                    return handler, params
        return None


class FrontDoor:
    """The one ASGI wrapper in front of the app: path normalisation, body deadline, bad-token slowdown, and
    the SCIM routes served directly (see the module docstring). Everything else goes to ``app`` unchanged."""

    def __init__(self, app: ASGIApp, scim: ScimApp) -> None:
        self.app = app
        self.scim = scim
        self.guard = scim.guard
        self.router = ScimRouter(scim)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        new = normalize_path(path)
        if new != path:
            scope = dict(scope)
            scope["path"] = new
            scope["raw_path"] = new.encode()
        s = self.guard.settings
        if s.body_timeout_seconds > 0:
            receive = with_deadline(receive, s.body_timeout_seconds)
        client = (scope.get("client") or ("unknown", 0))[0]
        hit = self.router.match(scope["method"], new) if new.startswith(PREFIX) else None
        if hit is None:
            if s.auth_failure_limit > 0:
                send = self.guard.throttled(send, client)
            await self.app(scope, receive, send)
            return
        handler, params = hit
        answer = await handler(ScimRequest(scope, receive, params))
        if answer.status == 401 and s.auth_failure_limit > 0:
            block = await self.guard.auth_failed(client)
            if block > 0:
                if s.auth_failure_delay_seconds > 0:
                    await asyncio.sleep(s.auth_failure_delay_seconds)
                answer = Answer(429, {"Retry-After": retry_after(block)}, orjson.dumps(TooManyRequests(
                    "too many failed authentications from this client; retry later").to_body()))
        await send_answer(send, answer)


async def send_answer(send: Send, answer: Answer) -> None:
    """Send an answer the way Starlette's ``Response`` would (no Content-Length on 204/304)."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()] \
        if answer.headers else []
    if not (answer.status < 200 or answer.status in (204, 304)):
        raw.append((b"content-length", str(len(answer.body)).encode()))
    raw.append(_CT)
    await send({"type": "http.response.start", "status": answer.status, "headers": raw})
    await send({"type": "http.response.body", "body": answer.body})


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
            scim.close()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: _http_exception,
        Exception: _server_error,
    }
    app = Starlette(routes=scim.routes(), exception_handlers=handlers, lifespan=lifespan)
    app.state.scim = scim
    install_events(app, storage)   # events API + webhook dispatcher (docs/events.md)
    install_web(app, storage, scim.config)   # console, SSO, end-user pages (docs/console.md)
    app.add_middleware(FrontDoor, scim=scim)
    return app
