"""Local identity providers for single sign-on tests (unit, integration, and the web layer's browser tests).

* :class:`MockOidcProvider` — a real OpenID provider on 127.0.0.1 (uvicorn in a thread): discovery, JWKS,
  ``/authorize`` (auto-approve, or a page with a "Sign in" button when ``interactive``), ``/token`` (code, PKCE
  S256, client authentication), RS256 ID tokens. Entra multi-tenant mode: issuer template
  ``<base>/{tenantid}/v2.0`` and a ``tid`` claim. ``mint`` / ``forge_*`` build hostile tokens.
* :class:`SamlTestIdp` — a pysaml2 identity provider with a self-signed certificate generated at start: metadata,
  signed responses, an HTTP-Redirect SSO endpoint answering with a POST form to the ACS, tampering helpers.

Plain classes and functions: no pytest imports, so the browser tests can use them as they are.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import html
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

ENTRA_LIKE_TENANT = "9f3b2c1a-0000-4000-8000-00000000c0de"
OTHER_TENANT = "11111111-2222-4333-8444-555555555555"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Server:
    """uvicorn on a socket bound to 127.0.0.1:0, run in a daemon thread."""

    def __init__(self, app: Starlette, name: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.app, self.name = app, name
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=self.name)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
        self.sock.close()


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded body (without Starlette's form parser, which needs python-multipart)."""
    return {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}


# ---------------------------------------------------------------------------------------------------------------
# OpenID Connect
# ---------------------------------------------------------------------------------------------------------------
class MockOidcProvider:
    """An OpenID provider for tests. Set ``next_user`` (claims of the next person to sign in) before a login.

    ``issue_token``: optional hook ``(claims, provider) -> id_token`` replacing the normal RS256 token, so a
    test can drive the full flow with a forged, expired or misaddressed token.
    """

    def __init__(self, *, client_id: str = "scimgrip-test", client_secret: str | None = "test-secret",
                 multi_tenant: bool = False, tenant_id: str = ENTRA_LIKE_TENANT,
                 auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post"),
                 interactive: bool = False) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.multi_tenant, self.tenant_id = multi_tenant, tenant_id
        self.auth_methods, self.interactive = auth_methods, interactive
        self.key = RSAKey.generate_key(2048, parameters={"kid": "key-1", "use": "sig", "alg": "RS256"})
        self.published: list[RSAKey] = [self.key]
        self.next_user: dict[str, Any] = {"oid": str(uuid.uuid4()), "tid": tenant_id,
                                          "preferred_username": "alice@contoso.test", "name": "Alice"}
        self.issue_token: Callable[[dict[str, Any], MockOidcProvider], str] | None = None
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, Any]] = []   # {"auth": "basic"|"post"|"none", "client_id": …}
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.lock = threading.Lock()
        self._server = _Server(Starlette(routes=[
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery),
            Route("/keys", self._jwks),
            Route("/authorize", self._authorize, methods=["GET", "POST"]),
            Route("/token", self._token, methods=["POST"]),
        ]), "mock-oidc")
        self.base_url = f"http://127.0.0.1:{self._server.port}"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> MockOidcProvider:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MockOidcProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a relying party is configured with ---------------------------------------------------------------
    @property
    def discovery_url(self) -> str:
        segment = "organizations" if self.multi_tenant else self.tenant_id
        return f"{self.base_url}/{segment}/v2.0/.well-known/openid-configuration"

    @property
    def issuer_template(self) -> str:
        return f"{self.base_url}/{{tenantid}}/v2.0"

    def issuer_for(self, tid: str) -> str:
        return self.issuer_template.replace("{tenantid}", tid)

    def rotate_key(self) -> RSAKey:
        """Publish a new signing key and sign with it (the old one stays published)."""
        self.key = RSAKey.generate_key(2048, parameters={"kid": f"key-{len(self.published) + 1}", "use": "sig",
                                                         "alg": "RS256"})
        self.published.append(self.key)
        return self.key

    # -- tokens ------------------------------------------------------------------------------------------------
    def claims_for(self, user: dict[str, Any], nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        tid = str(user.get("tid") or self.tenant_id)
        claims: dict[str, Any] = {"iss": self.issuer_for(tid), "aud": self.client_id, "iat": now, "nbf": now,
                                  "exp": now + 3600, "sub": f"sub-{user.get('oid', 'x')}", "tid": tid,
                                  "ver": "2.0"}
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(user)
        return claims

    def mint(self, claims: dict[str, Any], *, key: RSAKey | None = None, alg: str = "RS256",
             kid: str | None = None) -> str:
        """An ID token signed by ``key`` (default: the provider's current key)."""
        key = key or self.key
        return jwt.encode({"alg": alg, "kid": kid or key.kid or "key-1"}, claims, key, algorithms=[alg])

    def forge_with_foreign_key(self, claims: dict[str, Any]) -> str:
        """Signed by an attacker's key under the provider's kid."""
        foreign = RSAKey.generate_key(2048)
        return self.mint(claims, key=foreign, kid=self.key.kid)

    @staticmethod
    def forge_alg_none(claims: dict[str, Any]) -> str:
        header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{_b64url(json.dumps(claims).encode())}."

    def forge_hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """HS256 keyed with the provider's *public* key (the classic algorithm confusion attack)."""
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.key.kid}).encode())
        body = _b64url(json.dumps(claims).encode())
        secret = json.dumps(self.key.as_dict(private=False), sort_keys=True).encode()
        sig = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64url(sig)}"

    # -- endpoints ---------------------------------------------------------------------------------------------
    async def _discovery(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        with self.lock:
            self.discovery_fetches += 1
        issuer = self.issuer_template if tenant in ("organizations", "common") else self.issuer_for(tenant)
        return JSONResponse({
            "issuer": issuer, "authorization_endpoint": f"{self.base_url}/authorize",
            "token_endpoint": f"{self.base_url}/token", "jwks_uri": f"{self.base_url}/keys",
            "response_types_supported": ["code"], "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(self.auth_methods),
            "scopes_supported": ["openid", "profile", "email"],
        })

    async def _jwks(self, request: Request) -> Response:
        with self.lock:
            self.jwks_fetches += 1
        return JSONResponse({"keys": [k.as_dict(private=False) for k in self.published]})

    async def _authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "POST":
            params = await _form(request)
        if params.get("client_id") != self.client_id:
            return HTMLResponse("unknown client", status_code=400)
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return HTMLResponse("PKCE S256 required", status_code=400)
        if self.interactive and request.method == "GET":
            fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                             for k, v in params.items())
            user = html.escape(str(self.next_user.get("preferred_username", "")))
            return HTMLResponse(f"<!doctype html><title>Mock IdP</title><form method=post action=/authorize>"
                                f"{fields}<p>Sign in as {user}</p><button id=sign-in type=submit>Sign in</button>"
                                f"</form>")
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.codes[code] = {"user": dict(self.next_user), "nonce": params.get("nonce"),
                                "challenge": params["code_challenge"], "redirect_uri": params.get("redirect_uri"),
                                "expires": time.time() + 120}
        query = urlencode({"code": code, "state": params.get("state", "")})
        return RedirectResponse(f"{params.get('redirect_uri')}?{query}", status_code=302)

    def _client_auth(self, request: Request, form: dict[str, str]) -> str | None:
        """The method used, or None when authentication fails."""
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            ok = user == self.client_id and password == (self.client_secret or "")
            return "basic" if ok and "client_secret_basic" in self.auth_methods else None
        if "client_secret" in form:
            ok = form["client_secret"] == self.client_secret
            return "post" if ok and "client_secret_post" in self.auth_methods else None
        return "none" if self.client_secret is None else None

    async def _token(self, request: Request) -> Response:
        form = await _form(request)
        method = self._client_auth(request, form)
        with self.lock:
            self.token_requests.append({"auth": method, "client_id": form.get("client_id")})
            grant = self.codes.pop(form.get("code", ""), None)
        if method is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if grant is None or grant["expires"] < time.time() or grant["redirect_uri"] != form.get("redirect_uri"):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = form.get("code_verifier", "")
        if _b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
        claims = self.claims_for(grant["user"], grant["nonce"])
        token = self.issue_token(claims, self) if self.issue_token else self.mint(claims)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                             "expires_in": 3600, "id_token": token})


# ---------------------------------------------------------------------------------------------------------------
# SAML
# ---------------------------------------------------------------------------------------------------------------
def make_self_signed(directory: Path, common_name: str = "scimgrip test IdP") -> tuple[Path, Path]:
    """An RSA-2048 key and a self-signed certificate valid for a day, as PEM files in ``directory``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "idp.key", directory / "idp.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def cert_base64(cert_path: Path) -> str:
    """The DER certificate in base64, as in ``ds:X509Certificate``."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


class SamlTestIdp:
    """A pysaml2 IdP. ``register_sp(sp_metadata)`` before the HTTP endpoint answers that SP's requests; set
    ``next_user = {"name_id": …, "attributes": {…}}`` for the next SP-initiated login."""

    def __init__(self, directory: Path, *, entity_id: str | None = None, auto_submit: bool = False) -> None:
        from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
        self.dir = Path(directory)
        self.key_path, self.cert_path = make_self_signed(self.dir)
        self._server = _Server(Starlette(routes=[Route("/sso/redirect", self._sso)]), "saml-idp")
        self.base_url = f"http://127.0.0.1:{self._server.port}"
        self.entity_id = entity_id or f"{self.base_url}/idp"
        self.sso_url = f"{self.base_url}/sso/redirect"
        self.auto_submit = auto_submit
        self.next_user: dict[str, Any] = {"name_id": "alice@contoso.test", "attributes": {}}
        self.sp_metadata: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self._bindings = (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST)
        self._idps: dict[tuple[str, ...], Any] = {}
        self.lock = threading.Lock()

    def start(self) -> SamlTestIdp:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> SamlTestIdp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def register_sp(self, sp_metadata_xml: str) -> None:
        with self.lock:
            if sp_metadata_xml not in self.sp_metadata:
                self.sp_metadata.append(sp_metadata_xml)

    # -- pysaml2 server ----------------------------------------------------------------------------------------
    def _config(self, sp_metadata: tuple[str, ...], lifetime_seconds: int) -> dict[str, Any]:
        from saml2.saml import NAME_FORMAT_URI
        redirect, post = self._bindings
        return {
            "entityid": self.entity_id, "xmlsec_binary": "/usr/bin/xmlsec1",
            "key_file": str(self.key_path), "cert_file": str(self.cert_path),
            "metadata": {"inline": list(sp_metadata)} if sp_metadata else {},
            "allow_unknown_attributes": True,
            "service": {"idp": {
                "endpoints": {"single_sign_on_service": [(self.sso_url, redirect), (self.sso_url, post)]},
                "policy": {"default": {"lifetime": {"seconds": lifetime_seconds}, "name_form": NAME_FORMAT_URI,
                                       "attribute_restrictions": None}},
                "name_id_format": ["urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"],
            }},
        }

    def _idp(self, sp_metadata: tuple[str, ...], lifetime_seconds: int = 300) -> Any:
        from saml2.config import IdPConfig
        from saml2.server import Server
        key = (*sp_metadata, str(lifetime_seconds))
        with self.lock:
            idp = self._idps.get(key)
            if idp is None:
                config = IdPConfig()
                config.load(self._config(sp_metadata, lifetime_seconds))
                idp = self._idps[key] = Server(config=config)
        return idp

    def metadata_xml(self) -> str:
        from saml2.metadata import entity_descriptor
        return str(entity_descriptor(self._idp(()).config).to_string().decode())

    def login_response(self, sp_metadata: str, acs_url: str, name_id: str,
                       attributes: dict[str, list[str]] | None = None, *, in_response_to: str | None = None,
                       sign_assertion: bool = True, sign_response: bool = True, lifetime_seconds: int = 300,
                       destination: str | None = None, sp_entity_id: str | None = None,
                       clock_offset_seconds: int = 0) -> str:
        """A SAMLResponse (base64) for the SP described by ``sp_metadata``. ``clock_offset_seconds`` runs the
        IdP's clock ahead (+) or behind (-): IssueInstant, NotBefore and NotOnOrAfter all move with it."""
        from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NameID
        from saml2.samlp import STATUS_SUCCESS  # noqa: F401 - documents the status pysaml2 sets
        idp = self._idp((sp_metadata,), lifetime_seconds)
        if sp_entity_id is None:
            sp_entity_id = next(iter(idp.metadata.with_descriptor("spsso")))
        with _idp_clock(clock_offset_seconds):
            response = idp.create_authn_response(
                identity=dict(attributes or {}), in_response_to=in_response_to,
                destination=destination or acs_url, sp_entity_id=sp_entity_id,
                name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=name_id),
                authn={"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"},
                sign_assertion=sign_assertion, sign_response=sign_response)
        return base64.b64encode(str(response).encode()).decode()

    # -- HTTP-Redirect SSO endpoint (SP-initiated, for browser tests) ------------------------------------------
    async def _sso(self, request: Request) -> Response:
        from saml2 import BINDING_HTTP_REDIRECT
        saml_request = request.query_params.get("SAMLRequest")
        relay_state = request.query_params.get("RelayState", "")
        with self.lock:
            registered = tuple(self.sp_metadata)
        if not saml_request or not registered:
            return HTMLResponse("no SAMLRequest or no registered SP", status_code=400)
        idp = self._idp(registered)
        parsed = idp.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT).message
        acs = parsed.assertion_consumer_service_url
        sp_metadata = next(m for m in registered if parsed.issuer.text in m)
        self.requests.append({"id": parsed.id, "issuer": parsed.issuer.text, "acs": acs})
        response = self.login_response(sp_metadata, acs, self.next_user["name_id"],
                                       self.next_user.get("attributes") or {}, in_response_to=parsed.id,
                                       sp_entity_id=parsed.issuer.text)
        script = "<script>document.forms[0].submit()</script>" if self.auto_submit else ""
        return HTMLResponse(
            f'<!doctype html><title>Test IdP</title><form method="post" action="{html.escape(acs)}">'
            f'<input type="hidden" name="SAMLResponse" value="{html.escape(response)}">'
            f'<input type="hidden" name="RelayState" value="{html.escape(relay_state)}">'
            f'<button id="saml-continue" type="submit">Continue</button></form>{script}')


_CLOCK_LOCK = threading.Lock()


@contextmanager
def _idp_clock(offset: int) -> Iterator[None]:
    """Shift pysaml2's clock (``saml2.time_util`` reads ``time`` and ``datetime`` through its module globals)
    while the IdP builds a response. Process-wide for the duration of the call: only for tests that verify
    afterwards, never while a service provider verifies concurrently."""
    if not offset:
        yield
        return
    import types

    from saml2 import time_util
    real_time, real_datetime = time_util.time, time_util.datetime

    class ShiftedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> ShiftedDatetime:  # type: ignore[override]
            return super().now(tz) + dt.timedelta(seconds=offset)

    shifted_time = types.SimpleNamespace(**{n: getattr(real_time, n) for n in dir(real_time) if not n.startswith("__")})
    shifted_time.gmtime = lambda secs=None: real_time.gmtime((real_time.time() if secs is None else secs) + offset)
    with _CLOCK_LOCK:
        time_util.time, time_util.datetime = shifted_time, ShiftedDatetime  # type: ignore[assignment]
        try:
            yield
        finally:
            time_util.time, time_util.datetime = real_time, real_datetime


def tamper_response(saml_response_b64: str, old: str, new: str) -> str:
    """Replace text in a signed response after signing (e.g. the NameID): the signature must then fail."""
    xml = base64.b64decode(saml_response_b64).decode()
    assert old in xml, f"{old!r} not in the response"
    return base64.b64encode(xml.replace(old, new).encode()).decode()


def entra_federation_metadata(entity_id: str, sso_url: str, cert_b64: str) -> str:
    """IdP metadata shaped like Entra ID's federationmetadata.xml: WS-Fed RoleDescriptors around the
    IDPSSODescriptor, signing KeyDescriptors, Redirect and POST SSO endpoints, a SingleLogoutService."""
    key = (f'<KeyDescriptor use="signing"><KeyInfo xmlns="http://www.w3.org/2000/09/xmldsig#"><X509Data>'
           f'<X509Certificate>{cert_b64}</X509Certificate></X509Data></KeyInfo></KeyDescriptor>')
    return (
        f'<?xml version="1.0" encoding="utf-8"?>'
        f'<EntityDescriptor ID="_{uuid.uuid4()}" entityID="{entity_id}" '
        f'xmlns="urn:oasis:names:tc:SAML:2.0:metadata">'
        f'<RoleDescriptor xsi:type="fed:SecurityTokenServiceType" '
        f'protocolSupportEnumeration="http://docs.oasis-open.org/wsfed/federation/200706" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xmlns:fed="http://docs.oasis-open.org/wsfed/federation/200706">{key}'
        f'<fed:ClaimTypesOffered><auth:ClaimType Uri="http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name" '
        f'xmlns:auth="http://docs.oasis-open.org/wsfed/authorization/200706"/></fed:ClaimTypesOffered>'
        f'</RoleDescriptor>'
        f'<IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">{key}'
        f'<SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
        f'Location="{sso_url}"/>'
        f'<SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{sso_url}"/>'
        f'<SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{sso_url}"/>'
        f'</IDPSSODescriptor></EntityDescriptor>')
