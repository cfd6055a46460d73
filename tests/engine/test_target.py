"""``ScimTarget`` (engine/target.py): happy paths against a real ``scimgrip serve`` on loopback, and the ERR/GRP
rules against :mod:`tests.engine.faulty_target` (T-ERR-1/2/3, T-GRP-2, rate limit, concurrency, keep-alive)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from scimgrip.engine.target import (
    MASK,
    CallRecord,
    ScimTarget,
    TargetError,
    call_context,
    eq_filter,
    parse_retry_after,
)
from tests.engine.faulty_target import Faults, FaultyTarget
from tests.server.conftest import TenantHandle, start_server, stop_server, uid


class Calls:
    """An ``on_call`` hook that keeps every record (thread-safe)."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self.lock = threading.Lock()

    def __call__(self, record: CallRecord) -> None:
        with self.lock:
            self.records.append(record)

    def of(self, method: str, path_part: str = "") -> list[CallRecord]:
        with self.lock:
            return [r for r in self.records if r.method == method and path_part in r.path]


class Sleeps:
    """An injected ``sleep`` that records the delays and sleeps for real only briefly."""

    def __init__(self, real: bool = True) -> None:
        self.delays: list[float] = []
        self.real = real

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.real:
            time.sleep(seconds)


def user(name: str | None = None, **extra: Any) -> dict[str, Any]:
    name = name or f"u-{uid()}@example.com"
    return {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "active": True,
            "externalId": name, **extra}


# -- a real scimgrip serve ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantHandle]:
    tmp = tmp_path_factory.mktemp("target-real")
    srv = start_server(f"sqlite:///{tmp / 'scimgrip.db'}", tmp)
    try:
        yield srv.tenant("acme")
    finally:
        stop_server(srv)


@pytest.fixture()
def calls() -> Calls:
    return Calls()


@pytest.fixture()
def target(real: TenantHandle, calls: Calls) -> Iterator[ScimTarget]:
    with ScimTarget(real.url, real.token, on_call=calls) as t:
        yield t


def test_service_provider_config_is_discovered_and_cached(target: ScimTarget, calls: Calls) -> None:
    assert target.supports_bulk and target.bulk_max_operations == 1000
    assert target.supports_filter and target.supports_patch and target.supports_cursor
    assert target.bulk_enabled
    target.service_provider_config()
    assert len(calls.of("GET", "/ServiceProviderConfig")) == 1


def test_create_query_get_patch_delete(target: ScimTarget, calls: Calls) -> None:
    name = f"o'brien+{uid()}&\"x\"@example.com"     # must survive filter quoting and form encoding (WIRE-4)
    created = target.create("Users", user(name, password="Secr3t!pass", displayName="Before"))
    uid_ = created["id"]
    assert created["userName"] == name
    found = target.query("Users", eq_filter("userName", name))
    assert [r["id"] for r in found] == [uid_]
    assert target.query("Users", eq_filter("userName", "nobody-" + uid())) == []
    assert calls.of("GET", "/Users")[0].params == {"filter": eq_filter("userName", name)}
    assert target.get("Users", uid_)["displayName"] == "Before"  # type: ignore[index]
    patched = target.patch("Users", uid_, [{"op": "replace", "path": "displayName", "value": "After"}])
    assert patched is not None and patched["displayName"] == "After"
    target.delete("Users", uid_)
    assert target.get("Users", uid_) is None
    with pytest.raises(TargetError) as err:
        target.delete("Users", uid_)
    assert err.value.status == 404 and err.value.detail
    post = calls.of("POST", "/Users")[0]
    assert post.status == 201 and post.attempt == 1 and post.elapsed_ms > 0
    assert "Secr3t" not in (post.request_body or "") and MASK in (post.request_body or "")


def test_call_context_is_copied_into_records(target: ScimTarget, calls: Calls) -> None:
    def work() -> None:
        call_context.set({"change_id": "chg-42"})
        target.get("Users", "does-not-exist")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    record = calls.of("GET", "/Users/does-not-exist")[0]
    assert record.status == 404 and record.context == {"change_id": "chg-42"}


def test_bulk_create_50_users(target: ScimTarget, calls: Calls) -> None:
    ops: list[dict[str, Any]] = [{"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": user()}
                                 for i in range(50)]
    results = target.bulk(ops)
    assert len(results) == 50 and {r["status"] for r in results} == {201}
    assert len(calls.of("POST", "/Bulk")) == 1
    for op, result in zip(ops, results, strict=True):
        assert target.query("Users", eq_filter("userName", op["data"]["userName"]))[0]["id"] in result["location"]


def test_bulk_splits_by_max_operations_and_resolves_bulk_ids(target: ScimTarget, calls: Calls) -> None:
    target.service_provider_config()
    target._spc = {**target._spc, "bulk": {"supported": True, "maxOperations": 20,  # type: ignore[dict-item]
                                           "maxPayloadSize": 1_048_576}}
    ops: list[dict[str, Any]] = [{"method": "POST", "path": "/Users", "bulkId": f"u{i}", "data": user()}
                                 for i in range(45)]
    ops.append({"method": "POST", "path": "/Groups", "bulkId": "g",
                "data": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": f"g-{uid()}",
                         "members": [{"value": "bulkId:u0"}, {"value": "bulkId:u44"}]}})
    results = target.bulk(ops)
    assert len(calls.of("POST", "/Bulk")) == 3 and len(results) == 46
    assert all(r["status"] == 201 for r in results)
    group = target.get("Groups", results[-1]["location"].rsplit("/", 1)[-1], attributes="members")
    assert group is not None
    expected = {results[0]["location"].rsplit("/", 1)[-1], results[44]["location"].rsplit("/", 1)[-1]}
    assert {m["value"] for m in group["members"]} == expected


def test_bulk_without_bulk_support_runs_single_requests(real: TenantHandle, calls: Calls) -> None:
    with ScimTarget(real.url, real.token, use_bulk="never", on_call=calls) as t:
        ops: list[dict[str, Any]] = [
               {"method": "POST", "path": "/Users", "bulkId": "a", "data": user()},
               {"method": "PATCH", "path": "/Users/bulkId:a",
                "data": {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                         "Operations": [{"op": "replace", "path": "displayName", "value": "Z"}]}},
               {"method": "DELETE", "path": "/Users/nope"}]
        results = t.bulk(ops)
    assert [r["status"] for r in results] == [201, 200, 404]
    assert not calls.of("POST", "/Bulk") and len(calls.of("PATCH")) == 1


def test_update_members_250_in_3_patches(target: ScimTarget, calls: Calls) -> None:
    results = target.bulk([{"method": "POST", "path": "/Users", "bulkId": f"m{i}", "data": user()}
                           for i in range(250)])
    ids = [r["location"].rsplit("/", 1)[-1] for r in results]
    group = target.create("Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                     "displayName": f"big-{uid()}"})
    assert target.update_members(group["id"], add=ids, remove=[]) == 3
    patches = calls.of("PATCH", "/Groups/")
    assert [r.status for r in patches] == [204, 204, 204]
    got = target.get("Groups", group["id"], attributes="members")
    assert got is not None and {m["value"] for m in got["members"]} == set(ids)
    assert target.get("Groups", group["id"]) is not None and "members" not in target.get("Groups", group["id"])  # type: ignore[operator]
    assert target.update_members(group["id"], add=[], remove=ids[:120]) == 2
    got = target.get("Groups", group["id"], attributes="members")
    assert got is not None and {m["value"] for m in got["members"]} == set(ids[120:])
    assert target.update_members(group["id"], add=[], remove=[]) == 0


def test_list_all_cursor_and_index_paging(target: ScimTarget, calls: Calls) -> None:
    target.bulk([{"method": "POST", "path": "/Users", "bulkId": f"l{i}", "data": user()} for i in range(120)])
    total = len(target.query("Users", 'userName pr', attributes="id", page_size=1000))
    assert total >= 120
    by_cursor = [r["id"] for r in target.list_all("Users", page_size=50, attributes="userName")]
    assert len(by_cursor) == total == len(set(by_cursor))
    cursor_gets = [r for r in calls.of("GET", "/Users") if r.path == "/Users"][1:]
    assert len(cursor_gets) == -(-total // 50)
    target._spc = {**target.service_provider_config(), "pagination": {"cursor": False, "index": True}}
    before = len(calls.of("GET", "/Users"))
    by_index = [r["id"] for r in target.list_all("Users", page_size=50)]
    assert sorted(by_index) == sorted(by_cursor)
    assert len(calls.of("GET", "/Users")) - before == -(-total // 50)


# -- the faulty target --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyTarget]:
    ft = FaultyTarget(tmp_path_factory.mktemp("faulty")).start()
    try:
        yield ft
    finally:
        ft.stop()


@pytest.fixture()
def faults(faulty: FaultyTarget) -> Iterator[Faults]:
    faulty.faults.clear()
    yield faulty.faults
    faulty.faults.clear()


def make(faulty: FaultyTarget, calls: Calls | None = None, **kw: Any) -> ScimTarget:
    kw.setdefault("backoff_base", 0.01)
    return ScimTarget(faulty.url, faulty.token, on_call=calls, **kw)


def seed_user(faulty: FaultyTarget) -> str:
    with make(faulty) as t:
        return str(t.create("Users", user())["id"])


def test_headers_and_keep_alive(faulty: FaultyTarget, faults: Faults) -> None:
    """WIRE-4 headers; one pool of ``concurrency`` kept-alive connections serves every call."""
    uid_ = seed_user(faulty)
    faults.clear()
    with make(faulty, concurrency=2) as t:
        def work() -> None:
            for _ in range(15):
                t.get("Users", uid_)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    seen = faults.requests("GET", "/Users/")
    assert len(seen) == 60 and all(s.status == 200 for s in seen)
    assert len(faults.connections()) <= 2
    h = seen[0].headers
    assert h["authorization"] == f"Bearer {faulty.token}"
    assert h["content-type"] == "application/scim+json" and "application/scim+json" in h["accept"]
    assert h["user-agent"].startswith("scimgrip/")


def test_t_err_1_429_pauses_every_thread_then_retries_same_request(faulty: FaultyTarget, faults: Faults) -> None:
    ids = [seed_user(faulty) for _ in range(4)]
    faults.clear()
    calls = Calls()
    with make(faulty, calls, concurrency=4) as t:
        t.service_provider_config()
        stop = threading.Event()

        def work(i: int) -> None:
            while not stop.is_set():
                t.get("Users", ids[i])
                time.sleep(0.01)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        time.sleep(0.3)
        faults.add("status", method="GET", path=r"^/Users/", status=429, retry_after="2", times=1)
        time.sleep(3.0)
        stop.set()
        for th in threads:
            th.join()
    throttled = [s for s in faults.requests() if s.status == 429]
    assert len(throttled) == 1
    t429 = throttled[0].t_end
    assert t429 is not None
    during = [s for s in faults.requests() if t429 + 0.05 < s.t < t429 + 1.9]
    assert during == [], f"{len(during)} requests reached the target during the pause"
    after = [s for s in faults.requests() if s.t >= t429 + 1.9]
    assert after and after[0].t < t429 + 3.0
    assert any(s.path == throttled[0].path and s.status == 200 for s in after)  # the same request, retried
    rec = [r for r in calls.records if r.status == 429]
    assert len(rec) == 1
    retried = [r for r in calls.records if r.path == rec[0].path and r.attempt == rec[0].attempt + 1]
    assert retried and retried[0].status == 200
    assert retried[0].elapsed_ms < 1000                  # the pause is not counted as request time


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = format_datetime(dt.datetime.fromtimestamp(time.time() + 10, tz=dt.UTC), usegmt=True)
    assert 8.0 < (parse_retry_after(when) or 0) <= 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_t_err_2_503_twice_then_success(faulty: FaultyTarget, faults: Faults) -> None:
    uid_ = seed_user(faulty)
    faults.add("status", method="GET", path=r"^/Users/", status=503, times=2)
    calls, sleeps = Calls(), Sleeps()
    with make(faulty, calls, sleep=sleeps) as t:
        assert t.get("Users", uid_) is not None
    assert [(r.attempt, r.status) for r in calls.of("GET", "/Users/")] == [(1, 503), (2, 503), (3, 200)]
    assert len(sleeps.delays) == 2 and all(0 <= d <= 0.02 for d in sleeps.delays)


def test_503_honours_retry_after(faulty: FaultyTarget, faults: Faults) -> None:
    faults.add("status", method="GET", path=r"^/Users$", status=503, retry_after="7", times=1)
    sleeps = Sleeps(real=False)
    with make(faulty, sleep=sleeps) as t:
        assert t.query("Users", eq_filter("userName", "x")) == []
    assert sleeps.delays == [7.0]


def test_t_err_3_500_forever_gives_up_after_max_retries(faulty: FaultyTarget, faults: Faults) -> None:
    faults.add("status", method="POST", path=r"^/Users$", status=500, times=None)
    calls, sleeps = Calls(), Sleeps()
    with make(faulty, calls, sleep=sleeps, max_retries=3) as t, pytest.raises(TargetError) as err:
        t.create("Users", user())
    assert err.value.status == 500 and err.value.detail == "injected 500"
    assert [r.attempt for r in calls.records] == [1, 2, 3, 4] and len(sleeps.delays) == 3
    assert len(faults.requests("POST")) == 4


def test_4xx_raise_at_once_with_scim_fields(faulty: FaultyTarget, faults: Faults) -> None:
    faults.add("status", method="POST", path=r"^/Users$", status=409, times=1)
    faults.add("status", method="DELETE", status=404, times=1)
    calls, sleeps = Calls(), Sleeps(real=False)
    with make(faulty, calls, sleep=sleeps) as t:
        with pytest.raises(TargetError) as err:
            t.create("Users", user())
        assert (err.value.status, err.value.scim_type, err.value.detail) == (409, "uniqueness", "injected 409")
        assert isinstance(err.value.body, dict) and err.value.body["status"] == "409"
        with pytest.raises(TargetError) as err:
            t.delete("Users", "whatever")
        assert err.value.status == 404
    assert len(calls.records) == 2 and sleeps.delays == []


def test_t_grp_2_413_halves_the_member_chunk(faulty: FaultyTarget, faults: Faults) -> None:
    with make(faulty) as t:
        res = t.bulk([{"method": "POST", "path": "/Users", "bulkId": f"m{i}", "data": user()} for i in range(260)])
        ids = [r["location"].rsplit("/", 1)[-1] for r in res]
        gid = t.create("Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                  "displayName": f"capped-{uid()}"})["id"]
    faults.clear()
    faults.member_cap = 100
    calls = Calls()
    with make(faulty, calls, members_per_patch=250) as t:
        n = t.update_members(gid, add=ids[:250], remove=[])
        statuses = [r.status for r in calls.of("PATCH")]
        assert statuses[:2] == [413, 413] and set(statuses[2:]) == {204}
        assert n == len(statuses) - 2 == 5          # 250 → 125 → 62 per PATCH
        assert all(s.members <= 100 for s in faults.requests("PATCH") if s.status == 204)
        got = t.get("Groups", gid, attributes="members")
        assert got is not None and {m["value"] for m in got["members"]} == set(ids[:250])
        before = len(calls.of("PATCH"))
        assert t.update_members(gid, add=ids[250:], remove=ids[:5]) == 1    # the halved size sticks: no 413
        assert [r.status for r in calls.of("PATCH")[before:]] == [204]
    faults.member_cap = 0
    with make(faulty, members_per_patch=4) as t, pytest.raises(TargetError) as err:
        t.update_members(gid, add=ids[:3], remove=[])
    assert err.value.status == 413
    assert [s.members for s in faults.requests("PATCH")][-3:] == [3, 2, 1]


def test_rate_limit_is_respected(faulty: FaultyTarget, faults: Faults) -> None:
    uid_ = seed_user(faulty)
    faults.clear()
    with make(faulty, rate_per_second=10, concurrency=2) as t:
        start = time.monotonic()

        def work() -> None:
            for _ in range(5):
                t.get("Users", uid_)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.monotonic() - start
    assert elapsed >= 1.75                      # (20 − burst 2) / 10 rps
    times = sorted(s.t for s in faults.requests("GET"))
    assert len(times) == 20
    assert all(times[i + 14] - times[i] >= 0.9 for i in range(len(times) - 14))  # no burst beyond the bucket


def test_concurrency_is_respected(faulty: FaultyTarget, faults: Faults) -> None:
    uid_ = seed_user(faulty)
    faults.clear()
    faults.add("delay", method="GET", path=r"^/Users/", delay=0.15, times=None)
    with make(faulty, concurrency=3) as t:
        threads = [threading.Thread(target=lambda: [t.get("Users", uid_) for _ in range(2)]) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert len(faults.requests("GET")) == 16
    assert faults.max_in_flight == 3
    assert len(faults.connections()) <= 3


def test_timeouts_retry_reads_but_not_creates(faulty: FaultyTarget, faults: Faults) -> None:
    uid_ = seed_user(faulty)
    faults.clear()
    faults.add("delay", method="GET", path=r"^/Users/", delay=1.0, times=1)
    calls = Calls()
    with make(faulty, calls, timeout=0.3) as t:
        assert t.get("Users", uid_) is not None
        assert [r.status for r in calls.records] == [None, 200] and "Timeout" in (calls.records[0].error or "")
        faults.add("delay", method="POST", path=r"^/Users$", delay=0.6, times=1)
        with pytest.raises(TargetError) as err:
            t.create("Users", user())
    assert err.value.status is None and err.value.ambiguous     # ERR-3e: re-run matching, then retry
    assert err.value.timed_out                                  # ... once it has had the time to land
    assert len(faults.requests("POST")) == 1
    faults.add("reset", method="POST", path=r"^/Users$", times=1)
    sleeps = Sleeps()
    with make(faulty, timeout=0.3, sleep=sleeps) as t:
        with pytest.raises(TargetError) as err:
            t.create("Users", user())
        assert err.value.ambiguous and not err.value.timed_out   # dropped: nothing left to wait for
        t.settle_unknown_outcome()
    assert sleeps.delays == [0.3]                               # as long again as the timeout


def test_connection_resets_are_retried(faulty: FaultyTarget, faults: Faults) -> None:
    uid_ = seed_user(faulty)
    faults.clear()
    faults.add("reset", method="GET", path=r"^/Users/", times=2)
    calls, sleeps = Calls(), Sleeps()
    with make(faulty, calls, sleep=sleeps) as t:
        assert t.get("Users", uid_) is not None
    assert [r.status for r in calls.records] == [None, None, 200] and len(sleeps.delays) == 2
    faults.add("reset", method="GET", times=None)
    with make(faulty, max_retries=1) as t, pytest.raises(TargetError) as err:
        t.get("Users", uid_)
    assert err.value.status is None and not err.value.ambiguous


def test_missing_service_provider_config_gives_defaults(faulty: FaultyTarget, faults: Faults,
                                                        tmp_path: Path) -> None:
    faults.add("status", method="GET", path=r"^/ServiceProviderConfigs?$", status=404, times=2)
    calls = Calls()
    with make(faulty, calls) as t:
        assert not t.supports_bulk and t.supports_filter and not t.supports_cursor and not t.bulk_enabled
        results = t.bulk([{"method": "POST", "path": "/Users", "data": user()}])
        ids = [u["id"] for u in t.list_all("Users", page_size=7)]
    assert results[0]["status"] == 201 and results[0]["response"]["id"] in ids
    assert not calls.of("POST", "/Bulk")
    assert [r.path for r in calls.records[:2]] == ["/ServiceProviderConfig", "/ServiceProviderConfigs"]


# -- ERR-3b: adaptive rate (AIMD) ---------------------------------------------------------------------------------
def _hammer(t: ScimTarget, n: int) -> None:
    for _ in range(n):
        t.request("GET", "/Users", params={"count": 0})


def test_err_3b_aimd_converges_below_the_targets_limit(faulty: FaultyTarget, faults: Faults) -> None:
    """A target that answers 429 above 40 requests/s; the client is configured for 400/s. Each 429 halves the
    rate, so after a handful of 429s every request goes through — without AIMD, most of them are refused."""
    faults.rate_limit, faults.rate_retry_after = 40, "0.02"
    with make(faulty, rate_per_second=400, burst=1, concurrency=1, adaptive=True) as t:
        _hammer(t, 30)
        assert t.rate is not None and t.rate <= 40
    adaptive_429 = sum(1 for s in faults.requests() if s.status == 429)
    assert 1 <= adaptive_429 <= 8
    faults.clear()
    faults.rate_limit, faults.rate_retry_after = 40, "0.02"
    with make(faulty, rate_per_second=400, burst=1, concurrency=1, adaptive=False) as t:
        _hammer(t, 30)
        assert t.rate == 400
    fixed_429 = sum(1 for s in faults.requests() if s.status == 429)
    assert fixed_429 > 2 * adaptive_429


def test_err_3b_aimd_additive_increase_per_minute(faulty: FaultyTarget, faults: Faults) -> None:
    """×0.5 per 429; +1 request/s per minute without one, up to the configured rate (fake clock)."""
    now = [1000.0]
    with make(faulty, rate_per_second=10, adaptive=True, clock=lambda: now[0], sleep=lambda s: None) as t:
        faults.add("status", method="GET", path="^/Users$", status=429, retry_after="0", times=2)
        _hammer(t, 1)
        assert t.rate == 2.5                      # two 429s: 10 → 5 → 2.5
        now[0] += 59
        _hammer(t, 1)
        assert t.rate == 2.5                      # not a minute yet
        now[0] += 2
        _hammer(t, 1)
        assert t.rate == 3.5
        now[0] += 180
        _hammer(t, 1)
        assert t.rate == 6.5
        now[0] += 3600
        _hammer(t, 1)
        assert t.rate == 10                       # capped at the configured rate
