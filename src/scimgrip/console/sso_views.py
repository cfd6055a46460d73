"""A tenant's single sign-on settings in the console: OpenID Connect (discovery URL, client, linking) and SAML
(IdP metadata pasted or uploaded, linking), the values to register at the IdP, and a "test sign-in" button.

Settings are validated and stored by :mod:`scimgrip.sso.config`; the client secret is write-only here (a blank
field keeps the stored one).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote

from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from scimgrip.console.pages import Ctx, Pages
from scimgrip.sso.config import OidcSettings, SamlSettings, SsoSettings, load_sso_settings, save_sso_settings
from scimgrip.sso.errors import SsoError

MAX_METADATA_BYTES = 1024 * 1024


class SsoSettingsViews:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def routes(self) -> list[Route]:
        v = self.pages.view
        return [
            Route("/t/{tenant}/sso", v("tenant", self.page), methods=["GET"]),
            Route("/t/{tenant}/sso/oidc", v("tenant", self.save_oidc), methods=["POST"]),
            Route("/t/{tenant}/sso/saml", v("tenant", self.save_saml), methods=["POST"]),
            Route("/t/{tenant}/sso/{protocol}/remove", v("tenant", self.remove), methods=["POST"]),
        ]

    def _page(self, ctx: Ctx, status: int = 200, **values: Any) -> Response:
        assert ctx.tenant is not None
        origin = self.pages.origin(ctx.request)
        base = f"{origin}/sso/{quote(ctx.tenant.name)}"
        try:
            settings = load_sso_settings(ctx.tenant)
        except SsoError:
            settings = SsoSettings()
        return self.pages.render(ctx, "sso_settings.html", status=status, settings=settings.to_public_json(),
                                 redirect_uri=f"{base}/oidc/callback", sp_entity_id=f"{base}/saml/metadata",
                                 acs_url=f"{base}/saml/acs", sign_in_url=f"{base}/login",
                                 app_url=f"{origin}/app/{quote(ctx.tenant.name)}", **values)

    def page(self, ctx: Ctx) -> Response:
        return self._page(ctx, saved=ctx.query("saved"))

    def _store(self, ctx: Ctx, settings: SsoSettings, which: str) -> Response:
        assert ctx.tenant is not None
        try:
            save_sso_settings(self.pages.storage, ctx.tenant, settings)
        except SsoError as exc:
            return self._page(ctx, status=400, error=exc.message, error_for=which)
        return RedirectResponse(f"/console/t/{quote(ctx.tenant.name)}/sso?saved={which}", status_code=303)

    def save_oidc(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        current = load_sso_settings(ctx.tenant)
        secret = ctx.field("client_secret") or (current.oidc.client_secret if current.oidc else None)
        tids = tuple(t.strip().lower() for t in ctx.field("allowed_tenant_ids").replace(",", " ").split()
                     if t.strip())
        oidc = OidcSettings(discovery_url=ctx.field("discovery_url"), client_id=ctx.field("client_id"),
                            client_secret=secret or None, scopes=ctx.field("scopes") or "openid profile email",
                            multi_tenant=ctx.field("multi_tenant") == "on", link_claim=ctx.field("link_claim") or "oid",
                            link_attribute=ctx.field("link_attribute") or "externalId",
                            jit=ctx.field("jit") == "on", allowed_tenant_ids=tids)
        return self._store(ctx, dataclasses.replace(current, oidc=oidc), "oidc")

    def save_saml(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None and ctx.form is not None
        current = load_sso_settings(ctx.tenant)
        xml = ctx.field("idp_metadata_xml")
        upload = ctx.form.get("metadata_file")
        if isinstance(upload, UploadFile) and upload.filename:
            data = upload.file.read(MAX_METADATA_BYTES + 1)
            if len(data) > MAX_METADATA_BYTES:
                return self._page(ctx, status=400, error="The metadata file is larger than 1 MiB.", error_for="saml")
            xml = data.decode("utf-8", "replace")
        if not xml and current.saml is not None:
            xml = current.saml.idp_metadata_xml
        if not xml:
            return self._page(ctx, status=400, error="Paste or upload the IdP's federation metadata XML.",
                              error_for="saml")
        saml = SamlSettings(idp_metadata_xml=xml, link_from=ctx.field("link_from") or "nameid",
                            link_attribute=ctx.field("link_attribute") or "userName", jit=ctx.field("jit") == "on")
        return self._store(ctx, dataclasses.replace(current, saml=saml), "saml")

    def remove(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        protocol = ctx.request.path_params["protocol"]
        if protocol not in ("oidc", "saml"):
            return self.pages.error(ctx, 404, "Not found", "There is no such protocol.")
        current = load_sso_settings(ctx.tenant)
        return self._store(ctx, dataclasses.replace(current, **{protocol: None}), protocol)
