"""Engine faults (issue 6): a target that fails about 30 % of requests — 500s, 429s, timeouts and connection
resets — and a directory with users, managers and groups. After enough cycles the target equals the source
exactly: every in-scope user exactly once with the mapped values, every manager, every membership; no
duplicate account (a POST that timed out is matched again before it is retried, ERR-3e).

Scale: ``SCIMGRIP_RELIABILITY_SCALE`` (default 1) multiplies the directory size.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scimgrip.engine.config import load_job_config
from scimgrip.engine.cycle import Engine
from scimgrip.engine.target import ScimTarget
from scimgrip.storage.sql.engine_store import open_engine_store
from tests.engine.faulty_target import FaultyTarget
from tests.engine.test_cycle_catalogue import MemorySource

SCALE = int(os.environ.get("SCIMGRIP_RELIABILITY_SCALE", "1"))
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyTarget]:
    target = FaultyTarget(tmp_path_factory.mktemp("flaky")).start()
    try:
        yield target
    finally:
        target.stop()


def directory(n: int) -> MemorySource:
    src = MemorySource()
    for i in range(n):
        extra = {"manager": f"u{i // 5}"} if i >= 5 else {}
        src.user(f"u{i}", f"user{i}@flaky.example", givenName=f"Given{i}", surname=f"Sur{i}",
                 mail=f"user{i}@flaky.example", department=f"D{i % 4}", **extra)
    for g in range(4):
        src.group(f"g{g}", f"Flaky group {g}", [f"u{i}" for i in range(n) if i % 4 == g])
    return src


def snapshot(target: FaultyTarget) -> tuple[list[dict], list[dict]]:
    with httpx.Client(base_url=target.url, headers={"Authorization": f"Bearer {target.token}"}, timeout=30) as c:
        users = c.get("/Users", params={"count": 1000}).json()["Resources"]
        groups = c.get("/Groups", params={"count": 1000}).json()["Resources"]
    return users, groups


@pytest.mark.parametrize("use_bulk", ["never", "always"])
def test_flaky_target_converges_without_duplicates(flaky: FaultyTarget, tmp_path: Path, use_bulk: str) -> None:
    """Single requests and /Bulk (whose per-operation results go to escrow like single requests would)."""
    n = 60 * SCALE
    flaky.faults.clear()
    src = directory(n)
    rng = random.Random(2026)
    # Bulk sends ~30x fewer requests (a BulkRequest carries up to 100 writes): each fails more often, so that a
    # run still meets a dozen faults or more, BulkRequests among them
    probability = 0.085 if use_bulk == "never" else 0.15
    if use_bulk != "never":   # at least two BulkRequests meet a fault, whatever the dice say
        flaky.faults.add("delay", method="POST", path="^/Bulk$", times=1, delay=0.6)
        flaky.faults.add("status", method="POST", path="^/Bulk$", times=1, status=500)
    for kind, kw in (("status", {"status": 500}), ("status", {"status": 429, "retry_after": "0"}),
                     ("delay", {"delay": 0.6}), ("reset", {})):
        flaky.faults.add(kind, times=None, probability=probability, rng=rng, **kw)
    store = open_engine_store(f"sqlite:///{tmp_path / 'engine.db'}")
    store.create_job("flaky", "{}", "fp")
    cfg = load_job_config(f"source: {{kind: file, path: unused.json}}\n"
                          f"target: {{base_url: {flaky.url!r}, token: x, retries: 1}}\n")
    clock_now = [dt.datetime.now(dt.UTC)]
    tried: list[str] = []
    failures_per_cycle = []
    try:
        for cycle in range(15):
            target = ScimTarget(flaky.url, flaky.token, concurrency=4, timeout=0.4, max_retries=1,
                                backoff_base=0.01, use_bulk=use_bulk)
            engine = Engine("flaky", cfg, store, src, target, clock=lambda: clock_now[0])
            try:
                report = engine.run_cycle(initial=(cycle == 0) or None)
            finally:
                target.close()
            failed = [r for r in report.records if r.status == "failure"]
            failures_per_cycle.append(len(failed))
            tried.append(f"cycle {cycle}: {len(report.records)} records, {len(failed)} failures "
                         f"({collections.Counter(r.reason for r in failed)})")
            clock_now[0] += dt.timedelta(days=1)   # every escrow is due again
            if cycle >= 2 and not failed and failures_per_cycle[-2] == 0:
                break
        faults_fired = sum(f.fired for f in flaky.faults.faults)
        print("\n".join(tried), f"\n{faults_fired} faults fired")
        bulk_faults = [s for s in flaky.faults.requests("POST", "^/Bulk$")
                       if s.status != 200 or s.t_end is None or s.t_end - s.t > 0.5]
        flaky.faults.clear()
        # Bulk sends ~30x fewer requests, so fewer faults fire even at the higher probability (observed 11-136)
        assert faults_fired > (20 if use_bulk == "never" else 8), "the target did not misbehave enough"
        assert (use_bulk == "never") != bool(bulk_faults), "no BulkRequest met a fault"
        users, groups = snapshot(flaky)
    finally:
        store.close()
    # exactly the source, no duplicates
    names = collections.Counter(u["userName"] for u in users)
    assert all(c == 1 for c in names.values())
    assert set(names) == {f"user{i}@flaky.example" for i in range(n)}, tried
    by_name = {u["userName"]: u for u in users}
    id_of = {i: by_name[f"user{i}@flaky.example"]["id"] for i in range(n)}
    for i in range(n):
        u = by_name[f"user{i}@flaky.example"]
        assert u["name"] == {"givenName": f"Given{i}", "familyName": f"Sur{i}"}
        assert u["emails"] == [{"type": "work", "value": f"user{i}@flaky.example"}]
        assert u["active"] is True
        if i >= 5:
            assert u[ENT]["manager"]["value"] == id_of[i // 5], (i, u.get(ENT))
    assert sorted(g["displayName"] for g in groups) == [f"Flaky group {g}" for g in range(4)]
    for g in groups:
        k = int(g["displayName"].rsplit(" ", 1)[1])
        assert sorted(m["value"] for m in g.get("members", [])) == sorted(id_of[i] for i in range(n) if i % 4 == k)
