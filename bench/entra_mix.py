"""The traffic of one Microsoft Entra provisioning cycle against one tenant, side by side with the peers.

Targets, measured one after the other in the same run (never at the same time, so they do not share the CPU):

* ``scimgrip-sqlite`` and ``scimgrip-postgresql``: ``scimgrip serve`` started here on loopback, on a fresh SQLite
  file and on a fresh PostgreSQL database (created and dropped here);
* ``scim2-server-strict``: the ``scim2-server`` command from PyPI, strict RFC (so it is sent the RFC forms of
  Entra's ``?aadOptscim062020`` mode: lower-case ops, JSON booleans, ``members[value eq …]`` removal, manager
  object);
* ``scim2-server-tolerant``: scim2-server with ``scim2_models.ScimPolicy`` tolerances (``bench/peers/``), sent
  Entra's default dialect like scimgrip;
* any ``--peer URL TOKEN`` (loopback only), sent Entra's default dialect.

scim2-server is installed into ``bench/.peers/venv`` from PyPI on first use (``--no-peers`` skips it).

The cycle, in phases (one operation per phase, so each gets a wall time and a requests/s figure): Test
Connection (``userName eq`` a random GUID, form-encoded), per user a ``userName eq`` match (zero results) and a
POST of Entra's TUT body, a GET by id, a PATCH in Entra's default dialect (capitalised ``Replace``,
``emails[type eq "work"].value``, ``name.*``, ``displayName``, enterprise ``employeeNumber``), the manager as a
bare string, a disable (``"False"``), group match and creation (with the ADSCIM URN and ``meta``), member adds
in chunks, group reads with ``excludedAttributes=members``, single member removes and re-adds on the full
groups, a ``count=100`` list page, and the deletes. Each phase runs sequentially (one keep-alive client) and
concurrently (``--concurrency`` connections, one thread each).

    .venv/bin/python bench/entra_mix.py                      # 1,000 users, 10 groups, all targets
    .venv/bin/python bench/entra_mix.py --users 20 --groups 2 --reps 10 --no-peers --db sqlite   # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Http,
    OpStats,
    Target,
    machine,
    peer_python,
    pg_available,
    q,
    scimgrip_database,
    start_scim2_server,
    start_scimgrip,
    table,
    workdir,
    write_json,
)

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ADSCIM_GROUP = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"
PATCHOP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

# operations whose figures are compared with the 1,215 req/s of scimgateway (landscape.md §5.3)
SIMPLE_OPS = ("test_connection", "user_match", "user_create", "user_get", "user_disable")


# -------------------------------------------------------------------------------------------------------------
# request bodies: Entra's default dialect, and the RFC forms for the strict peer
# -------------------------------------------------------------------------------------------------------------
def user_body(u: dict[str, Any], dialect: str) -> dict[str, Any]:
    """[TUT] "Create User" (entra-scim-wire.md §5.1)."""
    body: dict[str, Any] = {
        "schemas": [USER, ENTERPRISE],
        "externalId": u["ext"],
        "userName": u["upn"],
        "active": True,
        "displayName": u["display"],
        "emails": [{"primary": True, "type": "work", "value": u["upn"]}],
        "name": {"formatted": u["display"], "familyName": u["family"], "givenName": u["given"]},
        "roles": [],
        ENTERPRISE: {"employeeNumber": u["emp"], "department": "Engineering"},
    }
    if dialect == "entra":
        body["meta"] = {"resourceType": "User"}
    return body


def eq(attr: str, value: str) -> str:
    """``attr eq "value"``, form-encoded as Entra sends it (ESW §3)."""
    return q(f'{attr} eq "{value}"')


def patch(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCHOP], "Operations": list(ops)}


def op(dialect: str, name: str, path: str | None, value: Any = None) -> dict[str, Any]:
    o: dict[str, Any] = {"op": name.capitalize() if dialect == "entra" else name.lower()}
    if path is not None:
        o["path"] = path
    if value is not None:
        o["value"] = value
    return o


def user_update(u: dict[str, Any], dialect: str) -> dict[str, Any]:
    """COMPAT "Replace several attributes", default mode: one ``Replace`` per path."""
    return patch(
        op(dialect, "replace", "displayName", u["display"] + " (updated)"),
        op(dialect, "replace", 'emails[type eq "work"].value', "updated." + u["upn"]),
        op(dialect, "replace", "name.givenName", u["given"] + "x"),
        op(dialect, "replace", "name.familyName", u["family"] + "x"),
        op(dialect, "replace", f"{ENTERPRISE}:employeeNumber", u["emp"] + "9"),
    )


def manager_patch(manager_id: str, dialect: str) -> dict[str, Any]:
    """ESW §7.6: Entra sends the manager as a bare string; the RFC form is an object."""
    value: Any = manager_id if dialect == "entra" else {"value": manager_id}
    return patch(op(dialect, "add", f"{ENTERPRISE}:manager", value))


def disable_patch(dialect: str) -> dict[str, Any]:
    """ESW §5.7: ``"False"`` as a string in default mode."""
    return patch(op(dialect, "replace", "active", "False" if dialect == "entra" else False))


def group_body(g: dict[str, Any], dialect: str) -> dict[str, Any]:
    """[TUT] "Group Operations": created empty, with the ADSCIM URN and ``meta`` in default mode."""
    body: dict[str, Any] = {"schemas": [GROUP], "externalId": g["ext"], "displayName": g["name"]}
    if dialect == "entra":
        body["schemas"] = [GROUP, ADSCIM_GROUP]
        body["meta"] = {"resourceType": "Group"}
    return body


def members_add(ids: list[str], dialect: str) -> dict[str, Any]:
    if dialect == "entra":
        return patch(op(dialect, "add", "members", [{"$ref": None, "value": i} for i in ids]))
    return patch(op(dialect, "add", "members", [{"value": i} for i in ids]))


def member_remove(member_id: str, dialect: str) -> dict[str, Any]:
    """Default mode: ``Remove`` with a value list; flag mode: ``members[value eq "…"]`` (ESW §7.5)."""
    if dialect == "entra":
        return patch(op(dialect, "remove", "members", [{"value": member_id}]))
    return patch(op(dialect, "remove", f'members[value eq "{member_id}"]'))


# -------------------------------------------------------------------------------------------------------------
# phases
# -------------------------------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    items: list[Any]
    call: Callable[[Http, Any], tuple[str, str, Any, tuple[int, ...]]]   # item -> (method, path, body, ok statuses)
    after: Callable[[Any, int, bytes], None] | None = None               # item, status, body -> record state
    check: Callable[[bytes], bool] | None = None                         # extra check of a 2xx body


@dataclass
class MixResult:
    ops: dict[str, OpStats] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)
    total_requests: int = 0
    total_wall: float = 0.0


def run_phase(clients: list[Http], phase: Phase, result: MixResult, max_seconds: float,
              cpu: Callable[[], float | None] = lambda: None) -> None:
    n = len(clients)
    shares = [phase.items[i::n] for i in range(n)]
    per_worker = [OpStats() for _ in range(n)]
    deadline = time.perf_counter() + max_seconds
    stopped = [False]
    barrier = threading.Barrier(n + 1)

    def work(w: int) -> None:
        st = per_worker[w]
        barrier.wait()
        for item in shares[w]:
            if time.perf_counter() > deadline:
                stopped[0] = True
                return
            method, path, body, ok_statuses = phase.call(clients[w], item)
            status, raw, elapsed = clients[w].request(method, path, body)
            ok = status in ok_statuses and (phase.check is None or phase.check(raw))
            st.add(status, elapsed, ok, raw)
            if phase.after is not None and ok:
                phase.after(item, status, raw)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(n)]
    for t in threads:
        t.start()
    cpu0 = cpu()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = cpu()
    merged = OpStats(wall=wall, server_cpu=cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)
    for st in per_worker:
        merged.latencies += st.latencies
        merged.errors += st.errors
        for k, v in st.statuses.items():
            merged.statuses[k] = merged.statuses.get(k, 0) + v
        merged.first_error = merged.first_error or st.first_error
    result.ops[phase.name] = merged
    result.total_requests += len(merged.latencies)
    result.total_wall += wall
    if stopped[0]:
        result.truncated.append(phase.name)


def _zero_results(raw: bytes) -> bool:
    try:
        return json.loads(raw).get("totalResults") == 0
    except ValueError:
        return False


def entra_cycle(target: Target, concurrency: int, args: argparse.Namespace, label: str) -> MixResult:
    """One Entra cycle: phases in order, each with ``concurrency`` clients."""
    d = target.dialect
    rnd = random.Random(42)
    run = uuid.uuid4().hex[:8]
    users = [{"upn": f"bench.{label}.{run}.{i:06d}@contoso.example", "ext": str(uuid.UUID(int=rnd.getrandbits(128))),
              "display": f"Bench User {i}", "given": f"Given{i}", "family": f"Family{i}", "emp": f"E{i:06d}",
              "id": None} for i in range(args.users)]
    groups = [{"name": f"bench-{label}-{run}-group-{j}", "ext": str(uuid.uuid4()), "id": None}
              for j in range(args.groups)]
    clients = [target.client() for _ in range(concurrency)]
    result = MixResult()
    lock = threading.Lock()

    def set_id(obj: dict[str, Any], status: int, raw: bytes) -> None:
        with lock:
            obj["id"] = json.loads(raw)["id"]

    def run(phase: Phase) -> None:
        run_phase(clients, phase, result, args.max_phase_seconds, target.cpu)

    reps = args.reps
    run(Phase("test_connection", list(range(reps)),
              lambda c, _: ("GET", "/Users?filter=" + eq("userName", str(uuid.uuid4())), None, (200,)),
              check=_zero_results))
    run(Phase("user_match", users,
              lambda c, u: ("GET", "/Users?filter=" + eq("userName", u["upn"]), None, (200,)),
              check=_zero_results))
    run(Phase("user_create", users, lambda c, u: ("POST", "/Users", user_body(u, d), (201,)), after=set_id))
    live = [u for u in users if u["id"]]
    run(Phase("user_get", live, lambda c, u: ("GET", f"/Users/{u['id']}", None, (200,))))
    run(Phase("user_patch", live, lambda c, u: ("PATCH", f"/Users/{u['id']}", user_update(u, d), (200, 204))))
    pairs = [(u, live[i - 1]) for i, u in enumerate(live) if i > 0]
    run(Phase("user_manager", pairs,
              lambda c, p: ("PATCH", f"/Users/{p[0]['id']}", manager_patch(p[1]["id"], d), (200, 204))))
    run(Phase("user_disable", live, lambda c, u: ("PATCH", f"/Users/{u['id']}", disable_patch(d), (200, 204))))
    run(Phase("group_match", groups, lambda c, g: (
        "GET", "/Groups?excludedAttributes=members&filter=" + eq("displayName", g["name"]), None,
        (200,)), check=_zero_results))
    run(Phase("group_create", groups, lambda c, g: ("POST", "/Groups", group_body(g, d), (201,)), after=set_id))
    live_groups = [g for g in groups if g["id"]]
    ids = [u["id"] for u in live]
    chunks = [ids[i:i + args.chunk] for i in range(0, len(ids), args.chunk)]
    adds = [(g, ch) for ch in chunks for g in live_groups]
    run(Phase("group_add_members_chunk", adds,
              lambda c, a: ("PATCH", f"/Groups/{a[0]['id']}", members_add(a[1], d), (200, 204))))
    if live_groups:
        gets = [live_groups[i % len(live_groups)] for i in range(reps)]
        run(Phase("group_get_excl_members", gets,
                  lambda c, g: ("GET", f"/Groups/{g['id']}?excludedAttributes=members", None, (200,)),
                  check=lambda raw: b'"members"' not in raw))
        if ids:
            single = [(live_groups[i % len(live_groups)], ids[(i // len(live_groups)) % len(ids)])
                      for i in range(min(reps, len(ids) * len(live_groups)))]
            run(Phase("group_remove_member", single,
                      lambda c, s: ("PATCH", f"/Groups/{s[0]['id']}", member_remove(s[1], d), (200, 204))))
            run(Phase("group_add_member", single,
                      lambda c, s: ("PATCH", f"/Groups/{s[0]['id']}", members_add([s[1]], d), (200, 204))))
    pages = max(1, min(args.list_reps, reps))
    run(Phase("user_list_100", list(range(pages)),
              lambda c, i: ("GET", f"/Users?startIndex={1 + 100 * (i % 10)}&count=100", None, (200,))))
    run(Phase("user_delete", live, lambda c, u: ("DELETE", f"/Users/{u['id']}", None, (204,))))
    run(Phase("group_delete", live_groups, lambda c, g: ("DELETE", f"/Groups/{g['id']}", None, (204,))))
    for c in clients:
        c.close()
    return result


# -------------------------------------------------------------------------------------------------------------
# main
# -------------------------------------------------------------------------------------------------------------
def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"name": target.name, "dialect": target.dialect, **target.extra, "modes": {}}
    modes = [("sequential", 1)] + ([("concurrent", args.concurrency)] if args.concurrency > 1 else [])
    for mode, conc in modes:
        print(f"  {target.name}: {mode} ({conc} connection{'s' if conc > 1 else ''}) …", file=sys.stderr,
              flush=True)
        r = entra_cycle(target, conc, args, mode[:3])
        out["modes"][mode] = {
            "connections": conc,
            "cycle_req_per_s": round(r.total_requests / r.total_wall, 1) if r.total_wall else None,
            "requests": r.total_requests,
            "truncated_phases": r.truncated,
            "ops": {k: v.summary() for k, v in r.ops.items()},
        }
    if target.name.startswith("scimgrip") and args.reps:
        # the floor: uvicorn + Starlette + this client, no authentication, no database (GET /healthz)
        root = Http(target.base_url.split("/scim/")[0], target.token)
        st = OpStats()
        cpu0 = target.cpu()
        t0 = time.perf_counter()
        for _ in range(args.reps * 5):
            status, raw, elapsed = root.request("GET", "/healthz")
            st.add(status, elapsed, status == 200, raw)
        st.wall = time.perf_counter() - t0
        cpu1 = target.cpu()
        st.server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        root.close()
        out["floor_healthz"] = st.summary()
    out["rss"] = target.rss()
    return out


def report(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    ours = [r for r in results if r["name"].startswith("scimgrip")]
    peers = [r for r in results if r["name"].startswith("scim2-server")]
    for mode in ("sequential", "concurrent"):
        present = [r for r in results if mode in r["modes"]]
        if not present:
            continue
        conn = present[0]["modes"][mode]["connections"]
        lines.append(f"\n### {mode} ({conn} connection{'s' if conn > 1 else ''}): req/s (p50 / p99 ms)\n")
        ops = list(present[0]["modes"][mode]["ops"])
        headers = ["operation"] + [r["name"] for r in present]
        ratio_cols = [(o, p) for o in ours for p in peers if mode in o["modes"] and mode in p["modes"]]
        headers += [f"{o['name'].removeprefix('scimgrip-')}÷{p['name'].removeprefix('scim2-server-')}"
                    for o, p in ratio_cols]
        rows = []
        for name in ops + ["cycle"]:
            row: list[Any] = [name]
            for r in present:
                m = r["modes"][mode]
                if name == "cycle":
                    row.append(m["cycle_req_per_s"])
                    continue
                s = m["ops"].get(name)
                if not s or not s["count"]:
                    row.append("–")
                    continue
                err = f" [{s['errors']} err]" if s["errors"] else ""
                row.append(f"{s['req_per_s']} ({s['p50_ms']:.2f} / {s['p99_ms']:.2f}){err}")
            for o, p in ratio_cols:
                if name == "cycle":
                    a, b = o["modes"][mode]["cycle_req_per_s"], p["modes"][mode]["cycle_req_per_s"]
                else:
                    so, sp = o["modes"][mode]["ops"].get(name), p["modes"][mode]["ops"].get(name)
                    a = so["req_per_s"] if so and not so["errors"] else None
                    b = sp["req_per_s"] if sp and not sp["errors"] else None
                row.append(f"{a / b:.1f}×" if a and b else "–")
            rows.append(row)
        lines.append(table(headers, rows))
    seq = [r for r in results if "sequential" in r["modes"]]
    if seq:
        lines.append("\n### server CPU per request, sequential (ms; user + system of the server process tree)\n")
        ops = list(seq[0]["modes"]["sequential"]["ops"])
        rows = [[name] + [(r["modes"]["sequential"]["ops"].get(name) or {}).get("server_cpu_ms_per_req", "–")
                          for r in seq] for name in ops]
        lines.append(table(["operation"] + [r["name"] for r in seq], rows))
    floors = [[r["name"], r["floor_healthz"]["req_per_s"], r["floor_healthz"]["p50_ms"],
               r["floor_healthz"]["server_cpu_ms_per_req"]] for r in results if r.get("floor_healthz")]
    if floors:
        lines.append("\n### floor: GET /healthz (no auth, no database), sequential\n")
        lines.append(table(["target", "req/s", "p50 ms", "server CPU ms/req"], floors))
    rss = [[r["name"], round(r["rss"]["rss_kb"] / 1024, 1) if r.get("rss") else "–",
            round(r["rss"]["hwm_kb"] / 1024, 1) if r.get("rss") else "–"] for r in results]
    lines.append("\n### server memory after the runs\n")
    lines.append(table(["target", "RSS MB", "peak RSS MB"], rss))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=50, help="members per group PATCH while filling the groups")
    ap.add_argument("--reps", type=int, default=200,
                    help="Test Connections, group reads, single member removes/adds per cycle")
    ap.add_argument("--list-reps", type=int, default=20, help="GET /Users?count=100 pages per cycle")
    ap.add_argument("--concurrency", type=int, default=16, help="connections of the concurrent run (1: skip it)")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--workers", type=int, default=1, help="scimgrip worker processes")
    ap.add_argument("--rate-limit", choices=["off", "on"], default="off",
                    help="scimgrip's per-tenant rate limit: off (default; a policy, not a cost) or on with a limit "
                         "no run reaches (to measure its cost)")
    ap.add_argument("--no-peers", action="store_true", help="skip scim2-server (no install, no network)")
    ap.add_argument("--peer-kinds", default="strict,tolerant", help="scim2-server variants to run")
    ap.add_argument("--peer", nargs=2, action="append", default=[], metavar=("URL", "TOKEN"),
                    help="another SCIM base URL (loopback) + bearer token, sent Entra's default dialect")
    ap.add_argument("--max-phase-seconds", type=float, default=120.0, help="a phase stops taking work after this")
    ap.add_argument("--out", type=Path, help="JSON result path (default bench/results/entra_mix-<utc>.json)")
    ap.add_argument("--workdir", type=Path, help="keep databases and server logs here")
    args = ap.parse_args(argv)

    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in dbs and not pg_available():
        print("PostgreSQL not reachable: skipping scimgrip-postgresql", file=sys.stderr)
        dbs.remove("postgresql")
    results: list[dict[str, Any]] = []
    started = time.time()
    info = machine()
    with workdir(args.workdir) as wd:
        plans: list[Callable[[], Target]] = []
        for db in dbs:
            def make(db: str = db) -> Target:
                cleanup: list[Any] = []
                url = scimgrip_database(db, wd, cleanup)
                t = start_scimgrip(f"scimgrip-{db}", url, wd, workers=args.workers, rate_limit=args.rate_limit)
                t.cleanup += cleanup
                return t
            plans.append(make)
        if not args.no_peers:
            py = peer_python()
            assert py is not None
            for kind in [k.strip() for k in args.peer_kinds.split(",") if k.strip()]:
                plans.append(lambda kind=kind: start_scim2_server(kind, wd, py))
        for i, (url, token) in enumerate(args.peer):
            plans.append(lambda url=url, token=token, i=i: Target(f"peer{i + 1}", url.rstrip("/"), token, "entra"))
        for plan in plans:
            target = plan()
            try:
                print(f"measuring {target.name} at {target.base_url}", file=sys.stderr, flush=True)
                results.append(measure(target, args))
            finally:
                target.stop()
    data = {"benchmark": "entra_mix", "machine": info, "load_after": list(__import__("os").getloadavg()),
            "elapsed_s": round(time.time() - started, 1),
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "targets": results}
    text = report(results)
    path = write_json("entra_mix", data, args.out)
    print(f"# Entra mix — {info['utc']} — {info['nproc']} × {info['cpu']}, load {info['loadavg']}")
    print(f"users {args.users}, groups {args.groups}, chunk {args.chunk}, reps {args.reps}")
    print(text)
    print(f"\nJSON: {path}")
    bad = [(r["name"], m, k) for r in results if r["name"].startswith("scimgrip")
           for m, mv in r["modes"].items() for k, s in mv["ops"].items() if s["errors"]]
    if bad:
        print(f"scimgrip answered errors: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
