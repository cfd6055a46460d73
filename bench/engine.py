"""The provisioning engine end to end: an initial cycle of a generated directory into a local ``scimgrip serve``,
with and without ``/Bulk``, then an incremental cycle with N changed users (issue 3, provisioning-engine.md §16).

Per mode (``plain``: ``use_bulk: never``; ``bulk``: ``use_bulk: auto`` against scimgrip, which advertises Bulk):

1. a fresh ``scimgrip serve`` on loopback (rate limit off, a fresh SQLite file or PostgreSQL database) and a fresh
   engine state database (SQLite, in the work directory — a separate file, as a real engine runs next to, not
   inside, the application it provisions);
2. an initial cycle of the directory (``scope: all``: every enabled user and every group, with members and
   managers), through the same ``build_engine`` as ``scimgrip sync``;
3. an incremental cycle after changing ``--changes`` users in the directory file.

Figures per cycle: objects processed and objects/s, users/s, HTTP requests by method, wall time, p50/p99 request
latency (from the engine's own call records), and the CPU seconds of the server and of the engine process, so the
share of the time spent in each is visible. ``--profile DIR`` writes a pyinstrument HTML profile of the engine
side of each cycle (``pip install pyinstrument``).

    .venv/bin/python bench/engine.py                             # 10,000 users, 200 groups
    .venv/bin/python bench/engine.py --users 200 --groups 5      # smoke
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    machine,
    percentile,
    pg_available,
    scimgrip_database,
    start_scimgrip,
    table,
    workdir,
    write_json,
)

MODES = {"plain": "never", "bulk": "auto"}


class CallStats:
    """What the engine sent: counts by method and path kind, statuses and latencies (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.latencies: list[float] = []
            self.by_kind: collections.Counter[str] = collections.Counter()
            self.statuses: collections.Counter[str] = collections.Counter()

    def __call__(self, call: Any) -> None:
        kind = f"{call.method} {call.path.split('/')[1] if call.path.count('/') else call.path}"
        with self.lock:
            self.latencies.append(call.elapsed_ms)
            self.by_kind[kind] += 1
            self.statuses[str(call.status)] += 1

    def summary(self) -> dict[str, Any]:
        with self.lock:
            lat = sorted(self.latencies)
            return {"requests": len(lat), "by_kind": dict(sorted(self.by_kind.items())),
                    "statuses": dict(sorted(self.statuses.items())),
                    "p50_ms": round(percentile(lat, 50), 2) if lat else None,
                    "p99_ms": round(percentile(lat, 99), 2) if lat else None}


def job_yaml(directory: Path, base_url: str, token: str, use_bulk: str, concurrency: int) -> str:
    return (f"source: {{kind: file, path: {json.dumps(str(directory))}}}\n"
            f"target:\n  base_url: {json.dumps(base_url)}\n  token: {json.dumps(token)}\n"
            f"  use_bulk: {use_bulk}\n"
            f"  rate: {{per_second: 100000, burst: 1000, concurrency: {concurrency}}}\n"
            "scope: {mode: all}\n")


def change_users(directory: Path, n: int, round_: int) -> int:
    """Change ``n`` users' display names in the directory file (a new mtime, so the file source re-reads it)."""
    doc = json.loads(directory.read_text())
    users = [u for u in doc["users"] if u.get("accountEnabled") is not False and not u.get("softDeleted")]
    step = max(1, len(users) // max(1, n))
    changed = 0
    for u in users[::step][:n]:
        u["displayName"] = f"{u.get('displayName') or ''} ({round_})"
        changed += 1
    directory.write_text(json.dumps(doc))
    st = directory.stat()
    os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return changed


def run_cycle(name: str, store: Any, stats: CallStats, server: Any, profile_dir: Path | None,
              label: str) -> dict[str, Any]:
    from scimgrip.cli.engine import build_engine

    stats.reset()
    engine = build_engine(store, name, on_call=stats)
    profiler = None
    if profile_dir is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    cpu0, srv0 = time.process_time(), server.cpu()
    t0 = time.perf_counter()
    try:
        report = engine.run_cycle()
    finally:
        engine.target.close()
    wall = time.perf_counter() - t0
    cpu, srv = time.process_time() - cpu0, server.cpu() - srv0
    if profiler is not None and profile_dir is not None:
        profiler.stop()
        profile_dir.mkdir(parents=True, exist_ok=True)
        (profile_dir / f"engine-{label}.html").write_text(profiler.output_html())
        (profile_dir / f"engine-{label}.txt").write_text(profiler.output_text(show_all=False))
    counts = report.tally()
    objects = sum(n for k, n in counts.items() if not k.endswith(":skipped"))
    users = sum(1 for r in report.records if r.object_type == "User" and r.status == "success"
                and r.action != "other")
    failures = sum(n for k, n in counts.items() if k.endswith(":failure"))
    return {"kind": report.kind, "wall_s": round(wall, 3), "objects": objects, "users": users,
            "objects_per_s": round(objects / wall, 1), "users_per_s": round(users / wall, 1),
            "failures": failures, "counts": counts, "engine_cpu_s": round(cpu, 2), "server_cpu_s": round(srv, 2),
            **stats.summary()}


def run_mode(mode: str, directory: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from scimgrip.engine.config import load_job_config
    from scimgrip.storage.sql.engine_store import open_engine_store

    cleanup: list[Any] = []
    database = scimgrip_database(args.db, tmp, cleanup)
    server = start_scimgrip(f"scimgrip-{mode}", database, tmp, workers=args.workers)
    server.cleanup.extend(cleanup)
    store = open_engine_store(f"sqlite:///{tmp / f'engine-{mode}.db'}")
    stats = CallStats()
    try:
        text = job_yaml(directory, server.base_url, server.token, MODES[mode], args.concurrency)
        store.create_job("bench", text, load_job_config(text).mapping_fingerprint())
        profile = Path(args.profile) if args.profile else None
        initial = run_cycle("bench", store, stats, server, profile, f"{mode}-initial")
        print(f"  {mode}: initial {initial['objects']} objects in {initial['wall_s']} s", file=sys.stderr)
        changed = change_users(directory, args.changes, 1)
        incremental = run_cycle("bench", store, stats, server, profile, f"{mode}-incremental")
        print(f"  {mode}: incremental {incremental['objects']} objects in {incremental['wall_s']} s",
              file=sys.stderr)
        change_users(directory, 0, 0)   # (no-op write: keeps the file's shape for the next mode)
        return {"mode": mode, "use_bulk": MODES[mode], "changed_users": changed, "initial": initial,
                "incremental": incremental, "server": server.extra}
    finally:
        store.close()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=200)
    ap.add_argument("--changes", type=int, default=100, help="users changed before the incremental cycle")
    ap.add_argument("--modes", default="plain,bulk", help="comma-separated: plain (no /Bulk), bulk")
    ap.add_argument("--concurrency", type=int, default=8, help="the job's target.rate.concurrency")
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite", help="the server's database")
    ap.add_argument("--workers", type=int, default=1, help="scimgrip serve --workers")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", metavar="DIR", help="write pyinstrument HTML profiles of the engine side here")
    ap.add_argument("--out", type=Path, help="JSON output (default bench/results/engine-<time>.json)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes: {sorted(unknown)}")
    if args.db == "postgresql" and not pg_available():
        ap.error("PostgreSQL is not reachable (SCIMGRIP_BENCH_PG_URL)")
    from scimgrip.engine.sources.generate import generate_file

    results: list[dict[str, Any]] = []
    with workdir() as tmp:
        directory = tmp / "directory.json"
        facts = generate_file(directory, users=args.users, groups=args.groups, seed=args.seed)
        pristine = directory.read_bytes()
        for mode in modes:
            directory.write_bytes(pristine)
            results.append(run_mode(mode, directory, args, tmp))
    rows = []
    for r in results:
        for phase in ("initial", "incremental"):
            c = r[phase]
            rows.append([r["mode"], phase, c["objects"], c["objects_per_s"], c["users_per_s"], c["requests"],
                         round(c["requests"] / max(1, c["objects"]), 2), c["wall_s"], c["p50_ms"], c["p99_ms"],
                         c["engine_cpu_s"], c["server_cpu_s"], c["failures"]])
    print(table(["mode", "cycle", "objects", "objects/s", "users/s", "requests", "req/object", "wall s",
                 "p50 ms", "p99 ms", "engine CPU s", "server CPU s", "failures"], rows))
    data = {"benchmark": "engine", "machine": machine(), "directory": facts,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "results": results}
    path = write_json("engine", data, args.out)
    print(f"\nJSON: {path}")
    return 0 if all(r[p]["failures"] == 0 for r in results for p in ("initial", "incremental")) else 1


if __name__ == "__main__":
    sys.exit(main())
