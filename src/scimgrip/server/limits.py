"""Abuse limits of the HTTP layer: a per-tenant rate limit, a slowdown for clients that keep sending bad
tokens, and a deadline for request bodies.

* **Per-tenant rate limit.** After authentication, :meth:`Guard.admit` takes one token from the tenant's
  bucket (``SCIMGRIP_RATE_LIMIT_RPS`` sustained, ``SCIMGRIP_RATE_LIMIT_BURST`` at once). The bucket lives in
  the database (``storage.sql.ratelimit``), so it is shared by every uvicorn worker. An empty bucket answers
  ``429`` with ``Retry-After`` (RFC 6585 §4; Entra honours it). The defaults (100 rps, burst 1,000) are far
  above a normal Entra cycle (tens of requests per second; the gallery asks for at least 25).
* **Bad tokens.** ``server.app.FrontDoor`` counts every ``401`` per client address in a shared fixed window
  (:meth:`Guard.auth_failed`); past ``SCIMGRIP_AUTH_FAILURE_LIMIT`` failures in
  ``SCIMGRIP_AUTH_FAILURE_WINDOW_SECONDS``, further *failed* attempts from that address are answered ``429``
  with ``Retry-After`` after a delay. Requests that authenticate are never affected, nor are other addresses.
* **Slow bodies.** The whole request body must arrive within ``SCIMGRIP_BODY_TIMEOUT_SECONDS`` of the
  request's start, else ``408`` and the connection is closed: a client trickling a body holds no worker.

Failures of the counter store fail open (logged): a limit must never take the service down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Receive, Send

from scimgrip.scim.errors import ScimError
from scimgrip.settings import Settings
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.ratelimit import RateLimitStore

log = logging.getLogger("scimgrip.limits")


class TooManyRequests(ScimError):
    """``429``: the tenant's rate limit, or too many failed authentications from one client."""

    status = 429


class BodyTimeout(ScimError):
    """``408``: the request body did not arrive in time."""

    status = 408


@dataclass(frozen=True)
class GuardSettings:
    rate_limit_enabled: bool = True
    rate_limit_rps: float = 100.0
    rate_limit_burst: int = 1000
    auth_failure_limit: int = 30
    auth_failure_window_seconds: float = 60.0
    auth_failure_delay_seconds: float = 1.0
    body_timeout_seconds: float = 30.0

    @classmethod
    def from_settings(cls, s: Settings | None = None) -> GuardSettings:
        s = s or Settings()
        return cls(s.rate_limit_enabled, s.rate_limit_rps, s.rate_limit_burst, s.auth_failure_limit,
                   s.auth_failure_window_seconds, s.auth_failure_delay_seconds, s.body_timeout_seconds)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class LocalBuckets:
    """Token buckets in this process: exact when one process serves the database (``--workers 1``, the
    default), and free of the database write and thread hop the shared counter costs on every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}   # key -> (tokens, last refill time)

    def take(self, key: str, rate: float, burst: float, now: float) -> float:
        """Take one token; 0.0 if admitted, else the seconds until one is available (nothing taken)."""
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - last) * rate)
            if tokens >= 1.0 - 1e-9:   # float refill (0.1 s × 10/s) must give a whole token
                self._buckets[key] = (max(0.0, tokens - 1.0), now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


class Guard:
    def __init__(self, storage: Storage, settings: GuardSettings | None = None, *,
                 shared: bool | None = None) -> None:
        self.settings = settings or GuardSettings.from_settings()
        self.store = RateLimitStore(storage)
        # several worker processes share the database bucket; a single process keeps it in memory
        self.local = None if (shared if shared is not None else Settings().workers > 1) else LocalBuckets()

    def admit_now(self, tenant_id: int) -> None:
        """Take one request from the tenant's bucket, or raise ``429`` with ``Retry-After``. Synchronous: it
        runs in the request's worker-thread call (the in-process bucket is a dict under a lock; the shared one
        a statement on the database)."""
        s = self.settings
        if not s.rate_limit_enabled or s.rate_limit_rps <= 0:
            return
        try:
            if self.local is not None:
                wait = self.local.take(f"tenant:{tenant_id}", s.rate_limit_rps, s.rate_limit_burst, time.time())
            else:
                wait = self.store.take(f"tenant:{tenant_id}", s.rate_limit_rps, s.rate_limit_burst, time.time())
        except Exception:  # fail open
            log.exception("rate-limit counter unavailable; request admitted")
            return
        if wait > 0:
            raise TooManyRequests(f"rate limit of this tenant exceeded ({s.rate_limit_rps:g} requests per second); "
                                  "retry later", headers={"Retry-After": retry_after(wait)})

    async def auth_failed(self, client: str) -> float:
        """Count a failed authentication from ``client``: seconds to block it (0.0 while under the limit)."""
        s = self.settings
        try:
            count, left = await run_in_threadpool(self.store.count, f"authfail:{client}",
                                                  s.auth_failure_window_seconds, time.time())
        except Exception:  # fail open
            log.exception("auth-failure counter unavailable")
            return 0.0
        return left if count > s.auth_failure_limit else 0.0

    def throttled(self, send: Send, client: str) -> Send:
        """``send`` that turns a ``401`` into ``429`` (after a delay) once ``client`` failed too often."""
        replaced = False

        async def guarded(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return                   # the original 401 body is dropped
            if message["type"] == "http.response.start" and message["status"] == 401:
                block = await self.auth_failed(client)
                if block > 0:
                    replaced = True
                    delay = self.settings.auth_failure_delay_seconds
                    if delay > 0:
                        await asyncio.sleep(delay)
                    body = orjson.dumps(TooManyRequests("too many failed authentications from this client; "
                                                        "retry later").to_body())
                    await send({"type": "http.response.start", "status": 429, "headers": [
                        (b"content-type", b"application/scim+json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", retry_after(block).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            await send(message)

        return guarded


def with_deadline(receive: Receive, timeout: float) -> Receive:
    """``receive`` that raises :class:`BodyTimeout` when the body is not complete ``timeout`` s from now."""
    deadline = time.monotonic() + timeout
    complete = False

    async def wrapped() -> Message:
        nonlocal complete
        if complete:
            return await receive()
        try:
            # asyncio.timeout, not wait_for: no task per chunk (a body usually arrives in one message)
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(f"the request body did not arrive within {timeout:g} seconds",
                              headers={"Connection": "close"}) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            complete = True
        return message

    return wrapped


# -- header size -------------------------------------------------------------------------------------------------
_HEADER_LIMIT: list[int] = []


def max_header_bytes() -> int:
    """``SCIMGRIP_MAX_HEADER_BYTES``, read once per worker process (uvicorn spawns workers afresh)."""
    if not _HEADER_LIMIT:
        _HEADER_LIMIT.append(Settings().max_header_bytes)
    return _HEADER_LIMIT[0]


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn without httptools
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

if HttpToolsProtocol is not None:
    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """httptools buffers a request head of any size (a 20 MB header was accepted): count the bytes received
        while a request's head is incomplete, and past the limit answer ``431`` and close."""

        _head_pending = 0
        _in_head = True
        _tail = b""             # the last bytes of the previous chunk: the blank line may straddle two chunks

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                buf = self._tail + data
                end = buf.find(b"\r\n\r\n")
                if end >= 0:     # only the head counts, not the body that follows it in this chunk
                    self._head_pending += max(end + 4 - len(self._tail), 0)
                    self._tail = b""
                else:
                    self._head_pending += len(data)
                    self._tail = buf[-3:]
                if self._head_pending > max_header_bytes():
                    body = (b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"431",'
                            b'"detail":"request line and headers are too large"}')   # SCIM error, like every answer
                    self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                         b"content-type: application/scim+json\r\nconnection: close\r\n"
                                         b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                    self.transport.close()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            self._head_pending = 0
            self._tail = b""
            super().on_message_complete()


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` implementation for ``scimgrip serve``: httptools with a bound on the request head,
    or h11 (which enforces the same bound through ``h11_max_incomplete_event_size``)."""
    return LimitedHttpToolsProtocol if HttpToolsProtocol is not None else "h11"
