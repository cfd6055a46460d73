"""The events API for the host application, and the hook that adds events to the server.

``GET /api/v1/events?after=<sequence>&types=<t1,t2>&limit=<n>&wait=<seconds>&tenant=<name>`` with
``Authorization: Bearer <app API key>`` (RFC 6750 §2.1). A tenant key reads its tenant; a global key names
the tenant with ``tenant=``. The answer is ``{"data": [event…], "next_cursor": "<sequence>",
"has_more": bool}``; each event is the exact JSON body its webhooks carry. With ``wait`` and nothing new, the
request is held (long poll) until an event arrives or ``wait`` seconds pass. A cursor older than retention
gets ``410``, never a silent gap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scimgrip.events.config import EventSettings
from scimgrip.events.dispatcher import Dispatcher
from scimgrip.events.outbox import EVENT_TYPES
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.events_store import CursorExpired, EventStore

MAX_LIMIT = 1000
POLL_SECONDS = 0.1


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, detail: str) -> Response:
    extra = {"WWW-Authenticate": 'Bearer realm="scimgrip-events"'} if status == 401 else None
    return _json(status, {"error": detail, "status": status}, extra)


class EventsApi:
    def __init__(self, store: EventStore, storage: Storage, settings: EventSettings) -> None:
        self.store = store
        self.storage = storage
        self.settings = settings

    def routes(self) -> list[Route]:
        return [Route("/api/v1/events", self.list_events, methods=["GET"])]

    async def list_events(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return _error(401, "an app API key is required: Authorization: Bearer <key>")
        key = await run_in_threadpool(self.store.authenticate_key, secret.strip())
        if key is None:
            return _error(401, "invalid or revoked API key")
        params = request.query_params
        tenant_name = params.get("tenant")
        if key.tenant_id is not None:
            tenant = await run_in_threadpool(self.storage.get_tenant_by_id, key.tenant_id)
            if tenant is None or (tenant_name and tenant_name.lower() != tenant.name.lower()):
                return _error(403, "this API key belongs to another tenant")
        else:
            if not tenant_name:
                return _error(400, "a global API key must name the tenant: ?tenant=<name>")
            tenant = await run_in_threadpool(self.storage.get_tenant, tenant_name)
            if tenant is None:
                return _error(404, f"no tenant {tenant_name!r}")
        try:
            after = int(params.get("after", "0") or 0)
            limit = min(max(int(params.get("limit", "100")), 1), MAX_LIMIT)
            wait = min(max(float(params.get("wait", "0")), 0.0), self.settings.max_wait_seconds)
        except ValueError:
            return _error(400, "after and limit are integers, wait is a number of seconds")
        types = [t for t in (params.get("types") or "").split(",") if t]
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown or after < 0:
            return _error(400, f"unknown event types: {', '.join(unknown)}" if unknown else "after must be >= 0")
        deadline = time.monotonic() + wait
        while True:
            try:
                found, cursor = await run_in_threadpool(self.store.list_events, tenant.id, after, types, limit)
            except CursorExpired as exc:
                return _error(410, str(exc))
            if found or time.monotonic() >= deadline or await request.is_disconnected():
                break
            await asyncio.sleep(POLL_SECONDS)
        return _json(200, {"data": [e.payload() for e in found], "next_cursor": str(cursor),
                           "has_more": len(found) == limit})


def install(app: Starlette, storage: Storage) -> None:
    """Add the events API to ``app`` and run the webhook dispatcher during its lifespan."""
    settings = EventSettings()
    store = EventStore(storage)
    api = EventsApi(store, storage, settings)
    app.router.routes[0:0] = api.routes()
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        dispatcher = Dispatcher(store, settings) if settings.dispatcher else None
        async with inner(a) as state:
            if dispatcher is not None:
                dispatcher.start()
            try:
                yield state
            finally:
                if dispatcher is not None:
                    await run_in_threadpool(dispatcher.stop)

    app.router.lifespan_context = lifespan
