"""Shared plumbing of the benchmark scripts: servers on loopback, a light keep-alive HTTP client, statistics,
machine facts, tables and JSON results.

Nothing here is imported by scimgrip itself. The client is ``http.client`` rather than httpx: on a 2-core machine
the client shares the CPU with the server, and httpx costs several times more per request than the stdlib.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PEERS_VENV = BENCH / ".peers" / "venv"
PEER_REQUIREMENTS = ["scim2-server==0.8.3", "scim2-models==0.12.3"]
PEER_TOKEN = "peer-secret"
PG_ADMIN_URL = os.environ.get("SCIMGRIP_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SCIMGRIP = [sys.executable, "-m", "scimgrip"]


# -------------------------------------------------------------------------------------------------------------
# HTTP
# -------------------------------------------------------------------------------------------------------------
class Http:
    """One keep-alive connection to one SCIM base URL (reconnects when the server closes)."""

    def __init__(self, base_url: str, token: str, timeout: float = 60.0) -> None:
        u = urllib.parse.urlsplit(base_url.rstrip("/"))
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"refusing a non-loopback target {base_url!r}: benchmarks run on loopback only")
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json",
                        "Accept": "application/scim+json"}
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, float]:
        """(status, body, seconds). ``path`` is relative to the base URL and already URL-encoded."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            conn = self._connect()
            t0 = time.perf_counter()
            try:
                conn.request(method, self.prefix + path, body=data, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                self.close()
                if attempt:
                    raise
                continue
            elapsed = time.perf_counter() - t0
            if resp.will_close:
                self.close()
            return resp.status, raw, elapsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def q(value: str) -> str:
    """Form-encode a query value like Entra does (``+`` for a space, ``%22`` for a double quote)."""
    return urllib.parse.quote_plus(value)


# -------------------------------------------------------------------------------------------------------------
# statistics
# -------------------------------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass
class OpStats:
    """Latencies of one operation; ``wall`` is the wall time of the phase it ran in (for requests/s)."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    wall: float = 0.0
    first_error: str | None = None
    server_cpu: float | None = None      # CPU seconds the server used during the phase (all its processes)

    def add(self, status: int, elapsed: float, ok: bool, body: bytes = b"") -> None:
        self.latencies.append(elapsed)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if not ok:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{status} {body[:300].decode(errors='replace')}"

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        n = len(lat)
        return {
            "count": n,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "req_per_s": round(n / self.wall, 1) if self.wall > 0 else None,
            "p50_ms": round(percentile(lat, 50) * 1000, 3) if n else None,
            "p99_ms": round(percentile(lat, 99) * 1000, 3) if n else None,
            "mean_ms": round(sum(lat) / n * 1000, 3) if n else None,
            "max_ms": round(lat[-1] * 1000, 3) if n else None,
            "wall_s": round(self.wall, 3),
            "server_cpu_ms_per_req": round(self.server_cpu / n * 1000, 3) if self.server_cpu is not None and n
            else None,
            "first_error": self.first_error,
        }


# -------------------------------------------------------------------------------------------------------------
# processes
# -------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], url: str, headers: dict[str, str], log: Path,
                timeout: float = 60) -> None:
    deadline = time.time() + timeout
    u = urllib.parse.urlsplit(url)
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
            c.request("GET", u.path, headers=headers)
            status = c.getresponse().status
            c.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout}s: {log.read_text(errors='replace')[-2000:]}")


@dataclass
class Target:
    """A running SCIM service provider to measure."""

    name: str
    base_url: str               # SCIM base URL (…/scim/v2/tenants/x, …/v2)
    token: str
    dialect: str = "entra"      # "entra": Entra's default dialect; "rfc": the ?aadOptscim062020 forms
    proc: subprocess.Popen[bytes] | None = None
    cleanup: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Http:
        return Http(self.base_url, self.token)

    def cpu(self) -> float | None:
        return process_cpu(self.proc.pid) if self.proc is not None else None

    def rss(self) -> dict[str, int] | None:
        return process_rss(self.proc.pid) if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for fn in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                fn()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        todo += _children(p)
    return total


def process_rss(pid: int) -> dict[str, int]:
    """RSS and peak RSS (kB) of a process and all its descendants (uvicorn workers)."""
    total = {"rss_kb": 0, "hwm_kb": 0, "processes": 0}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total["rss_kb"] += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                total["hwm_kb"] += int(line.split()[1])
        total["processes"] += 1
        todo += _children(p)
    return total


# -- scimgrip ---------------------------------------------------------------------------------------------------
def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def pg_create_database(prefix: str = "scimgrip_bench") -> tuple[str, Any]:
    """A fresh PostgreSQL database: (url, drop function)."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name, drop


def scimgrip_cli(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*SCIMGRIP, *args, "--database", database], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"scimgrip {' '.join(args)} failed: {proc.stdout}\n{proc.stderr}")
    return proc


def create_tenant(database: str, name: str) -> tuple[str, str]:
    """(tenant name, token), made by TenantService as ``scimgrip tenant create`` does (also migrates the
    database); in-process, which saves a Python start per target."""
    from scimgrip.storage import open_storage
    from scimgrip.tenancy.service import TenantService

    storage = open_storage(database)
    try:
        tenant, issued = TenantService(storage).create_tenant(name)
    finally:
        storage.close()
    return tenant.name, issued.secret


# The per-tenant rate limit (server/limits.py, 100 req/s by default) is a policy, not a cost: a throughput
# benchmark switches it off. ``rate_limit="on"`` keeps the limiter running with a limit no run reaches, to
# measure what it costs per request.
RATE_LIMIT_ENV = {
    "off": {"SCIMGRIP_RATE_LIMIT_ENABLED": "false"},
    "on": {"SCIMGRIP_RATE_LIMIT_ENABLED": "true", "SCIMGRIP_RATE_LIMIT_RPS": "1000000000",
           "SCIMGRIP_RATE_LIMIT_BURST": "1000000000"},
}


def start_scimgrip(name: str, database: str, workdir: Path, *, tenant: str = "bench", token: str | None = None,
                   workers: int = 1, env: dict[str, str] | None = None, rate_limit: str = "off") -> Target:
    """``scimgrip serve`` on a free loopback port; a tenant is created through the CLI unless ``token`` is given."""
    env = {**RATE_LIMIT_ENV[rate_limit], **(env or {})}
    if token is None:
        tenant, token = create_tenant(database, tenant)
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    proc = subprocess.Popen([*SCIMGRIP, "serve", "--host", "127.0.0.1", "--port", str(port), "--database", database,
                             "--workers", str(workers), "--log-level", "warning"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}/scim/v2/tenants/{tenant}"
    _wait_ready(proc, base + "/ServiceProviderConfig", {"Authorization": f"Bearer {token}"}, log)
    return Target(name, base, token, "entra", proc, extra={"database": database.split("@")[-1], "workers": workers,
                                                           "rate_limit": rate_limit, "log": str(log)})


def scimgrip_database(kind: str, workdir: Path, cleanup: list[Any]) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'bench-{secrets.token_hex(3)}.db'}"
    if kind == "postgresql":
        url, drop = pg_create_database()
        cleanup.append(drop)
        return url
    raise ValueError(kind)


# -- scim2-server -----------------------------------------------------------------------------------------------
def peer_python(install: bool = True) -> Path | None:
    """Python of a venv with scim2-server: ``bench/.peers/venv`` (created on first use from PyPI), or the current
    interpreter when it already has scim2-server. None when unavailable and ``install`` is False."""
    py = PEERS_VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import scim2_server"], capture_output=True).returncode == 0:
        return py
    if subprocess.run([sys.executable, "-c", "import scim2_server"], capture_output=True).returncode == 0:
        return Path(sys.executable)
    if not install:
        return None
    print(f"creating {PEERS_VENV} with {' '.join(PEER_REQUIREMENTS)} (once) …", file=sys.stderr, flush=True)
    PEERS_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True, timeout=600)
    return py


def start_scim2_server(kind: str, workdir: Path, python: Path) -> Target:
    """scim2-server on loopback: ``strict`` (the stock ``scim2-server`` command) or ``tolerant`` (our ScimPolicy
    wrapper, bench/peers/scim2_tolerant.py)."""
    port = free_port()
    log = workdir / f"scim2-server-{kind}-{port}.log"
    if kind == "strict":
        cmd = [str(python), "-c", "from scim2_server.testserver.cli import main; main()",
               "--hostname", "127.0.0.1", "--port", str(port), "--bearer-token", PEER_TOKEN]
        dialect = "rfc"
    else:
        cmd = [str(python), str(BENCH / "peers" / "scim2_tolerant.py"), "--hostname", "127.0.0.1",
               "--port", str(port), "--bearer-token", PEER_TOKEN]
        dialect = "entra"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v2"
    _wait_ready(proc, base + "/ServiceProviderConfig", {"Authorization": f"Bearer {PEER_TOKEN}"}, log)
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('scim2-server'))"],
                             capture_output=True, text=True).stdout.strip()
    return Target(f"scim2-server-{kind}", base, PEER_TOKEN, dialect, proc,
                  extra={"version": version, "log": str(log)})


# -------------------------------------------------------------------------------------------------------------
# machine, output
# -------------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip(),
    }


def write_json(stem: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{stem}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        padded = (c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


@contextlib.contextmanager
def workdir(keep: Path | None = None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="scimgrip-bench-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
