"""Playwright for Python driving Debian's chromium (Playwright's own browser download cannot work here).

Browser tests skip, with the reason printed, when ``/usr/bin/chromium`` (or ``SCIMGRIP_CHROMIUM``) is missing.
``SCIMGRIP_SCREENSHOTS=1`` saves screenshots of the main pages into ``docs/screenshots/`` (CI leaves them be).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("SCIMGRIP_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        reason = f"browser tests skipped: no chromium at {CHROMIUM} (apt-get install chromium)"
        print(reason)
        pytest.skip(reason, allow_module_level=True)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "browser tests skipped: the playwright package is not installed (pip install -e '.[test]')"
        print(reason)
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def screenshot(page: Any, name: str) -> None:
    """Save ``docs/screenshots/<name>.png`` when SCIMGRIP_SCREENSHOTS=1."""
    if os.environ.get("SCIMGRIP_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
