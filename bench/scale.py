"""Scale: a million users in one tenant, a 100,000-member group, and what Entra's requests cost at that size.

1. **Bulk load** (not the API): the tenant and its token are made by ``TenantService``; users, their
   ``emails`` value rows, one group and its membership rows go straight into the storage layer's tables
   (``storage.sql.tables``) in bulk (SQLite: one transaction with ``synchronous=OFF``; PostgreSQL: ``COPY``), then
   ``ANALYZE``. Each document is what ``scim.resource.normalize_resource`` makes of Entra's TUT POST body and its
   index columns and value rows are derived as ``storage.sql.repository`` derives them (checked on the first
   user), so the server cannot tell these users from ones POSTed through the API.
2. **Over HTTP**, against ``scimgrip serve`` on loopback: ``userName``, ``externalId`` and
   ``emails[type eq "work"].value`` filters (p50/p99); on the big group, adding and removing one member
   (Entra's default dialect) and ``GET /Groups/{id}?excludedAttributes=members``; paging with ``startIndex``
   (first and last pages) and with cursors (every page, start versus end); the server's RSS.

    .venv/bin/python bench/scale.py --users 1000000 --members 100000           # SQLite and PostgreSQL
    .venv/bin/python bench/scale.py --users 2000 --members 500 --samples 20 --db sqlite   # smoke

``--keep`` leaves the loaded databases in place (their URLs are printed and written to the JSON);
``--reuse URL`` measures an already loaded database again without loading it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Http,
    OpStats,
    Target,
    create_tenant,
    machine,
    percentile,
    pg_available,
    pg_create_database,
    q,
    scimgrip_cli,
    start_scimgrip,
    table,
    workdir,
    write_json,
)

from scimgrip.scim.resource import normalize_resource  # noqa: E402
from scimgrip.scim.schema import DEFAULT_REGISTRY  # noqa: E402
from scimgrip.scim.tolerance import DEFAULT_POLICY  # noqa: E402
from scimgrip.storage.sql.repository import index_columns, value_rows  # noqa: E402
from scimgrip.storage.sql.tables import format_utc  # noqa: E402

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCHOP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
TENANT = "scale"
GROUP_NAME = "scale-all-staff"
BATCH = 20_000


# -------------------------------------------------------------------------------------------------------------
# the data
# -------------------------------------------------------------------------------------------------------------
def upn(i: int) -> str:
    return f"scale.user.{i:07d}@contoso.example"


def ext(i: int) -> str:
    return f"{i:08x}-5ca1-4e00-8000-{i:012x}"


def mail(i: int) -> str:
    return f"Scale.User.{i:07d}@mail.contoso.example"


def tut_body(i: int) -> dict[str, Any]:
    """Entra's TUT "Create User" body for user ``i`` (entra-scim-wire.md §5.1)."""
    return {"schemas": [USER, ENTERPRISE], "externalId": ext(i), "userName": upn(i), "active": True,
            "displayName": f"Scale User {i}", "emails": [{"primary": True, "type": "work", "value": mail(i)}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": f"Given{i} Family{i}", "familyName": f"Family{i}", "givenName": f"Given{i}"},
            "roles": [], ENTERPRISE: {"employeeNumber": f"{i:07d}", "department": f"Dept{i % 50}"}}


def stored_doc(i: int) -> dict[str, Any]:
    """What normalize_resource stores for tut_body(i) (checked against it in check_shapes)."""
    return {"externalId": ext(i), "userName": upn(i), "active": True, "displayName": f"Scale User {i}",
            "emails": [{"primary": True, "type": "work", "value": mail(i)}],
            "name": {"formatted": f"Given{i} Family{i}", "familyName": f"Family{i}", "givenName": f"Given{i}"},
            ENTERPRISE: {"employeeNumber": f"{i:07d}", "department": f"Dept{i % 50}"}}


def check_shapes() -> None:
    for i in (0, 12345):
        norm = normalize_resource(tut_body(i), DEFAULT_REGISTRY, "User", DEFAULT_POLICY).doc
        doc = stored_doc(i)
        assert norm == doc, (norm, doc)
        cols = index_columns("User", doc)
        assert cols == {"user_name": upn(i), "user_name_ci": upn(i).lower(), "external_id": ext(i),
                        "display_name": f"Scale User {i}", "display_name_ci": f"scale user {i}", "active": True}
        assert value_rows(doc) == [("emails", "work", mail(i), mail(i).lower())]


def user_rows(first_pk: int, tenant_id: int, users: int, seed: int = 7) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of (pk, id, user_name, user_name_ci, external_id, display_name, display_name_ci, doc, email)."""
    rng = random.Random(seed)
    batch: list[tuple[Any, ...]] = []
    dumps = json.dumps
    for i in range(users):
        rid = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        display = f"Scale User {i}"
        batch.append((first_pk + i, rid, upn(i), upn(i).lower(), ext(i), display, display.lower(),
                      dumps(stored_doc(i), separators=(",", ":")), mail(i)))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


# -------------------------------------------------------------------------------------------------------------
# loaders
# -------------------------------------------------------------------------------------------------------------
def _progress(done: int, total: int, t0: float) -> None:
    print(f"\r  loaded {done:,}/{total:,} users ({time.time() - t0:.0f}s)", end="", file=sys.stderr, flush=True)


def load_sqlite(path: str, tenant_id: int, users: int, members: int) -> dict[str, Any]:
    now = format_utc(dt.datetime.now(dt.UTC))
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA foreign_keys=OFF")
    con.execute("PRAGMA cache_size=-262144")
    t0 = time.time()
    con.execute("BEGIN IMMEDIATE")
    first = (con.execute("SELECT coalesce(max(pk), 0) FROM resources").fetchone()[0]) + 1
    done = 0
    ids: list[str] = []
    for batch in user_rows(first, tenant_id, users):
        con.executemany(
            "INSERT INTO resources (pk, tenant_id, resource_type, id, user_name, user_name_ci, external_id, "
            "display_name, display_name_ci, active, created, last_modified, version, doc) "
            "VALUES (?, ?, 'User', ?, ?, ?, ?, ?, ?, 1, ?, ?, 1, ?)",
            [(r[0], tenant_id, r[1], r[2], r[3], r[4], r[5], r[6], now, now, r[7]) for r in batch])
        con.executemany(
            "INSERT INTO resource_values (resource_pk, tenant_id, attr, type_ci, value, value_ci) "
            "VALUES (?, ?, 'emails', 'work', ?, ?)", [(r[0], tenant_id, r[8], r[8].lower()) for r in batch])
        ids += [r[1] for r in batch[: max(0, min(len(batch), members - done))]]
        done += len(batch)
        _progress(done, users, t0)
    gid = uuid.uuid4().hex
    doc = json.dumps({"displayName": GROUP_NAME}, separators=(",", ":"))
    con.execute("INSERT INTO resources (pk, tenant_id, resource_type, id, display_name, display_name_ci, created, "
                "last_modified, version, doc) VALUES (?, ?, 'Group', ?, ?, ?, ?, ?, 1, ?)",
                (first + users, tenant_id, gid, GROUP_NAME, GROUP_NAME, now, now, doc))
    con.executemany("INSERT INTO group_members (tenant_id, group_id, member_id, member_type) VALUES (?, ?, ?, 'User')",
                    [(tenant_id, gid, m) for m in ids])
    con.execute("COMMIT")
    print(file=sys.stderr)
    t1 = time.time()
    con.execute("ANALYZE")
    con.close()
    return {"load_s": round(t1 - t0, 1), "analyze_s": round(time.time() - t1, 1), "group_id": gid}


def load_postgresql(url: str, tenant_id: int, users: int, members: int) -> dict[str, Any]:
    import psycopg

    now = dt.datetime.now(dt.UTC)
    t0 = time.time()
    with psycopg.connect(url) as con:
        con.execute("SET synchronous_commit = off")
        first = con.execute("SELECT coalesce(max(pk), 0) FROM resources").fetchone()[0] + 1  # type: ignore[index]
        done = 0
        ids: list[str] = []
        with con.cursor() as cur:
            for batch in user_rows(first, tenant_id, users):
                with cur.copy("COPY resources (pk, tenant_id, resource_type, id, user_name, user_name_ci, "
                              "external_id, display_name, display_name_ci, active, created, last_modified, "
                              "version, doc) FROM STDIN") as cp:
                    for r in batch:
                        cp.write_row((r[0], tenant_id, "User", r[1], r[2], r[3], r[4], r[5], r[6], True, now, now,
                                      1, r[7]))
                with cur.copy("COPY resource_values (resource_pk, tenant_id, attr, type_ci, value, value_ci) "
                              "FROM STDIN") as cp:
                    for r in batch:
                        cp.write_row((r[0], tenant_id, "emails", "work", r[8], r[8].lower()))
                ids += [r[1] for r in batch[: max(0, min(len(batch), members - done))]]
                done += len(batch)
                _progress(done, users, t0)
            gid = uuid.uuid4().hex
            cur.execute("INSERT INTO resources (pk, tenant_id, resource_type, id, display_name, display_name_ci, "
                        "created, last_modified, version, doc) VALUES (%s, %s, 'Group', %s, %s, %s, %s, %s, 1, %s)",
                        (first + users, tenant_id, gid, GROUP_NAME, GROUP_NAME, now, now,
                         json.dumps({"displayName": GROUP_NAME})))
            with cur.copy("COPY group_members (tenant_id, group_id, member_id, member_type) FROM STDIN") as cp:
                for m in ids:
                    cp.write_row((tenant_id, gid, m, "User"))
            cur.execute("SELECT setval(pg_get_serial_sequence('resources', 'pk'), (SELECT max(pk) FROM resources))")
        con.commit()
    print(file=sys.stderr)
    t1 = time.time()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("VACUUM ANALYZE")
    return {"load_s": round(t1 - t0, 1), "analyze_s": round(time.time() - t1, 1), "group_id": gid}


def prepare(kind: str, wd: Path, users: int, members: int) -> tuple[str, str, dict[str, Any], Any]:
    """A loaded database: (url, token, load facts, drop function or None)."""
    drop = None
    if kind == "sqlite":
        path = wd / f"scale-{users}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    else:
        url, drop = pg_create_database("scimgrip_scale")
    _, token = create_tenant(url, TENANT)           # migrates; the token is issued by TenantService
    from scimgrip.storage import open_storage

    storage = open_storage(url)
    tenant = storage.get_tenant(TENANT)
    storage.close()
    assert tenant is not None
    print(f"loading {users:,} users ({members:,} in one group) into {kind} …", file=sys.stderr, flush=True)
    facts = load_sqlite(str(path), tenant.id, users, members) if kind == "sqlite" else \
        load_postgresql(url, tenant.id, users, members)
    return url, token, facts, drop


# -------------------------------------------------------------------------------------------------------------
# measurements
# -------------------------------------------------------------------------------------------------------------
def timed(c: Http, st: OpStats, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,),
          expect_total: int | None = None) -> bytes:
    status, raw, elapsed = c.request(method, path, body)
    good = status in ok
    if good and expect_total is not None:
        good = json.loads(raw).get("totalResults") == expect_total
    st.add(status, elapsed, good, raw)
    return raw


def _summary(st: OpStats, cpu: float | None = None) -> dict[str, Any]:
    s = st.summary()
    n = len(st.latencies)
    if cpu is not None and n:
        s["server_cpu_ms_per_req"] = round(cpu / n * 1000, 3)
    s.pop("req_per_s", None)
    s.pop("wall_s", None)
    return s


def measure(target: Target, users: int, members: int, args: argparse.Namespace) -> dict[str, Any]:
    c = target.client()
    rnd = random.Random(11)
    out: dict[str, Any] = {"ops": {}}
    samples = args.samples

    def run(name: str, fn: Any) -> None:
        st = OpStats()
        cpu0 = target.cpu()
        t0 = time.perf_counter()
        fn(st)
        st.wall = time.perf_counter() - t0
        cpu1 = target.cpu()
        out["ops"][name] = _summary(st, cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)
        s = out["ops"][name]
        print(f"  {name}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, errors {s['errors']}", file=sys.stderr,
              flush=True)

    picks = [rnd.randrange(users) for _ in range(samples)]
    # warm-up: the first requests pay for imports, statement compilation and cold pages
    for i in picks[:20]:
        c.request("GET", "/Users?filter=" + q(f'userName eq "{upn(i)}"'))
    run("filter_userName", lambda st: [timed(c, st, "GET", "/Users?filter=" + q(f'userName eq "{upn(i)}"'),
                                             expect_total=1) for i in picks])
    run("filter_externalId", lambda st: [timed(c, st, "GET", "/Users?filter=" + q(f'externalId eq "{ext(i)}"'),
                                               expect_total=1) for i in picks])
    run("filter_work_email", lambda st: [timed(
        c, st, "GET", "/Users?filter=" + q(f'emails[type eq "work"].value eq "{mail(i)}"'), expect_total=1)
        for i in picks])

    # the big group
    _, raw, _ = c.request("GET", "/Groups?excludedAttributes=members&filter=" + q(f'displayName eq "{GROUP_NAME}"'))
    gid = json.loads(raw)["Resources"][0]["id"]
    outsiders = sorted({rnd.randrange(members, users) for _ in range(samples)}) if users > members else []
    ids: list[str] = []
    for i in outsiders:
        _, raw, _ = c.request("GET", "/Users?attributes=id&filter=" + q(f'userName eq "{upn(i)}"'))
        ids.append(json.loads(raw)["Resources"][0]["id"])
    add = {"schemas": [PATCHOP], "Operations": [{"op": "Add", "path": "members", "value": []}]}
    rem = {"schemas": [PATCHOP], "Operations": [{"op": "Remove", "path": "members", "value": []}]}
    st_add, st_rem = OpStats(), OpStats()
    cpu0 = target.cpu()
    for uid in ids:
        add["Operations"][0]["value"] = [{"$ref": None, "value": uid}]
        timed(c, st_add, "PATCH", f"/Groups/{gid}", add, ok=(200, 204))
        rem["Operations"][0]["value"] = [{"value": uid}]
        timed(c, st_rem, "PATCH", f"/Groups/{gid}", rem, ok=(200, 204))
    cpu1 = target.cpu()
    pair_cpu = (cpu1 - cpu0) / 2 if cpu0 is not None and cpu1 is not None else None
    out["ops"]["group_add_member"] = _summary(st_add, pair_cpu)
    out["ops"]["group_remove_member"] = _summary(st_rem, pair_cpu)
    for k in ("group_add_member", "group_remove_member"):
        s = out["ops"][k]
        print(f"  {k}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, errors {s['errors']}", file=sys.stderr)
    run("group_get_excl_members", lambda st: [timed(c, st, "GET", f"/Groups/{gid}?excludedAttributes=members")
                                              for _ in range(samples)])
    run("group_match_excl_members", lambda st: [timed(
        c, st, "GET", "/Groups?excludedAttributes=members&filter=" + q(f'displayName eq "{GROUP_NAME}"'),
        expect_total=1) for _ in range(samples)])

    # paging
    size = args.page_size
    total_users = users
    k = args.edge_pages
    index: dict[str, Any] = {}
    for edge, starts in (("start", [1 + size * p for p in range(k)]),
                         ("end", [max(1, total_users - size * (k - p) + 1) for p in range(k)])):
        st = OpStats()
        for s in starts:
            timed(c, st, "GET", f"/Users?startIndex={s}&count={size}")
        index[edge] = _summary(st)
    index["end_over_start_p50"] = round(index["end"]["p50_ms"] / index["start"]["p50_ms"], 2)
    out["index_paging"] = index
    print(f"  index paging: start p50 {index['start']['p50_ms']} ms, end p50 {index['end']['p50_ms']} ms",
          file=sys.stderr, flush=True)

    pages: list[float] = []
    errors = 0
    seen = 0
    cursor: str | None = ""
    deadline = time.perf_counter() + args.max_walk_seconds
    t0 = time.perf_counter()
    cpu0 = target.cpu()
    while cursor is not None and time.perf_counter() < deadline:
        status, raw, elapsed = c.request("GET", f"/Users?count={size}&cursor={q(cursor)}" if cursor
                                         else f"/Users?count={size}&cursor")
        if status != 200:
            errors += 1
            break
        body = json.loads(raw)
        pages.append(elapsed)
        seen += len(body.get("Resources", []))
        cursor = body.get("nextCursor")
    walk = time.perf_counter() - t0
    cpu1 = target.cpu()
    first, last = sorted(pages[:k]), sorted(pages[-k:])
    out["cursor_paging"] = {
        "pages": len(pages), "users_seen": seen, "complete": cursor is None and errors == 0, "errors": errors,
        "walk_s": round(walk, 1), "users_per_s": round(seen / walk) if walk else None,
        "start_p50_ms": round(percentile(first, 50) * 1000, 2), "end_p50_ms": round(percentile(last, 50) * 1000, 2),
        "all_p50_ms": round(percentile(sorted(pages), 50) * 1000, 2),
        "all_p99_ms": round(percentile(sorted(pages), 99) * 1000, 2),
        "server_cpu_ms_per_page": round((cpu1 - cpu0) / len(pages) * 1000, 2)
        if pages and cpu0 is not None and cpu1 is not None else None,
    }
    cp = out["cursor_paging"]
    cp["end_over_start_p50"] = round(cp["end_p50_ms"] / cp["start_p50_ms"], 2) if cp["start_p50_ms"] else None
    print(f"  cursor walk: {cp['pages']} pages, {seen:,} users in {cp['walk_s']} s; start p50 {cp['start_p50_ms']} "
          f"ms, end p50 {cp['end_p50_ms']} ms", file=sys.stderr, flush=True)
    out["rss"] = target.rss()
    c.close()
    return out


def report(results: list[dict[str, Any]]) -> str:
    lines = []
    names = [r["db"] for r in results]
    ops = list(results[0]["ops"]) if results else []
    rows = []
    for op in ops:
        row: list[Any] = [op]
        for r in results:
            s = r["ops"][op]
            err = f" [{s['errors']} err]" if s["errors"] else ""
            row.append(f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}{err}")
            row.append(s.get("server_cpu_ms_per_req"))
        rows.append(row)
    headers = ["operation"]
    for n in names:
        headers += [f"{n} p50 / p99 ms", f"{n} server CPU ms/req"]
    lines.append(table(headers, rows))
    prow = []
    for r in results:
        ip, cp = r["index_paging"], r["cursor_paging"]
        rss = r.get("rss") or {}
        prow.append([r["db"], f"{ip['start']['p50_ms']:.1f} → {ip['end']['p50_ms']:.1f} ({ip['end_over_start_p50']}×)",
                     f"{cp['start_p50_ms']:.1f} → {cp['end_p50_ms']:.1f} ({cp['end_over_start_p50']}×)",
                     f"{cp['pages']} pages, {cp['users_seen']:,} users, {cp['walk_s']} s"
                     + ("" if cp["complete"] else " (incomplete)"),
                     round(rss.get("rss_kb", 0) / 1024, 1), round(rss.get("hwm_kb", 0) / 1024, 1)])
    lines.append("")
    lines.append(table(["db", "index page p50 ms: start → end", "cursor page p50 ms: start → end", "cursor walk",
                        "server RSS MB", "peak RSS MB"], prow))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--members", type=int, default=100_000, help="members of the big group (the first users)")
    ap.add_argument("--samples", type=int, default=500, help="requests per latency figure")
    ap.add_argument("--page-size", type=int, default=1000, help="count= of the paging runs")
    ap.add_argument("--edge-pages", type=int, default=20, help="pages timed at the start and at the end")
    ap.add_argument("--max-walk-seconds", type=float, default=300.0, help="bound of the cursor walk")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--keep", action="store_true", help="keep the loaded databases (URLs printed)")
    ap.add_argument("--reuse", action="append", default=[], metavar="URL",
                    help="measure an already loaded database (from --keep) instead of loading one")
    ap.add_argument("--load-only", action="store_true", help="load, print the URLs, measure nothing (implies --keep)")
    ap.add_argument("--workdir", type=Path, help="SQLite files and server logs here (default: a temp dir)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.members >= args.users:
        ap.error("--members must be smaller than --users (non-members are added and removed)")
    if args.load_only:
        args.keep = True
    check_shapes()
    info = machine()
    results: list[dict[str, Any]] = []
    keep_dir = args.workdir
    if args.keep and keep_dir is None:
        keep_dir = Path(__file__).resolve().parent / "results" / "scale-db"
    with workdir(keep_dir) as wd:
        jobs: list[tuple[str, str | None]] = [("postgresql" if u.startswith("postgresql") else "sqlite", u)
                                              for u in args.reuse]
        if not args.reuse:
            dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
            if "postgresql" in dbs and not pg_available():
                print("PostgreSQL not reachable: skipping it", file=sys.stderr)
                dbs.remove("postgresql")
            jobs = [(d, None) for d in dbs]
        for kind, url in jobs:
            drop = None
            facts: dict[str, Any] = {}
            if url is None:
                url, token, facts, drop = prepare(kind, wd, args.users, args.members)
            else:
                token = json.loads(scimgrip_cli("token", "issue", TENANT, "--json", database=url).stdout)["token"]
            entry: dict[str, Any] = {"db": kind, "url": url if args.keep or args.reuse else None, "load": facts}
            try:
                if args.load_only:
                    print(f"{kind}: {url}")
                    continue
                target = start_scimgrip(f"scimgrip-{kind}", url, wd, tenant=TENANT, token=token)
                try:
                    _, raw, _ = target.client().request("GET", "/Users?count=0")
                    users = json.loads(raw)["totalResults"]
                    members = args.members
                    entry["users"], entry["members"] = users, members
                    print(f"measuring {kind}: {users:,} users", file=sys.stderr, flush=True)
                    entry.update(measure(target, users, members, args))
                finally:
                    target.stop()
                results.append(entry)
            finally:
                if drop is not None and not args.keep:
                    drop()
    if args.load_only:
        return 0
    data = {"benchmark": "scale", "machine": info, "load_after": list(__import__("os").getloadavg()),
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "results": results}
    path = write_json("scale", data, args.out)
    print(f"# Scale — {info['utc']} — {info['nproc']} × {info['cpu']}, load {info['loadavg']}")
    print(f"users {args.users:,}, group members {args.members:,}, samples {args.samples}, page size {args.page_size}")
    print(report(results))
    print(f"\nJSON: {path}")
    bad = [(r["db"], k) for r in results for k, s in r["ops"].items() if s["errors"]]
    bad += [(r["db"], "cursor_paging") for r in results if not r["cursor_paging"]["complete"]
            and r["cursor_paging"]["errors"]]
    if bad:
        print(f"errors: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
