"""The webhook dispatcher: a background thread in each server process, outside any SCIM request.

Each round: fan new outbox events out to endpoint queues, lease due work as chains (the next deliveries of
one resource on one endpoint, sent in sequence order by one thread), POST chains in parallel with Standard Webhooks
headers, and record the outcomes. A 2xx is success; anything else is retried with exponential backoff and
"equal jitter" (AWS Architecture Blog, "Exponential Backoff and Jitter") until the retry window (3 days by
default) is over, then the delivery is dead-lettered until an admin replays it. Delivery is at least once:
a worker killed mid-send leaves a lease that expires, and the delivery goes out again with the same
``webhook-id`` (receivers deduplicate on it, as Standard Webhooks recommends).
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from scimgrip.events import signing
from scimgrip.events.config import EventSettings
from scimgrip.storage.sql.events_store import EventStore, Leased, Outcome

log = logging.getLogger("scimgrip.events")

PRUNE_EVERY = 3600.0   # seconds between retention runs
USER_AGENT = "scimgrip-webhooks/1"


def backoff(attempts: int, settings: EventSettings) -> float:
    """Delay before the next try after ``attempts`` failures: uniform in [c/2, c], c = min(base·2^(n-1), cap)."""
    ceiling = min(settings.retry_cap_seconds, settings.retry_base_seconds * 2 ** max(attempts - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


class Dispatcher:
    """Sends webhooks from the delivery queue until :meth:`stop`. Safe to run in several processes."""

    def __init__(self, store: EventStore, settings: EventSettings | None = None) -> None:
        self.store = store
        self.settings = settings or EventSettings()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(self.settings.concurrency, 1),
                                        thread_name_prefix="scimgrip-webhook")
        self._last_prune = 0.0
        self._local = threading.local()          # per sending thread: keep-alive connections by host

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scimgrip-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("webhook dispatcher round failed")
                busy = 0
            if not busy:
                self._stop.wait(self.settings.poll_seconds)

    def run_once(self) -> int:
        """One round; returns how many deliveries were attempted."""
        now = time.monotonic()
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=self.settings.retention_days)
            self.store.prune(cutoff)
        self.store.fanout()
        chains = self.store.lease(self.settings.batch, dt.timedelta(seconds=self.settings.lease_seconds),
                                  per_chain=self.settings.per_resource)
        if not chains:
            return 0
        outcomes: list[Outcome] = []
        released: list[int] = []
        for done, untried in self._pool.map(self._send_chain, chains):
            outcomes += done
            released += untried
        self.store.complete(outcomes, released)
        return len(outcomes)

    def _send_chain(self, chain: list[Leased]) -> tuple[list[Outcome], list[int]]:
        """Send one resource's deliveries in order; stop at the first failure (the rest wait their turn)."""
        done: list[Outcome] = []
        for i, item in enumerate(chain):
            outcome = self._send(item)
            done.append(outcome)
            if not outcome.ok:
                return done, [x.delivery.id for x in chain[i + 1:]]
        return done, []

    def _connection(self, url: str, fresh: bool = False) -> tuple[http.client.HTTPConnection, str]:
        """A keep-alive connection of this worker thread to the URL's host, and the request target."""
        u = urlsplit(url)
        conns: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        key = (u.scheme, u.netloc)
        conn = conns.get(key)
        if fresh and conn is not None:
            conn.close()
            conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            conn = cls(u.hostname or "", u.port, timeout=self.settings.timeout_seconds)
            conns[key] = conn
        return conn, (u.path or "/") + (f"?{u.query}" if u.query else "")

    def _post(self, url: str, body: bytes, hdrs: dict[str, str]) -> int:
        """POST and return the status; a keep-alive connection the receiver closed is retried once, fresh."""
        for attempt in (0, 1):
            conn, target = self._connection(url, fresh=attempt == 1)
            reused = conn.sock is not None
            try:
                conn.request("POST", target, body=body, headers=hdrs)
                resp = conn.getresponse()
                resp.read(64 * 1024)
                if resp.will_close:
                    conn.close()
                return resp.status
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if attempt == 1 or not reused:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _send(self, item: Leased) -> Outcome:
        now = dt.datetime.now(dt.UTC)
        hdrs = signing.headers(item.delivery.event_id, item.body, item.endpoint.signing_secrets(now))
        hdrs.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
        started = time.perf_counter()
        code: int | None = None
        error: str | None = None
        try:
            code = self._post(item.endpoint.url, item.body, hdrs)
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        elapsed = (time.perf_counter() - started) * 1000
        ok = code is not None and 200 <= code < 300
        retry_at: dt.datetime | None = None
        first = item.delivery.attempts == 0
        window_start = now if first else item.delivery.created
        if not ok:
            retry_at = now + dt.timedelta(seconds=backoff(item.delivery.attempts + 1, self.settings))
            if retry_at > window_start + self.settings.retry_window():
                retry_at = None
        return Outcome(item.delivery.id, ok, code, error, elapsed, retry_at, now if first else None,
                       None if ok else item.delivery)
