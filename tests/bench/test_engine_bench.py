"""``bench/engine.py`` at a tiny size, so it cannot rot: both modes run end to end and write their JSON.

No timing is asserted; the request counts are, because they are what the engine's design promises (one request
per created user with ``/Bulk`` off, far fewer with it, one per changed user in the incremental cycle).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_engine_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    proc = subprocess.run([sys.executable, str(BENCH / "engine.py"), "--users", "120", "--groups", "4",
                           "--changes", "5", "--concurrency", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["directory"]["users"] == 120
    plain, bulk = data["results"]
    assert (plain["mode"], bulk["mode"]) == ("plain", "bulk")
    for r in (plain, bulk):
        assert r["initial"]["failures"] == r["incremental"]["failures"] == 0
        assert r["initial"]["kind"] == "initial" and r["incremental"]["kind"] == "incremental"
        assert r["incremental"]["counts"].get("update:success") == 5
    created = plain["initial"]["counts"]["create:success"]
    assert created == bulk["initial"]["counts"]["create:success"] > 100
    assert "POST Bulk" not in plain["initial"]["by_kind"] and plain["initial"]["by_kind"]["POST Users"] >= 100
    assert bulk["initial"]["by_kind"].get("POST Bulk", 0) >= 1 and bulk["initial"]["requests"] < created / 2
    assert plain["incremental"]["by_kind"] == {"PATCH Users": 5}
    assert "| plain" in proc.stdout and "| bulk" in proc.stdout
