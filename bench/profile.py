"""Profile one hot request of ``scimgrip serve`` with py-spy and say where the time goes.

Starts a server on a fresh database (SQLite or PostgreSQL, loopback), sends one kind of request in a loop from
one keep-alive client while ``py-spy record`` samples the server, and prints the share of samples per frame,
restricted to the threads that serve requests (the event loop and the worker threads; the request-log writer and
the webhook dispatcher are reported separately).

    pip install py-spy                     # into any environment on PATH, or pass --py-spy
    .venv/bin/python bench/profile.py --op get --seconds 20 --db sqlite
    .venv/bin/python bench/profile.py --op disable --seconds 20 --db postgresql --raw /tmp/disable.txt
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Http, scimgrip_database, start_scimgrip, workdir  # noqa: E402

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCHOP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def request_for(op: str, n: int, uid: str, gid: str, member_ids: list[str]) -> tuple[str, str, Any]:
    if op == "get":
        return "GET", f"/Users/{uid}", None
    if op == "match":
        return "GET", f"/Users?filter=userName+eq+%22nobody{n}%40x.example%22", None
    if op == "create":
        return "POST", "/Users", {"schemas": [USER], "userName": f"p{n}@x.example", "meta": {"resourceType": "User"},
                                  "emails": [{"type": "work", "value": f"p{n}@x.example", "primary": True}]}
    if op == "disable":
        return "PATCH", f"/Users/{uid}", {"schemas": [PATCHOP], "Operations": [
            {"op": "Replace", "path": "active", "value": "False" if n % 2 else "True"}]}
    if op == "member":
        m = member_ids[(n // 2) % len(member_ids)]
        verb = "Remove" if n % 2 == 0 else "Add"
        return "PATCH", f"/Groups/{gid}", {"schemas": [PATCHOP], "Operations": [
            {"op": verb, "path": "members", "value": [{"value": m}]}]}
    if op == "group":
        return "GET", f"/Groups/{gid}?excludedAttributes=members", None
    raise ValueError(op)


# leaves of a thread waiting for work, not working (the executor's idle worker waits in SimpleQueue.get, a C
# call, so its leaf is the Python frame that called it)
IDLE_LEAVES = ("Condition.wait", "Queue.get", "select (selectors", "Event.wait", "sleep",
               "_worker (concurrent/futures/thread.py")


def aggregate(raw: Path, top: int) -> str:
    """Inclusive share per frame over the request-serving threads, from py-spy's ``raw`` (collapsed) output."""
    serving: collections.Counter[str] = collections.Counter()
    background: collections.Counter[str] = collections.Counter()
    n_serving = n_background = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = stack.split(";")
        if any(w in frames[-1] for w in IDLE_LEAVES):
            continue                      # a thread waiting for work, not working
        if any("requestlog" in f or "dispatcher" in f for f in frames):
            n_background += k
            for f in set(frames):
                background[f] += k
            continue
        n_serving += k
        for f in set(frames):
            serving[f] += k
    skip = ("threading.py", "runpy", "typer", "click", "__main__", "cli/main.py", "uvicorn/main.py",
            "uvicorn/server.py", "_compat.py", "runners.py")
    lines = [f"request-serving samples: {n_serving}; background threads (request log, webhooks): {n_background}"]
    for name, k in serving.most_common():
        if any(s in name for s in skip):
            continue
        lines.append(f"{k / max(n_serving, 1) * 100:5.1f}%  {name}")
        if len(lines) > top:
            break
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--op", choices=["get", "match", "create", "disable", "member", "group"], default="get")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    ap.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    ap.add_argument("--rate-limit", choices=["off", "on"], default="off")
    args = ap.parse_args(argv)
    with workdir() as wd:
        cleanup: list[Any] = []
        url = scimgrip_database(args.db, wd, cleanup)
        target = start_scimgrip(f"profile-{args.db}", url, wd, rate_limit=args.rate_limit)
        target.cleanup += cleanup
        try:
            c: Http = target.client()
            _, raw, _ = c.request("POST", "/Users", {"schemas": [USER], "userName": "profiled@x.example"})
            uid = json.loads(raw)["id"]
            member_ids = []
            for i in range(20):
                _, raw, _ = c.request("POST", "/Users", {"schemas": [USER], "userName": f"m{i}@x.example"})
                member_ids.append(json.loads(raw)["id"])
            _, raw, _ = c.request("POST", "/Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                                      "displayName": "profiled",
                                                      "members": [{"value": m} for m in member_ids]})
            gid = json.loads(raw)["id"]
            out = args.raw or wd / "pyspy.txt"
            assert target.proc is not None
            spy = subprocess.Popen([args.py_spy, "record", "-p", str(target.proc.pid), "-d", str(int(args.seconds)),
                                    "-r", str(args.rate), "-f", "raw", "-o", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
            n = 0
            lat: list[float] = []
            cpu0 = target.cpu()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds - 1.5:
                method, path, body = request_for(args.op, n, uid, gid, member_ids)
                status, _, elapsed = c.request(method, path, body)
                if status >= 400:
                    raise SystemExit(f"{method} {path} answered {status}")
                lat.append(elapsed)
                n += 1
            wall = time.perf_counter() - t0
            cpu = (target.cpu() or 0) - (cpu0 or 0)
            _, err = spy.communicate(timeout=args.seconds + 30)
            lat.sort()
            print(f"{args.op} on {args.db}: {n} requests, {n / wall:.0f} req/s, "
                  f"p50 {lat[len(lat) // 2] * 1000:.2f} ms, server CPU {cpu / n * 1000:.2f} ms/request")
            if out.exists():
                print(aggregate(out, args.top))
            else:
                print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
                return 1
        finally:
            target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
