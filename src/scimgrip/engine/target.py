"""The SCIM 2.0 client of the engine: one :class:`ScimTarget` per job and target (provisioning-engine.md §9 WIRE,
§10 ERR, §8 GRP-2, §16 PERF).

* WIRE-1/WIRE-4: ``Authorization: Bearer``, ``application/scim+json``, keep-alive (one ``httpx.Client`` whose
  pool is sized to ``concurrency``), ``/ServiceProviderConfig`` discovered once and cached (404 → defaults),
  filters passed as query parameters (httpx form-encodes them), group reads with ``excludedAttributes=members``.
* ERR-3a: a job-wide token bucket (``rate_per_second``, ``burst``, default ``concurrency``) and a semaphore of
  ``concurrency`` requests in flight; the client is thread-safe.
* ERR-3b AIMD (``adaptive``): each 429 halves the rate, each minute without one adds 1 request/s back up to
  ``rate_per_second``, so a target with an unknown limit converges on it instead of answering 429 all cycle.
* ERR-3b (T-ERR-1): 429 pauses **every** request of this target until ``Retry-After`` (seconds or HTTP date;
  30 s if absent, capped at 15 min) has passed, then the same request is retried.
* ERR-3c (T-ERR-2, T-ERR-3): 5xx (but 501/505), timeouts and connection errors are retried with exponential
  back-off and full jitter up to ``max_retries``; a 503 honours ``Retry-After``. Then :class:`TargetError`.
* ERR-3e: a POST (create, Bulk) whose request may have reached the target (read timeout, connection dropped
  mid-response) is *not* retried blindly: :class:`TargetError` with ``ambiguous=True`` tells the engine to
  re-run matching first, so no duplicate is created. A *timeout* (``timed_out=True``) means the target may
  still be working on it: :meth:`ScimTarget.settle_unknown_outcome` waits before that matching (see there).
* ERR-3d: any other 4xx raises :class:`TargetError` at once, with ``scimType``/``detail`` parsed.
* GRP-2: membership changes go in PATCH requests of at most ``members_per_patch`` values (also capped by
  ``bulk.maxOperations``); a 413 halves the chunk and retries it, and the smaller size is kept for later calls.
* LOG: every attempt is reported to ``on_call`` as a :class:`CallRecord` (bodies masked and truncated), with a
  copy of :data:`call_context` (the engine puts the change id there).

The engine never imports the server side; this module speaks plain HTTP like any other SCIM client.
"""

from __future__ import annotations

import contextvars
import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson

log = logging.getLogger("scimgrip.engine.target")

SCIM_MEDIA_TYPE = "application/scim+json"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"

MAX_SETTLE = 60.0                 # ERR-3e: longest wait for a POST that timed out to land before matching again
DEFAULT_RETRY_AFTER = 30.0        # ERR-3b: 429 without Retry-After
MAX_RETRY_AFTER = 900.0           # ERR-3b: cap 15 min
MAX_BACKOFF = 30.0                # ERR-3c: back-off cap
AIMD_DECREASE = 0.5               # ERR-3b: rate × 0.5 on 429 …
AIMD_INCREASE = 1.0               # … + 1 request/s …
AIMD_INCREASE_EVERY = 60.0        # … per minute without a 429
AIMD_MIN_RATE = 0.5               # never below one request per 2 s
MAX_BODY_CHARS = 4096             # CallRecord bodies are truncated to this
MASK = "********"
_SENSITIVE = re.compile(r"password|secret|token", re.IGNORECASE)
_NOT_RETRIED_5XX = frozenset({501, 505})
_BULK_ID = re.compile(r"bulkId:([A-Za-z0-9._~\-]+)")

#: Per-call context copied into every :class:`CallRecord` (e.g. ``{"change_id": ...}``); unset means ``{}``.
#: ``set()`` a new dict in the worker thread (pool threads do not inherit it); never mutate it in place.
call_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("scimgrip_call_context")

DEFAULT_SPC: dict[str, Any] = {
    "patch": {"supported": True},
    "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
    "filter": {"supported": True, "maxResults": 200},
    "etag": {"supported": False},
    "sort": {"supported": False},
}


class TargetError(Exception):
    """A SCIM call that failed for good (ERR-2/ERR-3).

    ``status`` is the HTTP status (None: network error or timeout), ``scim_type``/``detail`` come from the SCIM
    error body, ``retry_after`` from the ``Retry-After`` header (seconds), ``body`` is the parsed body (or text).
    ``ambiguous`` is True when a non-idempotent POST may have been applied by the target (ERR-3e);
    ``timed_out`` when we stopped waiting for the answer, so the target may still be applying it.
    """

    def __init__(self, status: int | None, detail: str, *, scim_type: str | None = None,
                 retry_after: float | None = None, body: Any = None, method: str = "", path: str = "",
                 ambiguous: bool = False, timed_out: bool = False) -> None:
        self.status = status
        self.scim_type = scim_type
        self.detail = detail
        self.retry_after = retry_after
        self.body = body
        self.method = method
        self.path = path
        self.ambiguous = ambiguous
        self.timed_out = timed_out
        where = f"{method} {path}: " if method else ""
        what = "network error" if status is None else str(status)
        kind = f" {scim_type}" if scim_type else ""
        super().__init__(f"{where}{what}{kind}: {detail}")


@dataclass
class CallRecord:
    """One HTTP attempt, for the provisioning log (LOG). Bodies are JSON text, masked and truncated; ``status``
    None is a network error (then ``error`` says which); ``elapsed_ms`` excludes rate-limit and 429 waits."""

    method: str
    path: str
    status: int | None
    elapsed_ms: float
    attempt: int
    request_body: str | None = None
    response_body: str | None = None
    error: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] | None = None      # query parameters (filter, paging), unencoded


# -- helpers -------------------------------------------------------------------------------------------------------
def eq_filter(attribute: str, value: str | bool | int) -> str:
    """``attr eq "value"`` with the value JSON-quoted and escaped (WIRE-4; authentik once forgot the quotes)."""
    return f"{attribute} eq {json.dumps(value)}"


def and_filter(*clauses: str) -> str:
    """Clauses joined by ``and`` — the only combinator Entra uses (WIRE-1)."""
    return " and ".join(clauses)


def _mask(value: Any) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and _SENSITIVE.search(k):
                out[k] = MASK
            elif (k == "value" and isinstance(value.get("path"), str)
                  and _SENSITIVE.search(str(value.get("path")))):
                out[k] = MASK  # PATCH {"op": "replace", "path": "password", "value": ...}
            else:
                out[k] = _mask(v)
        return out
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


_SENSITIVE_BYTES = re.compile(rb"password|secret|token", re.IGNORECASE)


def _render(body: Any, encoded: bytes | None = None) -> str | None:
    """Masked, truncated JSON text of a body for a :class:`CallRecord`. ``encoded`` (the bytes sent) saves a
    second encoding, and a body with no sensitive key anywhere is only truncated, not walked (a 100-operation
    BulkRequest)."""
    if body is None:
        return None
    if isinstance(body, str):
        text = body
    elif encoded is not None and not _SENSITIVE_BYTES.search(encoded):
        text = encoded[:MAX_BODY_CHARS + 8].decode(errors="ignore")
    else:
        text = orjson.dumps(_mask(body)).decode()
    return text if len(text) <= MAX_BODY_CHARS else text[:MAX_BODY_CHARS] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or HTTP date, RFC 9110 §10.2.3); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _json_or_text(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _error_from(method: str, path: str, response: httpx.Response, body: Any) -> TargetError:
    """A :class:`TargetError` from a SCIM error response (``status`` may be a string or an int)."""
    scim_type = detail = None
    if isinstance(body, Mapping):
        scim_type = body.get("scimType") if isinstance(body.get("scimType"), str) else None
        raw = body.get("detail")
        detail = raw if isinstance(raw, str) else (None if raw is None else str(raw))
    elif isinstance(body, str) and body.strip():
        detail = body.strip()[:500]
    return TargetError(response.status_code, detail or response.reason_phrase or "error", scim_type=scim_type,
                       retry_after=parse_retry_after(response.headers.get("retry-after")), body=body,
                       method=method, path=path)


def _endpoint(resource_type: str) -> str:
    """``User``/``Users`` → ``Users``; ``Group``/``Groups`` → ``Groups`` (the engine speaks resource types)."""
    return {"User": "Users", "Group": "Groups"}.get(resource_type, resource_type)


class _TokenBucket:
    """ERR-3a/ERR-3b: a thread-safe token bucket whose rate adapts (AIMD). Callers reserve a token and sleep
    (outside the lock) until it is due. :meth:`throttled` (a 429) halves the rate; every minute without one
    adds 1 request/s back, up to the configured rate. While reduced, the burst is capped at one second's worth,
    so the refilled bucket cannot send a full burst into a target that just said "too many"."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_rate = rate
        self.rate = rate
        self.max_burst = float(max(1, burst))
        self.burst = self.max_burst
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()
        self.increase_at: float | None = None
        self.lock = threading.Lock()

    def _recover(self, now: float) -> None:
        if self.increase_at is None or now < self.increase_at:
            return
        steps = 1 + int((now - self.increase_at) // AIMD_INCREASE_EVERY)
        self.rate = min(self.max_rate, self.rate + AIMD_INCREASE * steps)
        self.burst = self.max_burst if self.rate >= self.max_rate else min(self.max_burst, max(1.0, self.rate))
        self.increase_at = None if self.rate >= self.max_rate else self.increase_at + AIMD_INCREASE_EVERY * steps

    def reserve(self) -> float:
        """Take a token; return how long to wait before using it."""
        with self.lock:
            now = self.clock()
            self._recover(now)
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1.0
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def throttled(self) -> float:
        """A 429: multiplicative decrease (× :data:`AIMD_DECREASE`, not below :data:`AIMD_MIN_RATE`); returns
        the new rate. The additive increase starts a minute later."""
        with self.lock:
            now = self.clock()
            self.rate = max(AIMD_MIN_RATE, self.rate * AIMD_DECREASE)
            self.burst = min(self.max_burst, max(1.0, self.rate))
            self.tokens = min(self.tokens, self.burst)
            self.increase_at = now + AIMD_INCREASE_EVERY
            return self.rate


class ScimTarget:
    """A thread-safe SCIM 2.0 client for one target (WIRE-4, ERR-3, GRP-2). See the module docstring."""

    max_throttle_retries = 10   # 429s in a row for one request before giving up (ERR-3b)

    def __init__(self, base_url: str, token: str, *, rate_per_second: float | None = None, concurrency: int = 4,
                 timeout: float = 30.0, max_retries: int = 4, backoff_base: float = 0.5, members_per_patch: int = 100,
                 use_bulk: str = "auto", on_call: Callable[[CallRecord], None] | None = None,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 burst: int | None = None, adaptive: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if members_per_patch < 1:
            raise ValueError("members_per_patch must be at least 1")
        if use_bulk not in ("auto", "always", "never"):
            raise ValueError('use_bulk must be "auto", "always" or "never"')
        if rate_per_second is not None and rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive (or None for no limit)")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.members_per_patch = members_per_patch
        self.use_bulk = use_bulk
        self.on_call = on_call
        self._sleep = sleep
        from scimgrip import __version__

        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {token}", "Content-Type": SCIM_MEDIA_TYPE,
                     "Accept": f"{SCIM_MEDIA_TYPE}, application/json", "User-Agent": f"scimgrip/{__version__}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        self.adaptive = adaptive
        self._bucket = (_TokenBucket(rate_per_second, burst or concurrency, clock=clock) if rate_per_second
                        else None)
        self._lock = threading.Lock()
        self._pause_until = 0.0          # time.monotonic() before which no request is sent (ERR-3b)
        self._spc: dict[str, Any] | None = None
        self._member_chunk = members_per_patch

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ScimTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the request loop (ERR-3) ------------------------------------------------------------------------------
    @property
    def rate(self) -> float | None:
        """The current request rate limit (requests/s; None: unlimited) — below the configured one after 429s
        when ``adaptive`` (ERR-3b)."""
        return self._bucket.rate if self._bucket is not None else None

    @property
    def paused_for(self) -> float:
        """Seconds left of a job-wide 429 pause (0 if none)."""
        with self._lock:
            return max(0.0, self._pause_until - time.monotonic())

    def _wait_pause(self) -> None:
        """Block while a 429 pause is in force (T-ERR-1). One sleep per pause extension, so an injected fake
        ``sleep`` never spins."""
        while True:
            with self._lock:
                until = self._pause_until
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._sleep(remaining)
            with self._lock:
                if self._pause_until <= until:
                    return

    def _pause(self, seconds: float) -> None:
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def _backoff(self, retry: int, hint: float | None = None) -> float:
        """ERR-3c: exponential back-off with full jitter (``backoff_base`` × 2^retry, cap 30 s); a 503's
        ``Retry-After`` is a floor."""
        delay = random.uniform(0, min(MAX_BACKOFF, self.backoff_base * (2 ** retry)))
        if hint is not None:
            delay = max(delay, min(hint, MAX_RETRY_AFTER))
        return delay

    def _report(self, record: CallRecord) -> None:
        if self.on_call is None:
            return
        try:
            self.on_call(record)
        except Exception:  # a broken log hook must not break provisioning
            log.exception("on_call hook failed for %s %s", record.method, record.path)

    def _send_once(self, method: str, path: str, params: Mapping[str, Any] | None,
                   content: bytes | None, started: list[float]) -> httpx.Response:
        self._wait_pause()
        with self._slots:
            if self._bucket is not None:
                wait = self._bucket.reserve()
                if wait > 0:
                    self._sleep(wait)
            self._wait_pause()  # a 429 may have arrived while we queued
            started[0] = time.perf_counter()
            return self._client.request(method, path.lstrip("/"), params=params, content=content)

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json_body: Any = None,
                ok: Sequence[int] = ()) -> tuple[int, Any]:
        """Send one SCIM request with the ERR-3 retry rules; return ``(status, parsed body)``.

        Statuses in ``ok`` (e.g. 404 for ``get``) are returned instead of raised.
        """
        content = orjson.dumps(json_body) if json_body is not None else None
        shown_request = _render(json_body, content)
        shown_params = dict(params) if params else None
        idempotent = method.upper() != "POST"
        retries = throttles = attempt = 0
        while True:
            attempt += 1
            ctx = dict(call_context.get({}))
            started = [time.perf_counter()]
            try:
                response = self._send_once(method, path, params, content, started)
            except httpx.TransportError as exc:
                elapsed = (time.perf_counter() - started[0]) * 1000
                self._report(CallRecord(method, path, None, elapsed, attempt, shown_request, None,
                                        f"{type(exc).__name__}: {exc}", ctx, shown_params))
                # ConnectError/ConnectTimeout/PoolTimeout: the request never left; anything else may have.
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
                if not idempotent and not unsent:
                    raise TargetError(None, f"{type(exc).__name__}: {exc} (the request may have been applied)",
                                      method=method, path=path, ambiguous=True,
                                      timed_out=isinstance(exc, httpx.TimeoutException)) from exc
                if retries >= self.max_retries:
                    raise TargetError(None, f"{type(exc).__name__}: {exc}", method=method, path=path) from exc
                self._sleep(self._backoff(retries))
                retries += 1
                continue
            elapsed = (time.perf_counter() - started[0]) * 1000
            body = _json_or_text(response)
            status = response.status_code
            self._report(CallRecord(method, path, status, elapsed, attempt, shown_request, _render(body),
                                    None, ctx, shown_params))
            if status < 400 or status in ok:
                return status, body
            error = _error_from(method, path, response, body)
            if status == 429:
                throttles += 1
                if throttles > self.max_throttle_retries:
                    raise error
                wait = error.retry_after if error.retry_after is not None else DEFAULT_RETRY_AFTER
                self._pause(min(wait, MAX_RETRY_AFTER))
                if self.adaptive and self._bucket is not None:
                    log.warning("%s %s: 429, request rate reduced to %.2f/s", method, path, self._bucket.throttled())
                log.warning("%s %s: 429, pausing all calls for %.1f s", method, path, wait)
                continue
            if status >= 500 and status not in _NOT_RETRIED_5XX and retries < self.max_retries:
                hint = error.retry_after if status == 503 else None
                self._sleep(self._backoff(retries, hint))
                retries += 1
                continue
            raise error

    def settle_unknown_outcome(self) -> None:
        """ERR-3e after a *timeout* on a POST: wait as long again as the timeout before matching again.

        A target that answers after our timeout usually still applies the request (its handler does not notice
        that we hung up). Matching at once then finds nothing, and the next attempt — the next cycle, seconds
        later for a job that runs back to back — POSTs again: a duplicate wherever nothing unique forbids it
        (group ``displayName``). Waiting as long again, capped at :data:`MAX_SETTLE`, lets that late write land.
        """
        self._sleep(min(self.timeout, MAX_SETTLE))

    # -- discovery (WIRE-4) ------------------------------------------------------------------------------------
    def service_provider_config(self) -> dict[str, Any]:
        """``GET /ServiceProviderConfig``, cached; a 404 (also of the Salesforce-style ``/ServiceProviderConfigs``)
        gives :data:`DEFAULT_SPC`."""
        with self._lock:
            if self._spc is not None:
                return self._spc
        spc: dict[str, Any] | None = None
        for path in ("/ServiceProviderConfig", "/ServiceProviderConfigs"):
            status, body = self.request("GET", path, ok=(404,))
            if status != 404 and isinstance(body, dict):
                spc = body
                break
        with self._lock:
            self._spc = spc if spc is not None else dict(DEFAULT_SPC)
            return self._spc

    @property
    def fetched_service_provider_config(self) -> dict[str, Any] | None:
        """The ServiceProviderConfig if it has been read (or adopted), else None — nothing is sent."""
        with self._lock:
            return self._spc

    def adopt_service_provider_config(self, spc: dict[str, Any]) -> None:
        """Use a cached ServiceProviderConfig (the engine keeps one per job for an hour, WIRE-4) instead of
        reading it again."""
        with self._lock:
            self._spc = dict(spc)

    def _spc_block(self, name: str) -> dict[str, Any]:
        block = self.service_provider_config().get(name)
        return block if isinstance(block, dict) else {}

    @property
    def supports_bulk(self) -> bool:
        return bool(self._spc_block("bulk").get("supported")) and self.bulk_max_operations > 0

    @property
    def bulk_max_operations(self) -> int:
        return _int_or_none(self._spc_block("bulk").get("maxOperations")) or 0

    @property
    def bulk_max_payload(self) -> int:
        return _int_or_none(self._spc_block("bulk").get("maxPayloadSize")) or 0

    @property
    def supports_filter(self) -> bool:
        return bool(self._spc_block("filter").get("supported", True))

    @property
    def supports_patch(self) -> bool:
        return bool(self._spc_block("patch").get("supported", True))

    @property
    def supports_cursor(self) -> bool:
        """RFC 9865 cursor pagination advertised (``pagination.cursor``)."""
        return bool(self._spc_block("pagination").get("cursor"))

    @property
    def bulk_enabled(self) -> bool:
        """Whether :meth:`bulk` posts to ``/Bulk`` (``use_bulk`` "always", or "auto" and advertised)."""
        return self.use_bulk == "always" or (self.use_bulk == "auto" and self.supports_bulk)

    # -- resources ---------------------------------------------------------------------------------------------
    @staticmethod
    def _path(resource_type: str, id: str | None = None) -> str:
        resource_type = _endpoint(resource_type)
        return f"/{resource_type}" if id is None else f"/{resource_type}/{quote(id, safe='')}"

    @staticmethod
    def _read_params(resource_type: str, attributes: str | None, excluded: str | None) -> dict[str, str]:
        """GRP-1: group reads exclude ``members`` unless the caller names attributes."""
        params: dict[str, str] = {}
        if attributes:
            params["attributes"] = attributes
        elif excluded:
            params["excludedAttributes"] = excluded
        elif _endpoint(resource_type) == "Groups":
            params["excludedAttributes"] = "members"
        return params

    def _list_page(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        _, body = self.request("GET", path, params=params)
        if not isinstance(body, dict) or not isinstance(body.get("Resources", []), list):
            raise TargetError(200, "the response is not a ListResponse (ServiceIncompatible)", body=body,
                              method="GET", path=path)
        return body

    def query(self, resource_type: str, filter: str, *, attributes: str | None = None,
              excluded_attributes: str | None = None, page_size: int | None = None) -> list[dict[str, Any]]:
        """``GET /<type>?filter=…`` (WIRE-1; build the filter with :func:`eq_filter`), following index paging
        while ``totalResults`` says more remain."""
        path = self._path(resource_type)
        params: dict[str, Any] = {"filter": filter, **self._read_params(resource_type, attributes,
                                                                         excluded_attributes)}
        if page_size:
            params["count"] = page_size
        found: list[dict[str, Any]] = []
        start = 1
        for _ in range(10_000):
            body = self._list_page(path, {**params, "startIndex": start} if start > 1 else params)
            resources = [r for r in body.get("Resources") or [] if isinstance(r, dict)]
            found.extend(resources)
            total = _int_or_none(body.get("totalResults"))
            if not resources or total is None or len(found) >= total:
                break
            start = (_int_or_none(body.get("startIndex")) or start) + len(resources)
        return found

    def count(self, resource_type: str) -> int | None:
        """``totalResults`` of ``GET /<type>?count=0`` (RFC 7644 §3.4.2.4); None if the target does not say."""
        path = self._path(resource_type)
        body = self._list_page(path, {"count": 0, **self._read_params(resource_type, None, None)})
        return _int_or_none(body.get("totalResults"))

    def get(self, resource_type: str, id: str, *, attributes: str | None = None,
            excluded_attributes: str | None = None) -> dict[str, Any] | None:
        """``GET /<type>/<id>``; 404 → None (groups without ``members``, GRP-1)."""
        path = self._path(resource_type, id)
        status, body = self.request("GET", path, params=self._read_params(resource_type, attributes,
                                                                           excluded_attributes), ok=(404,))
        if status == 404:
            return None
        if not isinstance(body, dict):
            raise TargetError(status, "a single GET did not return one resource (MultipleEntriesInResponse)",
                              body=body, method="GET", path=path)
        return body

    def create(self, resource_type: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /<type>`` (WIRE-4); returns the created resource."""
        _, created = self.request("POST", self._path(resource_type), json_body=body)
        return created if isinstance(created, dict) else {}

    def patch(self, resource_type: str, id: str, operations: list[dict[str, Any]]) -> dict[str, Any] | None:
        """``PATCH /<type>/<id>`` with a PatchOp; 204 → None."""
        _, body = self.request("PATCH", self._path(resource_type, id),
                               json_body={"schemas": [PATCH_OP], "Operations": operations})
        return body if isinstance(body, dict) else None

    def replace(self, resource_type: str, id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /<type>/<id>`` — only for targets without PATCH (WIRE-4)."""
        _, replaced = self.request("PUT", self._path(resource_type, id), json_body=body)
        return replaced if isinstance(replaced, dict) else {}

    def delete(self, resource_type: str, id: str) -> None:
        """``DELETE /<type>/<id>``; a 404 raises ``TargetError(404)`` (the engine decides what it means)."""
        self.request("DELETE", self._path(resource_type, id))

    # -- group membership (GRP-2) ------------------------------------------------------------------------------
    def update_members(self, group_id: str, add: Sequence[str], remove: Sequence[str]) -> int:
        """PATCH membership deltas in chunks of at most ``members_per_patch`` values (and ``bulk.maxOperations``
        when advertised): one ``add`` with a value list and one ``remove`` with a value list per chunk. A 413
        halves the chunk and retries it (down to 1); the smaller size sticks. Returns the number of successful
        PATCH requests."""
        items = [("add", m) for m in dict.fromkeys(add)] + [("remove", m) for m in dict.fromkeys(remove)]
        if not items:
            return 0
        cap = self.bulk_max_operations if self._spc_block("bulk").get("supported") else 0
        with self._lock:
            size = self._member_chunk
        if cap > 0:
            size = min(size, cap)
        calls = pos = 0
        while pos < len(items):
            chunk = items[pos:pos + size]
            ops: list[dict[str, Any]] = []
            for op in ("add", "remove"):
                values = [{"value": m} for o, m in chunk if o == op]
                if values:
                    ops.append({"op": op, "path": "members", "value": values})
            try:
                self.patch("Groups", group_id, ops)
            except TargetError as exc:
                if exc.status != 413 or size <= 1:
                    raise
                size = max(1, size // 2)
                with self._lock:
                    self._member_chunk = min(self._member_chunk, size)
                log.info("PATCH /Groups/%s: 413, member chunk halved to %d", group_id, size)
                continue
            calls += 1
            pos += len(chunk)
        return calls

    # -- Bulk (RFC 7644 §3.7) ----------------------------------------------------------------------------------
    def _bulk_chunks(self, operations: list[dict[str, Any]], max_ops: int) -> Iterator[list[dict[str, Any]]]:
        """Split by ``maxOperations`` and ``maxPayloadSize`` (the encoded BulkRequest must fit)."""
        limit = self.bulk_max_payload
        overhead = len(orjson.dumps({"schemas": [BULK_REQUEST], "failOnErrors": 2**31, "Operations": []}))
        chunk: list[dict[str, Any]] = []
        size = overhead
        for op in operations:
            n = len(orjson.dumps(op)) + 1
            if chunk and (len(chunk) >= max_ops or (limit and size + n > limit)):
                yield chunk
                chunk, size = [], overhead
            chunk.append(op)
            size += n
        if chunk:
            yield chunk

    @staticmethod
    def _substitute(value: Any, ids: Mapping[str, str]) -> Any:
        if isinstance(value, str):
            return _BULK_ID.sub(lambda m: ids.get(m.group(1), m.group(0)), value)
        if isinstance(value, list):
            return [ScimTarget._substitute(v, ids) for v in value]
        if isinstance(value, dict):
            return {k: ScimTarget._substitute(v, ids) for k, v in value.items()}
        return value

    @staticmethod
    def _learn_ids(results: list[dict[str, Any]], ids: dict[str, str]) -> None:
        for r in results:
            bulk_id = r.get("bulkId")
            status = _int_or_none(r.get("status")) or 0
            if not isinstance(bulk_id, str) or status >= 400:
                continue
            response = r.get("response")
            rid = response.get("id") if isinstance(response, dict) else None
            location = r.get("location")
            if not rid and isinstance(location, str):
                rid = location.rstrip("/").rsplit("/", 1)[-1]
            if isinstance(rid, str) and rid:
                ids[bulk_id] = rid

    def bulk(self, operations: list[dict[str, Any]], *, fail_on_errors: int | None = None) -> list[dict[str, Any]]:
        """Run RFC 7644 §3.7 operations; returns one result per operation run (``status`` normalised to int).

        With ``/Bulk`` (see :attr:`bulk_enabled`) requests are split by ``maxOperations``/``maxPayloadSize``
        (a 413 halves the split), ``bulkId:`` references to earlier chunks are substituted, and
        ``failOnErrors`` counts across chunks (operations after the limit are not run). Without it the
        operations run one by one as plain requests, with the same result shape.
        """
        results: list[dict[str, Any]] = []
        ids: dict[str, str] = {}
        errors = 0
        if not self.bulk_enabled:
            for op in operations:
                if fail_on_errors is not None and errors >= fail_on_errors:
                    break
                result = self._emulate(self._substitute(op, ids))
                results.append(result)
                self._learn_ids([result], ids)
                errors += result["status"] >= 400 or result["status"] == 0   # 0: network error
            return results
        max_ops = self.bulk_max_operations or len(operations) or 1
        pending = list(operations)
        while pending:
            if fail_on_errors is not None and errors >= fail_on_errors:
                break
            chunk = next(self._bulk_chunks(pending, max_ops))
            if ids:      # bulkId references to operations of earlier chunks
                chunk = [self._substitute(op, ids) for op in chunk]
            request: dict[str, Any] = {"schemas": [BULK_REQUEST], "Operations": chunk}
            if fail_on_errors is not None:
                request["failOnErrors"] = fail_on_errors - errors
            try:
                _, body = self.request("POST", "/Bulk", json_body=request)
            except TargetError as exc:
                if exc.status != 413 or len(chunk) <= 1:
                    raise
                max_ops = max(1, len(chunk) // 2)
                continue
            got = body.get("Operations") if isinstance(body, dict) else None
            if not isinstance(got, list):
                raise TargetError(200, "the response is not a BulkResponse (ServiceIncompatible)", body=body,
                                  method="POST", path="/Bulk")
            chunk_results = [dict(r, status=_int_or_none(r.get("status")) or 0) for r in got if isinstance(r, dict)]
            results.extend(chunk_results)
            self._learn_ids(chunk_results, ids)
            errors += sum(1 for r in chunk_results if r["status"] >= 400)
            pending = pending[len(chunk):]
        return results

    def _emulate(self, op: dict[str, Any]) -> dict[str, Any]:
        method = str(op.get("method", "")).upper()
        path = str(op.get("path", ""))
        result: dict[str, Any] = {"method": method}
        if op.get("bulkId") is not None:
            result["bulkId"] = op["bulkId"]
        try:
            status, body = self.request(method, path, json_body=op.get("data"))
        except TargetError as exc:
            result.update(status=exc.status or 0, response=exc.body if exc.status else {"detail": str(exc)})
            return result
        result["status"] = status
        if isinstance(body, dict):
            result["response"] = body
            location = (body.get("meta") or {}).get("location") if isinstance(body.get("meta"), dict) else None
            if location:
                result["location"] = location
        return result

    # -- reconcile (RFC 9865 cursors or index paging) ----------------------------------------------------------
    def list_all(self, resource_type: str, *, page_size: int = 500, attributes: str | None = None,
                 excluded_attributes: str | None = None) -> Iterator[dict[str, Any]]:
        """Every resource of a type: cursor paging when the SPC advertises RFC 9865 cursors, else index paging.
        ``page_size`` is capped by ``pagination.maxPageSize``; groups come without members unless ``attributes``
        names them."""
        path = self._path(resource_type)
        max_page = _int_or_none(self._spc_block("pagination").get("maxPageSize"))
        count = min(page_size, max_page) if max_page else page_size
        params: dict[str, Any] = {"count": count, **self._read_params(resource_type, attributes,
                                                                       excluded_attributes)}
        if self.supports_cursor:
            cursor = ""
            seen: set[str] = set()
            while True:
                body = self._list_page(path, {**params, "cursor": cursor})
                yield from (r for r in body.get("Resources") or [] if isinstance(r, dict))
                nxt = body.get("nextCursor")
                if not isinstance(nxt, str) or not nxt or nxt in seen:
                    return
                seen.add(nxt)
                cursor = nxt
        start = 1
        while True:
            body = self._list_page(path, {**params, "startIndex": start})
            resources = [r for r in body.get("Resources") or [] if isinstance(r, dict)]
            yield from resources
            total = _int_or_none(body.get("totalResults"))
            start += len(resources)
            if not resources or (total is not None and start > total):
                return
