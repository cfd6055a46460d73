"""Tokens and abuse: secrets never stored or logged in plaintext, constant-time comparison, expired/revoked
tokens, the per-tenant rate limit (shared by the workers), the bad-token slowdown per client, header-size,
body-size and slow-body limits, and SQL injection through filters, sortBy and attribute names.
"""

from __future__ import annotations

import datetime as dt
import hmac
import inspect
import json
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from scimgrip.settings import Settings
from scimgrip.storage import open_storage
from scimgrip.storage.sql.tables import format_utc
from scimgrip.tenancy import tokens as token_module
from scimgrip.tenancy.service import TenantService
from tests.reliability.conftest import Proc, Tenant, cli, client, make_tenant, report, spawn

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
RPS, BURST, FAILS, DELAY, BODY_TIMEOUT, MAX_HEADER = 10, 10, 5, 0.3, 2, 8192
TIGHT = {"SCIMGRIP_RATE_LIMIT_RPS": str(RPS), "SCIMGRIP_RATE_LIMIT_BURST": str(BURST),
         "SCIMGRIP_AUTH_FAILURE_LIMIT": str(FAILS), "SCIMGRIP_AUTH_FAILURE_DELAY_SECONDS": str(DELAY),
         "SCIMGRIP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT), "SCIMGRIP_MAX_HEADER_BYTES": str(MAX_HEADER)}


# -- servers -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tight(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Tenant, Tenant]]:
    """Three workers with small limits, on each backend."""
    a, b = make_tenant(database, "abuse-a"), make_tenant(database, "abuse-b")
    srv = spawn(database, tmp_path_factory.mktemp("tight"), workers=3, env=TIGHT)
    try:
        yield srv, a, b
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Path, Tenant, Tenant]]:
    """Default settings on a SQLite file (the file and the log are grepped for tokens)."""
    tmp = tmp_path_factory.mktemp("plain")
    db = tmp / "scimgrip.db"
    url = f"sqlite:///{db}"
    a, b = make_tenant(url, "plain-a"), make_tenant(url, "plain-b")
    srv = spawn(url, tmp, workers=2)
    try:
        yield srv, db, a, b
    finally:
        srv.stop()


def _status_of(srv: Proc, tenant: Tenant, token: str) -> int:
    with httpx.Client(timeout=30) as c:      # a fresh connection: any worker may answer
        return c.get(tenant.url(srv.base) + "/Users", headers={"Authorization": f"Bearer {token}"}).status_code


# -- tokens ------------------------------------------------------------------------------------------------------
def test_constant_time_comparison_on_hashes(tmp_path: Path) -> None:
    assert "hmac.compare_digest" in inspect.getsource(token_module.hashes_equal)
    storage = open_storage(f"sqlite:///{tmp_path / 'ct.db'}")
    try:
        svc = TenantService(storage)
        _, issued = svc.create_tenant("ct")
        with mock.patch.object(token_module.hmac, "compare_digest", wraps=hmac.compare_digest) as spy:
            tenant, record = svc.authenticate("ct", f"Bearer {issued.secret}")
        assert tenant.name == "ct"
        spy.assert_called_once()
        left, right = spy.call_args.args
        digest = token_module.hash_token(issued.secret).encode()
        assert left == right == digest, "compare_digest must compare the SHA-256 hashes, not the secret"
    finally:
        storage.close()


def test_expired_and_revoked_tokens_get_401(plain: tuple[Proc, Path, Tenant, Tenant]) -> None:
    srv, db, a, _ = plain
    url = f"sqlite:///{db}"
    short = json.loads(cli("token", "issue", a.name, "--json", "--expires-in", "1", database=url).stdout)
    spare = json.loads(cli("token", "issue", a.name, "--json", database=url).stdout)
    assert _status_of(srv, a, short["token"]) == 200
    assert _status_of(srv, a, spare["token"]) == 200
    cli("token", "revoke", a.name, spare["id"], database=url)
    revoked = [_status_of(srv, a, spare["token"]) for _ in range(4)]      # on every worker, at once
    past = format_utc(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    with sqlite3.connect(db) as conn:          # the day-long token reaches its expiry now
        assert conn.execute("UPDATE tokens SET expires = ? WHERE id = ?", (past, short["id"])).rowcount == 1
    expired = [_status_of(srv, a, short["token"]) for _ in range(4)]
    assert revoked == [401] * 4 and expired == [401] * 4, (revoked, expired)
    assert _status_of(srv, a, a.token) == 200
    report("tokens: expired/revoked", revoked=revoked, expired=expired)


def test_no_plaintext_token_in_database_or_log(plain: tuple[Proc, Path, Tenant, Tenant]) -> None:
    srv, db, a, b = plain
    url = f"sqlite:///{db}"
    extra = json.loads(cli("token", "issue", a.name, "--json", database=url).stdout)["token"]
    issued = [a.token, b.token, extra]
    base = a.url(srv.base)
    with httpx.Client(timeout=30) as c:
        for tok in issued:
            auth = {"Authorization": f"Bearer {tok}", "Content-Type": "application/scim+json"}
            c.get(base + "/Users", headers=auth)                                 # right or wrong tenant
            c.get(base + "/Users", headers={**auth, "Authorization": f"Bearer {tok}x"})   # near miss
            c.get(base + "/Users", params={"access_token": tok}, headers=auth)   # token in the query string
            c.get(base + "/Users", params={"filter": f'userName eq "{tok}"'}, headers=auth)
            c.post(base + "/Users", headers=auth, json={"schemas": [USER], "userName": tok[-12:],
                                                        "password": tok})      # password: never stored
            c.post(base + "/Users", headers=auth, json={"schemas": ["urn:bogus"], "token": tok, "note": tok})
            c.patch(base + f"/Users/{tok}", headers=auth,
                    json={"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": tok, "value": tok}]})
            c.post(base + "/Users/.search", headers=auth, json={"filter": f'externalId eq "{tok}"'})
    time.sleep(1.0)                     # the request log is flushed every 0.25 s
    srv.stop()                          # and on shutdown
    try:
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)] + [srv.log_path]
        blobs = {p.name: p.read_bytes() for p in files}
        with sqlite3.connect(db) as conn:
            dump = "\n".join(conn.iterdump()).encode()
            logged = conn.execute("SELECT count(*) FROM request_log").fetchone()[0]
        blobs["iterdump"] = dump
        assert logged > 0
        for tok in issued:
            secret = tok.removeprefix("sgt_").encode()
            for name, blob in blobs.items():
                assert secret not in blob, f"a Secret Token appears in plaintext in {name}"
        report("tokens: plaintext grep", tokens=len(issued), files=sorted(blobs), request_log_rows=logged,
               result="no token found")
    finally:
        restarted = spawn(url, db.parent, workers=2)
        srv.proc, srv.base, srv.log_path = restarted.proc, restarted.base, restarted.log_path


# -- rate limits ---------------------------------------------------------------------------------------------------
def test_default_limits_admit_an_entra_cycle(plain: tuple[Proc, Path, Tenant, Tenant]) -> None:
    s = Settings()
    assert s.rate_limit_enabled and s.rate_limit_rps >= 100 and s.rate_limit_burst >= 100
    srv, _, a, _ = plain
    rate, seconds = 50, 3                       # twice Entra's 25 rps gallery requirement, paced
    codes: Counter[int] = Counter()
    with client(srv.base, a) as c:
        start = time.monotonic()
        for i in range(rate * seconds):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            codes[c.get("/Users", params={"filter": f'userName eq "entra-{i}"'}).status_code] += 1
        spc = c.get("/ServiceProviderConfig").json()
    assert codes == Counter({200: rate * seconds}), codes
    assert "rate" not in json.dumps(spc).lower()        # nothing invented in the SPC
    report("rate limit: Entra-like load on defaults", requests=rate * seconds, rps=rate, status=dict(codes))


def test_rate_limit_per_tenant_shared_by_workers(tight: tuple[Proc, Tenant, Tenant]) -> None:
    srv, a, b = tight
    n, threads = 200, 12
    clients = [client(srv.base, a) for _ in range(threads)]      # 12 connections over 3 workers
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(threads) as ex:
            results = list(ex.map(lambda i: clients[i % threads].get("/Users"), range(n)))
    finally:
        for c in clients:
            c.close()
    elapsed = time.monotonic() - start
    codes = Counter(r.status_code for r in results)
    ceiling = BURST + RPS * elapsed + 3
    assert set(codes) == {200, 429}, codes
    assert BURST <= codes[200] <= ceiling, f"{codes[200]} admitted in {elapsed:.2f}s; shared limit allows {ceiling:.0f}"
    limited = [r for r in results if r.status_code == 429]
    assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
    assert all(r.json()["status"] == "429" and r.headers["content-type"].startswith("application/scim+json")
               for r in limited)
    with client(srv.base, b) as cb:             # another tenant is not limited by A's traffic
        assert cb.get("/Users").status_code == 200
    time.sleep(int(limited[-1].headers["retry-after"]))
    with client(srv.base, a) as ca:
        assert ca.get("/Users").status_code == 200
    report("rate limit: shared per tenant", requests=n, seconds=round(elapsed, 2), admitted=codes[200],
           limited=codes[429], ceiling=round(ceiling), per_worker_limits_would_admit=round(3 * (ceiling - 3)))


def test_bad_tokens_slowed_down_per_client(tight: tuple[Proc, Tenant, Tenant]) -> None:
    srv, a, _ = tight
    url = a.url(srv.base) + "/Users"
    bad = {"Authorization": "Bearer sgt_" + "A" * 43}
    attacker, other = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.8"}
    statuses, times = [], []
    for _ in range(FAILS + 3):
        with httpx.Client(timeout=30) as c:        # fresh connection each time: the count is shared by workers
            t = time.monotonic()
            r = c.get(url, headers={**bad, **attacker})
            times.append(time.monotonic() - t)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
    assert statuses == [401] * FAILS + [429] * 3, statuses
    assert min(times[FAILS:]) >= DELAY, times
    with httpx.Client(timeout=30) as c:
        assert c.get(url, headers={**bad, **other}).status_code == 401             # another client: unaffected
        good = {"Authorization": f"Bearer {a.token}"}
        assert c.get(url, headers={**good, **attacker}).status_code == 200         # a valid token still works
    report("bad tokens: per-client slowdown", statuses=statuses, delayed_s=round(min(times[FAILS:]), 2))


# -- size and time limits ------------------------------------------------------------------------------------------
def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            return s.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return b"<reset>"


def test_header_size_limit(tight: tuple[Proc, Tenant, Tenant]) -> None:
    srv, a, _ = tight
    port = int(srv.base.rsplit(":", 1)[1])
    ok = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEADER // 2) + b"\r\n\r\n")
    big = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEADER * 8) + b"\r\n\r\n")
    huge = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000_000 + b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok[:80]
    assert big.startswith(b"HTTP/1.1 431"), big[:80]
    assert huge.startswith(b"HTTP/1.1 431") or huge == b"<reset>", huge[:80]
    assert httpx.get(srv.base + "/healthz").status_code == 200
    report("header size", limit=MAX_HEADER, half=ok[:12].decode(), eightfold=big[:12].decode(),
           twenty_mb=huge[:12].decode(errors="replace"))


def test_body_size_limit(tight: tuple[Proc, Tenant, Tenant]) -> None:
    srv, a, _ = tight
    with client(srv.base, a) as c:
        r = c.post("/Users", content=b"{" + b" " * (Settings().max_payload_bytes + 10) + b"}")
        assert r.status_code == 413, r.text

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b" " * 32768
        r = c.post("/Users", content=chunks())           # chunked, no Content-Length
        assert r.status_code == 413, r.text


def test_slow_body_is_cut_off(tight: tuple[Proc, Tenant, Tenant]) -> None:
    srv, a, _ = tight
    port = int(srv.base.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 10)
    s.sendall(f"POST /scim/v2/tenants/{a.name}/Users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a.token}\r\n"
              "Content-Type: application/scim+json\r\nContent-Length: 4096\r\n\r\n{".encode())
    answer: list[bytes] = []
    started = time.monotonic()

    def trickle() -> None:
        try:
            while not answer and time.monotonic() - started < BODY_TIMEOUT + 8:
                s.sendall(b" ")
                time.sleep(0.2)
        except OSError:
            pass

    t = threading.Thread(target=trickle)
    t.start()
    time.sleep(0.5)
    with client(srv.base, a) as c:                     # meanwhile the server answers others at once
        t0 = time.monotonic()
        assert c.get("/ServiceProviderConfig").status_code == 200
        other = time.monotonic() - t0
    answer.append(s.recv(4096))
    took = time.monotonic() - started
    t.join()
    s.close()
    assert answer[0].startswith(b"HTTP/1.1 408"), answer[0][:200]
    assert b"connection: close" in answer[0].lower()
    assert BODY_TIMEOUT - 0.5 <= took <= BODY_TIMEOUT + 3, took
    assert other < 1.5, other
    report("slow body", timeout=BODY_TIMEOUT, cut_after_s=round(took, 2), other_request_s=round(other, 3))


# -- SQL injection -------------------------------------------------------------------------------------------------
INJECT_FILTERS = [
    'userName eq "x\' OR \'1\'=\'1"', 'userName eq "x\\" or 1=1 --"', "userName eq \"'; DROP TABLE resources; --\"",
    'userName co "%"', 'userName sw "_"', 'userName co "\\\\"', 'userName ew "%\'--"',
    'userName) or 1=1 -- eq "x"', 'userName eq "a" or 1=1', "userName eq 'x' or '1'='1'",
    'emails[value eq "a\' or 1=1 --"]', 'name.givenName; DROP TABLE resources eq "x"',
    'urn:ietf:params:scim:schemas:core:2.0:User:userName" or "1"="1 eq "x"', 'title gt 1; select 1',
    'meta.lastModified gt "2020-01-01\' or 1=1 --"', 'externalId pr or id eq "1 union select * from tokens"',
    'x" = "x', 'userName eq "\x00"', 'userName eq "' + "%" * 500 + '"',
]
INJECT_NAMES = [
    "userName; DROP TABLE resources", "userName desc", "(select 1)", "1", "id,userName", "userName--",
    "emails[type eq \"work\" or 1=1].value", "urn:x:y:z'; delete from tokens; --", "name.givenName\"",
    "userName) UNION SELECT token_hash FROM tokens --",
]


class Patient:
    """A client that waits out the tight server's rate limit (429 + Retry-After) and repeats the request."""

    def __init__(self, c: httpx.Client) -> None:
        self.c = c

    def _do(self, method: str, url: str, **kw: Any) -> httpx.Response:
        while True:
            r = self.c.request(method, url, **kw)
            if r.status_code != 429:
                return r
            time.sleep(int(r.headers["retry-after"]))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self._do("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self._do("POST", url, **kw)


def test_sql_injection_is_inert(tight: tuple[Proc, Tenant, Tenant]) -> None:
    srv, a, b = tight
    time.sleep(BURST / RPS + 1)          # let the tenant's bucket refill after the rate-limit test
    with client(srv.base, a) as ca_, client(srv.base, b) as cb_:
        ca, cb = Patient(ca_), Patient(cb_)
        ca.post("/Users", json={"schemas": [USER], "userName": "sqli-victim", "emails": [{"value": "v@a.example"}]})
        cb.post("/Users", json={"schemas": [USER], "userName": "other-tenant-user"})
        before_a, before_b = ca.get("/Users").json()["totalResults"], cb.get("/Users").json()["totalResults"]
        outcomes: Counter[str] = Counter()

        def check(r: httpx.Response, what: str) -> None:
            assert r.status_code in (200, 400), f"{what}: {r.status_code} {r.text[:300]}"
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                assert body["totalResults"] <= before_a, f"{what}: {body['totalResults']} results"
                assert "other-tenant-user" not in r.text and "token_hash" not in r.text
                assert not any("%" in x.get("userName", "") for x in body["Resources"])
                outcomes[f"200 with {body['totalResults']}"] += 1
            else:
                assert r.json()["status"] == "400"
                outcomes["400"] += 1

        for f in INJECT_FILTERS:
            check(ca.get("/Users", params={"filter": f}), f"filter {f!r}")
            check(ca.post("/Users/.search", json={"filter": f}), f".search filter {f!r}")
        for name in INJECT_NAMES:
            check(ca.get("/Users", params={"sortBy": name}), f"sortBy {name!r}")
            check(ca.get("/Users", params={"attributes": name}), f"attributes {name!r}")
            check(ca.get("/Users", params={"excludedAttributes": name}), f"excludedAttributes {name!r}")
            check(ca.get("/Users", params={"filter": f'{name} eq "x"'}), f"attribute name {name!r} in a filter")
        for f in ('userName co "%"', 'userName sw "_"', 'userName ew "%"'):
            r = ca.get("/Users", params={"filter": f})
            assert r.status_code == 200 and r.json()["totalResults"] == 0, f"{f}: LIKE wildcard not escaped"
        after_a, after_b = ca.get("/Users").json()["totalResults"], cb.get("/Users").json()["totalResults"]
        assert (after_a, after_b) == (before_a, before_b)
        assert ca.get("/Users", params={"filter": 'userName eq "sqli-victim"'}).json()["totalResults"] == 1
    status = _status_of(srv, a, a.token)
    while status == 429:                                # the tight rate limit: wait it out, then ask again
        time.sleep(BURST / RPS)
        status = _status_of(srv, a, a.token)
    assert status == 200                                # the tokens table is intact
    report("SQL injection", filters=len(INJECT_FILTERS) * 2, names=len(INJECT_NAMES) * 4, outcomes=dict(outcomes),
           data="unchanged")
