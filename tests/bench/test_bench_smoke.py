"""The benchmarks at a tiny size, so they cannot rot: each script runs end to end and writes its JSON.

No timing is asserted. The scim2-server peer is left out (``--no-peers``): it is installed from PyPI on first
use, and this test must not need the network.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import pg_available

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_entra_mix_tiny(tmp_path: Path) -> None:
    out = tmp_path / "mix.json"
    proc = run("entra_mix.py", "--users", "8", "--groups", "2", "--chunk", "3", "--reps", "4", "--list-reps", "2",
               "--concurrency", "2", "--db", "sqlite", "--no-peers", "--out", str(out))
    data = json.loads(out.read_text())
    (target,) = data["targets"]
    assert target["name"] == "scimgrip-sqlite"
    for mode in ("sequential", "concurrent"):
        ops = target["modes"][mode]["ops"]
        assert {"test_connection", "user_create", "user_patch", "user_disable", "group_add_members_chunk",
                "group_get_excl_members", "user_delete"} <= set(ops)
        assert all(s["errors"] == 0 and s["count"] > 0 for s in ops.values()), ops
    assert "| operation" in proc.stdout


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_scale_tiny(db: str, tmp_path: Path) -> None:
    if db == "postgresql" and not pg_available():
        pytest.skip("PostgreSQL not reachable")
    out = tmp_path / "scale.json"
    run("scale.py", "--users", "300", "--members", "100", "--samples", "5", "--page-size", "50", "--edge-pages", "2",
        "--db", db, "--out", str(out))
    (result,) = json.loads(out.read_text())["results"]
    assert result["users"] == 300
    assert result["cursor_paging"]["complete"] and result["cursor_paging"]["users_seen"] == 300
    assert all(s["errors"] == 0 for s in result["ops"].values())
    assert result["rss"]["rss_kb"] > 0
