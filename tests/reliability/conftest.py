"""Shared pieces of the reliability suites (docs/reliability.md): real ``scimgrip serve`` processes on loopback,
one per module and backend (SQLite file, fresh PostgreSQL database), started in their own process group so a
test can SIGKILL the whole server (master and workers) at once.

``SCIMGRIP_RELIABILITY_SCALE`` (default 1) multiplies the rounds and sizes of every suite: CI runs the small
size; ``SCIMGRIP_RELIABILITY_SCALE=10 python -m pytest tests/reliability`` is the larger run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from scimgrip.storage import open_storage
from scimgrip.tenancy.service import TenantService
from tests.server.conftest import SCIMGRIP, cli, database, free_port  # noqa: F401 - `database` is a fixture

SCALE = max(1, int(os.environ.get("SCIMGRIP_RELIABILITY_SCALE", "1")))

NO_RATE_LIMIT = {"SCIMGRIP_RATE_LIMIT_ENABLED": "false"}   # suites that are not about the rate limit


@dataclass
class Tenant:
    name: str
    token: str
    token_id: str

    def url(self, base: str) -> str:
        return f"{base}/scim/v2/tenants/{self.name}"


def make_tenant(url: str, name: str) -> Tenant:
    """A tenant and its first token, made in-process (a CLI process costs seconds on a busy machine; the CLI
    itself is tested in tests/cli)."""
    storage = open_storage(url)
    try:
        tenant, issued = TenantService(storage).create_tenant(name)
    finally:
        storage.close()
    return Tenant(tenant.name, issued.secret, issued.record.id)


@dataclass
class Proc:
    base: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        """SIGKILL the whole server: master and every worker (no shutdown, no flush)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def spawn(url: str, tmp: Path, *, workers: int = 1, env: dict[str, str] | None = None) -> Proc:
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    with log_path.open("wb") as logf:
        proc = subprocess.Popen([*SCIMGRIP, "serve", "--port", str(port), "--database", url,
                                 "--workers", str(workers), "--log-level", "warning"],
                                stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                # with several workers, wait until each has started (each answers on the shared socket)
                return Proc(base, proc, log_path)
        except httpx.HTTPError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"server did not start: {log_path.read_text()}")


def client(base: str, tenant: Tenant, *, timeout: float = 30.0, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=tenant.url(base), timeout=timeout,
                        headers={"Authorization": f"Bearer {token or tenant.token}",
                                 "Content-Type": "application/scim+json"})


def report(title: str, **figures: object) -> None:
    """Each suite prints what it tried and what held (visible with ``pytest -s`` and in failure output)."""
    print(f"\n[reliability] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
