"""Per-tenant SCIM request log, written off the request's critical path.

The request handler only appends a tuple to an in-process queue (a few microseconds: the bodies go in as
the bytes already at hand, the request's as received and the response's as sent); a daemon thread drains it
every ``flush_interval`` seconds (or at ``batch_size`` entries), and there decodes and masks the bodies and
writes the batch in one transaction, records token last-used times, and prunes each tenant's log to
``retention`` rows. Bodies are kept (truncated) for the request debugger, with secrets masked: ``password``
values and anything that looks like a bearer token (a JSON body is re-encoded first, so an escaped key such
as ``"pass\\u0077ord"`` is masked too).

Losing the last fraction of a second of log on a crash is accepted; losing SCIM data is not, and the two
never share a transaction: the storage writes log rows without waiting for the disk
(``SqlStorage.append_request_log``), so the writer holds SQLite's write lock for microseconds, not an fsync.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import re
import threading
import time
from typing import Any

import orjson

from scimgrip.storage.base import Storage

log = logging.getLogger("scimgrip.requestlog")

MAX_BODY_CHARS = 8192
_SECRET_KEYS = re.compile(r'("(?:password|secret|token|client_secret)"\s*:\s*)"(?:[^"\\]|\\.)*"', re.I)
_BEARER = re.compile(r"(sgt_)[A-Za-z0-9_\-]{8,}")


def mask(text: str | None) -> str | None:
    """Mask secrets in a JSON text and truncate it."""
    if text is None:
        return None
    if len(text) > 2 * MAX_BODY_CHARS:     # the regexes need not scan what is cut off anyway
        text = text[:2 * MAX_BODY_CHARS]
    text = _SECRET_KEYS.sub(r'\1"***"', text)
    text = _BEARER.sub(r"\1***", text)
    if len(text) > MAX_BODY_CHARS:
        text = text[:MAX_BODY_CHARS] + "…(truncated)"
    return text


def body_text(body: Any) -> str | None:
    """A body as compact JSON text; bytes that are JSON are re-encoded (normalising escapes), others decoded."""
    if body is None:
        return None
    if isinstance(body, bytes | bytearray):
        if not body:
            return None
        if len(body) > 8 * MAX_BODY_CHARS:   # a list page: only its start is kept, never decoded whole
            return bytes(body[:2 * MAX_BODY_CHARS]).decode("utf-8", "replace")
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return bytes(body).decode("utf-8", "replace")
    try:
        return orjson.dumps(body).decode()
    except TypeError:  # orjson.JSONEncodeError: nested deeper than orjson writes (it reads deeper than it writes)
        return "(body not logged: JSON nested too deeply)"


class RequestLogWriter:
    def __init__(self, storage: Storage, *, flush_interval: float = 0.25, batch_size: int = 500,
                 retention: int = 10_000, touch_interval: float = 5.0) -> None:
        self.storage = storage
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.retention = retention
        self._q: queue.SimpleQueue[dict[str, Any] | tuple[Any, ...] | None] = queue.SimpleQueue()
        self._tokens: dict[str, dt.datetime] = {}
        self._tokens_lock = threading.Lock()
        self.touch_interval = touch_interval
        self._touched: dict[str, float] = {}       # token id -> when its last-used time was last written
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._written_since_prune: dict[int, int] = {}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scimgrip-requestlog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._flush(self._drain(), everything=True)

    def record(self, entry: dict[str, Any]) -> None:
        # the path carries the query string and the detail may echo input: a token there is masked too
        for key in ("path", "detail"):
            if isinstance(entry.get(key), str):
                entry[key] = mask(entry[key])
        self._q.put(entry)

    def record_raw(self, tenant_id: int, at: dt.datetime, method: str, path: str, status: int, duration_ms: float,
                   detail: str | None, request_body: bytes | None, response_body: bytes | None) -> None:
        """Queue one entry as it is at hand; it becomes a row (masked) in the writer thread."""
        self._q.put((tenant_id, at, method, path, status, duration_ms, detail, request_body, response_body))

    def token_used(self, token_id: str, at: dt.datetime) -> None:
        with self._tokens_lock:
            self._tokens[token_id] = at

    def flush_now(self) -> None:
        """Write everything queued so far (tests and shutdown)."""
        self._flush(self._drain(), everything=True)

    def _drain(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if item is not None:
                out.append(_entry(item))

    def _run(self) -> None:
        while not self._stop.is_set():
            batch: list[dict[str, Any]] = []
            try:
                first = self._q.get(timeout=self.flush_interval)
                if first is not None:
                    batch.append(_entry(first))
            except queue.Empty:
                pass
            while len(batch) < self.batch_size:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch.append(_entry(item))
            self._flush(batch)

    def _due_tokens(self, everything: bool) -> dict[str, dt.datetime]:
        """Last-used times to write now: a token's first use at once, then at most every ``touch_interval``
        seconds (a token serving 1,000 requests/s needs no 4 row updates a second); the rest stay pending."""
        now = time.monotonic()
        with self._tokens_lock:
            if everything:
                due, self._tokens = self._tokens, {}
            else:
                due = {k: v for k, v in self._tokens.items()
                       if now - self._touched.get(k, -self.touch_interval) >= self.touch_interval}
                for k in due:
                    del self._tokens[k]
        for k in due:
            self._touched[k] = now
        if len(self._touched) > 100_000:
            self._touched.clear()
        return due

    def _flush(self, batch: list[dict[str, Any]], *, everything: bool = False) -> None:
        tokens = self._due_tokens(everything)
        try:
            if batch:
                self.storage.append_request_log(batch)
                for e in batch:
                    tid = e.get("tenant_id")
                    if tid is not None:
                        self._written_since_prune[tid] = self._written_since_prune.get(tid, 0) + 1
                for tid, n in list(self._written_since_prune.items()):
                    if n >= max(100, self.retention // 10):
                        self.storage.prune_request_log(tid, self.retention)
                        self._written_since_prune[tid] = 0
            if tokens:
                self.storage.touch_tokens(tokens)
        except Exception:  # the log must never take the server down
            log.exception("could not write %d request-log entries", len(batch))


def _entry(item: dict[str, Any] | tuple[Any, ...]) -> dict[str, Any]:
    """A queued item as a log row: tuples from :meth:`RequestLogWriter.record_raw` are decoded and masked here."""
    if isinstance(item, dict):
        return item
    tenant_id, at, method, path, status, duration_ms, detail, request_body, response_body = item
    return {"tenant_id": tenant_id, "at": at, "method": method, "path": mask(path), "status": status,
            "duration_ms": duration_ms, "outcome": "success" if status < 400 else "failure",
            "detail": mask(detail), "request_body": mask(body_text(request_body)),
            # our own compact orjson output: no escapes to normalise, so decoded (its start) without re-encoding
            "response_body": mask(bytes(response_body[:2 * MAX_BODY_CHARS]).decode("utf-8", "replace"))
            if response_body else None}
