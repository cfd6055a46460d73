"""scim2-tester (``scim2 --url … test``, PyPI) against a real ``scimgrip serve``: every check must pass."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.server.conftest import Server


def scim2_cli() -> list[str]:
    exe = shutil.which("scim2") or str(Path(sys.executable).with_name("scim2"))
    return [exe]


def test_scim2_tester_reports_every_check_passing(server: Server) -> None:
    t = server.tenant("tester")
    env = {**os.environ, "SCIM_CLI_HEADERS": f"Authorization: Bearer {t.token}", "NO_COLOR": "1",
           "COLUMNS": "200"}
    proc = subprocess.run([*scim2_cli(), "--url", t.url, "test", "--verbose"], capture_output=True, text=True,
                          env=env, timeout=300)
    output = proc.stdout + proc.stderr
    print(output[-6000:])
    successes = len(re.findall(r"SUCCESS", output))
    failures = re.findall(r"^.*\b(ERROR|CRITICAL|FAILURE)\b.*$", output, re.M)
    assert successes >= 130, output[-4000:]
    assert not failures, "\n".join(failures[:40])
    assert proc.returncode == 0, output[-4000:]
