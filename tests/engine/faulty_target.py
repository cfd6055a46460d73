"""A misbehaving SCIM target for the client's ERR/GRP tests: scimgrip's own ASGI app (real SQLite storage, a real
tenant) behind an ASGI middleware with programmable faults, served on loopback by uvicorn in a thread.

Faults (each matches a method and a path regex, and fires ``times`` times or forever):
``status`` (any code with a SCIM error body and optional ``Retry-After``), ``delay`` (slow response),
``reset`` (the connection is dropped mid-response), and a ``member_cap`` (413 when a PATCH carries more member
values than allowed, like AWS IAM Identity Center's 100). Every request is recorded with its arrival time, its
client port (= its TCP connection) and the answer, and the middleware tracks the peak number in flight.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scimgrip.server.app import create_app
from scimgrip.storage import open_storage
from scimgrip.tenancy.service import TenantService, tenant_url
from tests.server.conftest import free_port

_RNG = random.Random(7)


@dataclass
class Fault:
    kind: str                      # "status" | "delay" | "reset"
    method: str | None = None      # None: any
    path: str | None = None        # regex searched in the path after the tenant prefix; None: any
    times: int | None = 1          # None: forever
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    fired: int = 0
    probability: float = 1.0       # < 1: fires at random (seeded by ``rng``) — a flaky target
    rng: Any = None

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.probability < 1.0 and (self.rng or _RNG).random() >= self.probability:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class Seen:
    t: float                       # time.monotonic() at arrival
    method: str
    path: str                      # after the tenant prefix, e.g. "/Users"
    query: str
    port: int                      # client port: one per TCP connection
    status: int | None = None      # None: reset
    members: int = 0               # member values in a PATCH body
    t_end: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Faults:
    faults: list[Fault] = field(default_factory=list)
    member_cap: int | None = None
    rate_limit: float | None = None        # requests/s above which the target answers 429 (a token bucket)
    rate_retry_after: str = "0.1"
    rewrite: Any = None                    # (method, path, body) -> body: e.g. poison one Bulk operation
    tokens: float | None = None            # state of the rate_limit bucket
    stamp: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, **kw: Any) -> Fault:
        fault = Fault(kind, **kw)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.seen.clear()
            self.member_cap = None
            self.rate_limit = None
            self.rate_retry_after = "0.1"
            self.rewrite = None
            self.tokens = None
            self.in_flight = self.max_in_flight = 0

    def over_rate(self) -> bool:
        """A token bucket of ``rate_limit`` per second (burst 1): True when this request exceeds it."""
        with self.lock:
            if self.rate_limit is None:
                return False
            now = time.monotonic()
            tokens = 1.0 if self.tokens is None else min(1.0, self.tokens + (now - self.stamp) * self.rate_limit)
            self.stamp = now
            self.tokens = tokens - 1.0 if tokens >= 1.0 else tokens
            return tokens < 1.0

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.fired += 1
                    return fault
        return None

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if (method is None or s.method == method)
                    and (path is None or re.search(path, s.path))]

    def connections(self) -> set[int]:
        with self.lock:
            return {s.port for s in self.seen}


def _members_in(body: bytes) -> int:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return 0
    n = 0
    for op in doc.get("Operations") or []:
        if isinstance(op, dict) and str(op.get("path", "")).lower().startswith("members"):
            value = op.get("value")
            n += len(value) if isinstance(value, list) else 1
    return n


class FaultMiddleware:
    """Applies :class:`Faults` in front of the wrapped SCIM app."""

    def __init__(self, app: ASGIApp, faults: Faults, prefix: str) -> None:
        self.app = app
        self.faults = faults
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        full: str = scope["path"]
        path = full[len(self.prefix):] if full.startswith(self.prefix) else full
        chunks: list[bytes] = []
        while True:  # buffer the body so it can be inspected and replayed
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if self.faults.rewrite is not None:
            body = self.faults.rewrite(method, path, body)
        seen = Seen(time.monotonic(), method, path, scope.get("query_string", b"").decode(),
                    int((scope.get("client") or ("", 0))[1]), members=_members_in(body) if method == "PATCH" else 0,
                    headers={k.decode().lower(): v.decode() for k, v in scope.get("headers", [])})
        f = self.faults
        with f.lock:
            f.seen.append(seen)
            f.in_flight += 1
            f.max_in_flight = max(f.max_in_flight, f.in_flight)
        try:
            await self._answer(scope, body, seen, send)
        finally:
            seen.t_end = time.monotonic()
            with f.lock:
                f.in_flight -= 1

    async def _answer(self, scope: Scope, body: bytes, seen: Seen, send: Send) -> None:
        fault = self.faults.take(seen.method, seen.path)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.delay)
            fault = None
        if fault is not None and fault.kind == "reset":
            seen.status = None
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
            raise ConnectionResetError("faulty target: connection dropped")  # uvicorn closes the socket
        if fault is None and self.faults.member_cap is not None and seen.members > self.faults.member_cap:
            fault = Fault("status", status=413)
        if fault is None and self.faults.over_rate():
            fault = Fault("status", status=429, retry_after=self.faults.rate_retry_after)
        if fault is not None:
            seen.status = fault.status
            payload = json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                                  "status": str(fault.status), "detail": f"injected {fault.status}",
                                  **({"scimType": "uniqueness"} if fault.status == 409 else {})}).encode()
            headers = [(b"content-type", b"application/scim+json"), (b"content-length", str(len(payload)).encode())]
            if fault.retry_after is not None:
                headers.append((b"retry-after", fault.retry_after.encode()))
            await send({"type": "http.response.start", "status": fault.status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = int(message["status"])
            await send(message)

        await self.app(scope, replay, record)


class FaultyTarget:
    """The wrapped app on ``127.0.0.1:<free port>``; ``url``/``token`` address tenant ``acme``."""

    def __init__(self, tmp: Path) -> None:
        self.storage = open_storage(f"sqlite:///{tmp / 'faulty.db'}")
        _, issued = TenantService(self.storage).create_tenant("acme")
        self.token = issued.secret
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = tenant_url(self.root, "acme")
        self.faults = Faults()
        app = FaultMiddleware(create_app(self.storage), self.faults, "/scim/v2/tenants/acme")
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="on",
                                timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="faulty-target", daemon=True)

    def start(self) -> FaultyTarget:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the faulty target did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.storage.close()
