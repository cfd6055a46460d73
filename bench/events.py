"""Events benchmark: SCIM write cost with and without the outbox, and webhook dispatch throughput.

    python bench/events.py [--writes 600] [--rounds 5] [--events 5000] [--pg postgresql://…/postgres | --pg ""]

Write cost: the storage calls behind a SCIM POST /Users, PATCH /Users and PATCH /Groups (add one member),
timed in alternating rounds with the outbox on and off (event construction and ``append_events`` replaced by
no-ops) on the same database, so machine noise hits both sides alike; the median round is reported. SQLite
runs on a file (WAL, ``synchronous=FULL``: every commit is flushed), PostgreSQL on a database created for
the run.

Dispatch: ``--events`` outbox events spread over 500 users, plus one group with 2,000 member events (adds
and removes of one resource: delivered strictly in order), sent by one in-process :class:`Dispatcher` to a
loopback receiver that answers 204 (HTTP/1.1 keep-alive); events per second from first lease to the last
acknowledgement.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import scimgrip.storage.sql.repository as _repository
from scimgrip.events.config import EventSettings
from scimgrip.events.dispatcher import Dispatcher
from scimgrip.events.signing import generate_secret
from scimgrip.storage import open_storage
from scimgrip.storage.base import Change, MemberDelta, Storage, StoredResource
from scimgrip.storage.sql.events_store import EventStore

repository: Any = _repository     # patched per round: outbox on / off
REAL_APPEND = repository.append_events
REAL_OUTBOX = repository.outbox
NO_OUTBOX = SimpleNamespace(created=lambda *a: [], updated=lambda *a: [], deleted=lambda *a: [],
                            removed_from=lambda *a: [], Draft=object)


@contextmanager
def database(kind: str, pg_url: str | None) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(dir=".") as d:
            yield f"sqlite:///{Path(d) / 'bench.db'}"
        return
    import psycopg

    assert pg_url is not None
    name = "scimgrip_bench_" + secrets.token_hex(4)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


INSIDE = [0.0]   # seconds spent in the outbox (event construction + append_events) during timed rounds


def _timed(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            INSIDE[0] += time.perf_counter() - started
    return wrapper


TIMED_OUTBOX = SimpleNamespace(created=_timed(REAL_OUTBOX.created), updated=_timed(REAL_OUTBOX.updated),
                               deleted=_timed(REAL_OUTBOX.deleted), removed_from=_timed(REAL_OUTBOX.removed_from),
                               Draft=REAL_OUTBOX.Draft)


def _retitle(r: StoredResource) -> Change:
    return Change({**r.doc, "title": "b"})


def _titled(title: str) -> Callable[[StoredResource], Change]:
    return lambda r: Change({**r.doc, "title": title})


def _adder(uid: str) -> Callable[[StoredResource], Change]:
    return lambda r: Change(r.doc, MemberDelta(add=[uid]))


def _delta(delta: MemberDelta) -> Callable[[StoredResource], Change]:
    return lambda r: Change(r.doc, delta)


def write_round(storage: Storage, n: int, outbox: bool) -> float:
    """Milliseconds per SCIM write (mix of create user, patch user, add group member)."""
    repository.append_events = _timed(REAL_APPEND) if outbox else (lambda *a, **k: None)
    repository.outbox = TIMED_OUTBOX if outbox else NO_OUTBOX
    try:
        t = storage.create_tenant("bench-" + secrets.token_hex(4)).id
        g = storage.create(t, "Group", {"displayName": "everyone"})
        ops = 0
        started = time.perf_counter()
        for i in range(n // 3):
            u = storage.create(t, "User", {"userName": f"user{i}", "active": True, "title": "a"})
            storage.update(t, "User", u.id, _retitle)
            storage.update(t, "Group", g.id, _adder(u.id))
            ops += 3
        return (time.perf_counter() - started) * 1000 / ops
    finally:
        repository.append_events = REAL_APPEND
        repository.outbox = REAL_OUTBOX


def bench_writes(kind: str, pg_url: str | None, writes: int, rounds: int) -> dict[str, float]:
    results: dict[bool, list[float]] = {True: [], False: []}
    inside: list[float] = []
    with database(kind, pg_url) as url:
        storage = open_storage(url)
        try:
            write_round(storage, 60, True)          # warm up: pools, statement caches
            for r in range(rounds):
                for outbox in ((True, False) if r % 2 == 0 else (False, True)):
                    INSIDE[0] = 0.0
                    results[outbox].append(write_round(storage, writes, outbox))
                    if outbox:
                        inside.append(INSIDE[0] * 1000 / (writes // 3 * 3))
        finally:
            storage.close()
    with_ms, without_ms = statistics.median(results[True]), statistics.median(results[False])
    return {"with_ms": with_ms, "without_ms": without_ms, "overhead_pct": (with_ms / without_ms - 1) * 100,
            "inside_ms": statistics.median(inside)}


class _Receiver(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


def receiver() -> tuple[_Receiver, list[int]]:
    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                count[0] += 1
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    srv = _Receiver(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, count


def bench_dispatch(kind: str, pg_url: str | None, n_events: int) -> dict[str, float]:
    with database(kind, pg_url) as url:
        storage = open_storage(url)
        srv, count = receiver()
        try:
            store = EventStore(storage)
            t = storage.create_tenant("dispatch").id
            store.add_endpoint(f"http://127.0.0.1:{srv.server_address[1]}/hook", generate_secret(), t)
            users = [storage.create(t, "User", {"userName": f"u{i}", "n": 0}).id for i in range(500)]
            for i in range(max(n_events - 500, 0)):
                uid = users[i % 500]
                storage.update(t, "User", uid, _titled(str(i)))
            g = storage.create(t, "Group", {"displayName": "hot"})
            for delta in (MemberDelta(add=users), MemberDelta(remove=users)) * 2:
                storage.update(t, "Group", g.id, _delta(delta))
            total = store.last_seq(t)
            dispatcher = Dispatcher(store, EventSettings())
            started = time.perf_counter()
            while count[0] < total:
                if not dispatcher.run_once():
                    time.sleep(0.01)
            elapsed = time.perf_counter() - started
            dispatcher.stop()
            return {"events": float(total), "seconds": elapsed, "per_second": total / elapsed}
        finally:
            srv.shutdown()
            srv.server_close()
            storage.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writes", type=int, default=600, help="SCIM writes per timed round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per side (outbox on / off)")
    p.add_argument("--events", type=int, default=5000, help="events to dispatch (plus 2,001 on one group)")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="PostgreSQL admin URL ('' to skip PostgreSQL)")
    args = p.parse_args(argv)
    kinds = ["sqlite"] + (["postgresql"] if args.pg else [])
    run: dict[str, Callable[[str], dict[str, float]]] = {
        "write": lambda k: bench_writes(k, args.pg, args.writes, args.rounds),
        "dispatch": lambda k: bench_dispatch(k, args.pg, args.events),
    }
    for kind in kinds:
        w = run["write"](kind)
        print(f"{kind:<10} SCIM write  with outbox {w['with_ms']:.2f} ms  without {w['without_ms']:.2f} ms  "
              f"overhead {w['overhead_pct']:+.1f}%  (outbox code inside the transaction: {w['inside_ms']:.3f} ms "
              f"= {w['inside_ms'] / w['with_ms'] * 100:.1f}% of a write)", flush=True)
        d = run["dispatch"](kind)
        print(f"{kind:<10} dispatch   {d['events']:.0f} events in {d['seconds']:.1f} s  = {d['per_second']:.0f} "
              f"events/s", flush=True)


if __name__ == "__main__":
    main()
