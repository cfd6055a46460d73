"""Per-object writes gathered into ``/Bulk`` requests (RFC 7644 §3.7, WIRE-4 "use what the target offers").

The cycle processes each object on its own worker thread (match → create or update → link), which keeps the
per-object logic — 409 re-match, 404 ``InvalidAnchor``, escrow — in one place. With a target that advertises
``bulk.supported``, those threads hand their POST/PATCH to one :class:`BulkBatcher` and wait: a dispatcher collects
the waiting operations into BulkRequests of at most ``max_operations`` (and the target's ``maxPayloadSize``, which
:meth:`ScimTarget.bulk` enforces), sends up to ``in_flight`` of them at a time, and gives every thread its own
operation's result — a failed operation raises the same :class:`TargetError` a single request would have, so it
is escrowed like one. Each operation carries a unique ``bulkId`` and results are mapped back by it.

* A batch of one goes as the plain request (a BulkRequest would only add overhead).
* A ServiceProviderConfig that cannot be read when the cycle starts (a 5xx or timeout after the retries) does
  not stop the cycle: the batcher starts with its own limit.
* ``/Bulk`` answering 404 or 501 (advertised but absent) switches the batcher off for the rest of the cycle and
  the waiting threads send their requests themselves.
* Any other failure of the whole BulkRequest (network, 5xx after the retries, 401) is every operation's failure;
  a POST whose outcome is unknown stays ``ambiguous`` so creates are matched again first (ERR-3e).

Hand-written: no SCIM client library offers request coalescing across threads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from scimgrip.engine.target import ScimTarget, TargetError

log = logging.getLogger("scimgrip.engine.bulk")

DEFAULT_MAX_OPERATIONS = 100     # per BulkRequest, below the target's maxOperations: keeps latency per batch low
LINGER_SECONDS = 0.005           # how long a partial batch waits for more operations


@dataclass
class _Op:
    method: str
    path: str
    data: Any
    bulk_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    body: Any = None
    error: TargetError | None = None
    fallback: bool = False
    elapsed_ms: float = 0.0


class BulkBatcher:
    """Coalesces concurrent single writes into BulkRequests; see the module docstring. Use as a context manager
    (closing it sends what is pending and stops the dispatcher)."""

    def __init__(self, target: ScimTarget, *, max_operations: int | None = None,
                 linger: float = LINGER_SECONDS, in_flight: int | None = None) -> None:
        try:
            advertised = target.bulk_max_operations or DEFAULT_MAX_OPERATIONS
        except TargetError as exc:   # the ServiceProviderConfig could not be read now; ``bulk`` asks again
            log.warning("bulk: the ServiceProviderConfig could not be read (%s); at most %d operations per "
                        "BulkRequest", exc, DEFAULT_MAX_OPERATIONS)
            advertised = DEFAULT_MAX_OPERATIONS
        self.target = target
        self.max_operations = max(1, min(advertised, max_operations or DEFAULT_MAX_OPERATIONS))
        self.linger = linger
        self.enabled = True
        self.requests = 0                       # BulkRequests sent
        self._cond = threading.Condition()
        self._pending: list[_Op] = []
        self._closed = False
        self.in_flight = max(1, min(target.concurrency, in_flight or target.concurrency))
        self._slots = threading.BoundedSemaphore(self.in_flight)
        self._dispatcher = threading.Thread(target=self._dispatch, name="scimgrip-bulk", daemon=True)
        self._dispatcher.start()

    # -- callers --------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, data: Any) -> tuple[int, Any, float | None]:
        """Send ``method path`` with body ``data`` inside a BulkRequest; ``(status, body, elapsed ms)``, the
        elapsed time None when it went as a plain request (then the target's call hook has recorded it).
        Raises :class:`TargetError` like :meth:`ScimTarget.request`."""
        if self.enabled:
            op = _Op(method, path, data)
            with self._cond:
                if not self._closed:
                    self._pending.append(op)
                    self._cond.notify_all()
                else:
                    op.fallback = True
                    op.done.set()
            op.done.wait()
            if op.error is not None:
                raise op.error
            if not op.fallback:
                return op.status, op.body, op.elapsed_ms
        status, body = self.target.request(method, path, json_body=data)
        return status, body, None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._dispatcher.join()
        for _ in range(self.in_flight):   # wait for the batches in flight
            self._slots.acquire()

    def __enter__(self) -> BulkBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dispatcher -----------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            self._slots.acquire()            # a free slot first: meanwhile operations pile up into full batches
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    self._slots.release()
                    return
                deadline = time.monotonic() + self.linger
                while len(self._pending) < self.max_operations and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._pending[:self.max_operations]
                del self._pending[:self.max_operations]
            threading.Thread(target=self._send, args=(batch,), name="scimgrip-bulk-send", daemon=True).start()

    def _send(self, batch: list[_Op]) -> None:
        try:
            if len(batch) == 1 or not self.enabled:
                for op in batch:
                    op.fallback = True
                return
            self._send_bulk(batch)
        except Exception as exc:   # never leave a caller waiting
            log.exception("bulk dispatch failed")
            for op in batch:
                if not op.done.is_set() and op.error is None:
                    op.error = TargetError(None, f"bulk dispatch failed: {exc}", method=op.method, path=op.path)
        finally:
            for op in batch:
                op.done.set()
            self._slots.release()

    def _send_bulk(self, batch: list[_Op]) -> None:
        operations = []
        for op in batch:
            item: dict[str, Any] = {"method": op.method, "path": op.path, "bulkId": op.bulk_id}
            if op.data is not None:
                item["data"] = op.data
            operations.append(item)
        started = time.perf_counter()
        try:
            results = self.target.bulk(operations)
        except TargetError as exc:
            if exc.status in (404, 501):
                log.warning("/Bulk answered %s although advertised: single requests from now on", exc.status)
                self.enabled = False
                for op in batch:
                    op.fallback = True
                return
            for op in batch:
                op.error = TargetError(exc.status, exc.detail, scim_type=exc.scim_type, retry_after=exc.retry_after,
                                       body=exc.body, method=op.method, path=op.path,
                                       ambiguous=exc.ambiguous and op.method == "POST",
                                       timed_out=exc.timed_out)
            return
        self.requests += 1
        elapsed = (time.perf_counter() - started) * 1000
        by_id = {r.get("bulkId"): r for r in results if isinstance(r.get("bulkId"), str)}
        for i, op in enumerate(batch):
            result = by_id.get(op.bulk_id)
            if result is None and not by_id and i < len(results):
                result = results[i]          # a target that does not echo bulkId: results are in order
            op.elapsed_ms = elapsed
            if result is None:
                op.error = TargetError(None, "no result for this operation in the BulkResponse",
                                       method=op.method, path=op.path, ambiguous=op.method == "POST")
                continue
            status = int(result.get("status") or 0)
            response = result.get("response")
            if status >= 400 or status == 0:
                detail = scim_type = None
                if isinstance(response, dict):
                    detail = response.get("detail") if isinstance(response.get("detail"), str) else None
                    scim_type = response.get("scimType") if isinstance(response.get("scimType"), str) else None
                op.error = TargetError(status or None, detail or f"bulk operation failed ({status})",
                                       scim_type=scim_type, body=response, method=op.method, path=op.path)
                continue
            body = dict(response) if isinstance(response, dict) else {}
            location = result.get("location")
            if "id" not in body and isinstance(location, str) and location:
                body["id"] = location.rstrip("/").rsplit("/", 1)[-1]
            op.status, op.body = status, body
