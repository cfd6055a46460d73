"""The server does not load what only some tenants use: pysaml2 (0.7 s and 20 MB to import) and joserfc (9 MB)
are imported on the first SAML or OIDC login, not at start (docs/performance.md, "server memory")."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_starts_without_the_sso_libraries() -> None:
    code = ("import sys, scimgrip.server.app, scimgrip.web.install, scimgrip.web.sso_views\n"
            "print(' '.join(m for m in ('saml2', 'joserfc', 'ldap3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"loaded at import: {out.strip()}"
