"""The layers stay visible: the protocol core imports no I/O or framework, and lower layers never import
higher ones (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "scimgrip"

# package -> scimgrip packages and third-party modules it must not import
FORBIDDEN: dict[str, set[str]] = {
    "scim": {"scimgrip.storage", "scimgrip.service", "scimgrip.server", "scimgrip.tenancy", "scimgrip.cli",
             "scimgrip.sso",
             "sqlalchemy", "starlette", "uvicorn", "alembic", "psycopg", "typer", "httpx", "socket", "sqlite3"},
    "storage": {"scimgrip.service", "scimgrip.server", "scimgrip.tenancy", "scimgrip.cli", "starlette", "scimgrip.sso",
                "scimgrip.events.api", "scimgrip.events.dispatcher", "scimgrip.events.sdk"},  # only events.outbox
    "tenancy": {"scimgrip.service", "scimgrip.server", "scimgrip.cli", "starlette", "sqlalchemy"},
    "service": {"scimgrip.server", "scimgrip.cli", "starlette", "sqlalchemy", "scimgrip.sso"},
    "server": {"scimgrip.cli", "sqlalchemy"},
    "events": {"scimgrip.server", "scimgrip.cli", "scimgrip.service"},
    # single sign-on is library code under the web layer: protocol cores, settings, linking via service/storage
    "sso": {"scimgrip.server", "scimgrip.console", "scimgrip.web", "scimgrip.cli", "scimgrip.engine",
            "scimgrip.events", "starlette", "uvicorn", "sqlalchemy"},
    # the engine is a SCIM *client*: it talks HTTP to any server and keeps its state behind engine.state
    "engine": {"scimgrip.server", "scimgrip.service", "scimgrip.tenancy", "scimgrip.cli", "scimgrip.storage",
               "scimgrip.events", "starlette", "sqlalchemy", "uvicorn"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package: str) -> None:
    offenders = []
    for path in sorted((SRC / package).rglob("*.py")):
        for mod in imports(path):
            if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(SRC)} imports {mod}")
    assert not offenders, "\n".join(offenders)
