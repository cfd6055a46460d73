"""OpenID Connect relying party: authorization code flow with PKCE (OpenID Connect Core 1.0 §3.1; RFC 7636 S256).

JOSE (JWS verification, JWK import) is joserfc's. The flow itself is written here rather than taken from
Authlib's OAuth client because (1) all I/O must go through the injected ``httpx.Client`` (tests, proxies,
timeouts), (2) every refusal must carry a precise reason for the web layer, and (3) Entra ID's multi-tenant
issuer (``https://login.microsoftonline.com/{tenantid}/v2.0`` in the ``organizations`` discovery document) needs
a ``tid``-substituting issuer check plus an allow-list of onboarded directories, which generic clients do not do.

Checks made on the ID token (Core §3.1.3.7): signature against the provider's JWKS (unknown ``kid`` → one
refetch), algorithm allow-list (asymmetric only: no ``none``, no HS* — a public key must never become an HMAC
secret), ``iss`` (exact; Entra multi-tenant: template with the token's ``tid``), ``aud`` contains the client id
and ``azp`` equals it when present or when there are several audiences, ``exp``/``nbf``/``iat`` with leeway,
``nonce`` (constant-time).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from scimgrip.sso.config import OidcSettings
from scimgrip.sso.errors import SsoError

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
"""Asymmetric JWS algorithms only (RFC 8725 §3.1, §3.2): no ``none``, no HMAC keyed with a public key."""

PENDING_MAX_AGE_SECONDS = 600
DISCOVERY_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 3600.0
JWKS_MIN_REFETCH_SECONDS = 10.0      # an unknown kid refetches, but not in a loop
MAX_DOCUMENT_BYTES = 512 * 1024
TENANT_PLACEHOLDER = "{tenantid}"
HTTP_TIMEOUT_SECONDS = 10.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, S256."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _check_endpoint(url: Any, what: str) -> str:
    """https, or plain http to a loopback host (local test providers only)."""
    if not isinstance(url, str):
        raise SsoError("invalid_config", f"the provider's discovery document has no {what}")
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise SsoError("invalid_config", f"the provider's {what} is not an https URL")
    return url


@dataclass
class _Cached:
    value: Any
    fetched_at: float


class ProviderCache:
    """Discovery documents and JWKS by URL, with a TTL; shared by the relying parties of one process (the web
    layer builds a relying party per request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Cached] = {}
        self._forced: dict[str, float] = {}

    def get(self, url: str, ttl: float, now: float) -> Any | None:
        with self._lock:
            entry = self._entries.get(url)
        return entry.value if entry is not None and now - entry.fetched_at < ttl else None

    def may_force(self, url: str, now: float, interval: float) -> bool:
        """Whether a refetch outside the TTL is allowed now (at most one per ``interval`` per URL)."""
        with self._lock:
            last = self._forced.get(url)
            if last is not None and now - last < interval:
                return False
            self._forced[url] = now
            return True

    def put(self, url: str, value: Any, now: float) -> None:
        with self._lock:
            self._entries[url] = _Cached(value, now)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._forced.clear()


DEFAULT_CACHE = ProviderCache()


class OidcRelyingParty:
    """One tenant's OIDC login. ``begin`` builds the authorization request; ``complete`` verifies the callback.

    The web layer keeps the ``pending`` dict server-side keyed by ``state`` and hands it back once.
    """

    def __init__(self, settings: OidcSettings, http: httpx.Client | None = None, *, leeway_seconds: int = 60,
                 clock: Callable[[], float] = time.time, cache: ProviderCache | None = None,
                 allowed_tids: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=HTTP_TIMEOUT_SECONDS)
        self.leeway = leeway_seconds
        self.clock = clock
        self.cache = cache if cache is not None else DEFAULT_CACHE
        self.allowed_tids = allowed_tids

    def close(self) -> None:
        """Close the HTTP client if this relying party made it (an injected one belongs to the caller)."""
        if self._owns_http:
            self.http.close()

    # -- provider metadata -------------------------------------------------------------------------------------
    def _fetch_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise SsoError("unreachable", f"the identity provider's {what} could not be fetched") from exc
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise SsoError("unreachable", f"the identity provider's {what} answered HTTP {response.status_code}")
        try:
            doc = response.json()
        except ValueError as exc:
            raise SsoError("invalid_config", f"the identity provider's {what} is not JSON") from exc
        if not isinstance(doc, dict):
            raise SsoError("invalid_config", f"the identity provider's {what} is not a JSON object")
        return doc

    def discovery(self) -> dict[str, Any]:
        """The provider's configuration (OpenID Connect Discovery 1.0 §3), cached for an hour."""
        url = self.settings.discovery_url
        now = self.clock()
        doc = self.cache.get(url, DISCOVERY_TTL_SECONDS, now)
        if doc is None:
            doc = self._fetch_json(url, "discovery document")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                _check_endpoint(doc.get(name), name)
            if not isinstance(doc.get("issuer"), str) or not doc["issuer"]:
                raise SsoError("invalid_config", "the provider's discovery document has no issuer")
            self.cache.put(url, doc, now)
        templated = TENANT_PLACEHOLDER in doc["issuer"]
        if templated != self.settings.multi_tenant:
            raise SsoError("invalid_config",
                           "the discovery document is multi-tenant ({tenantid} issuer) but the setting is not, "
                           "or the other way round: check the discovery URL and the multi-tenant switch")
        return dict(doc)

    def _keys(self, jwks_uri: str, *, refresh: bool = False) -> KeySet:
        now = self.clock()
        cached = None if refresh else self.cache.get(jwks_uri, JWKS_TTL_SECONDS, now)
        if cached is not None:
            return KeySet.import_key_set(cached)
        doc = self._fetch_json(jwks_uri, "key set (JWKS)")
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise SsoError("invalid_config", "the identity provider's JWKS has no keys")
        # only public signing keys; a symmetric key in a JWKS would be a way to sign with a public value
        usable = {"keys": [k for k in keys if isinstance(k, dict) and k.get("kty") in ("RSA", "EC")
                           and k.get("use", "sig") == "sig" and "d" not in k]}
        try:
            key_set = KeySet.import_key_set(usable)   # type: ignore[arg-type]
        except JoseError as exc:
            raise SsoError("invalid_config", "the identity provider's JWKS has no usable signing key") from exc
        self.cache.put(jwks_uri, usable, now)
        return key_set

    # -- the flow ----------------------------------------------------------------------------------------------
    def begin(self, redirect_uri: str) -> tuple[str, dict[str, Any]]:
        """The authorization URL to redirect the browser to, and the ``pending`` state to keep server-side."""
        meta = self.discovery()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)           # 86 characters: RFC 7636 §4.1 allows 43–128
        query = urlencode({
            "response_type": "code", "client_id": self.settings.client_id, "redirect_uri": redirect_uri,
            "scope": self.settings.scopes, "state": state, "nonce": nonce,
            "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256",
        })
        endpoint = meta["authorization_endpoint"]
        url = f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
        pending = {"state": state, "nonce": nonce, "code_verifier": verifier, "redirect_uri": redirect_uri,
                   "created_at": self.clock()}
        return url, pending

    def complete(self, params: Mapping[str, str], pending: Mapping[str, Any], *,
                 allowed_tids: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Verify the redirect back from the provider and return the ID token's verified claims."""
        expected_state = str(pending.get("state") or "")
        got_state = str(params.get("state") or "")
        if not expected_state or not hmac.compare_digest(got_state.encode(), expected_state.encode()):
            raise SsoError("bad_state", "this sign-in response does not belong to a sign-in started here; "
                                        "please start again")
        created = pending.get("created_at")
        if not isinstance(created, int | float) or self.clock() - created > PENDING_MAX_AGE_SECONDS:
            raise SsoError("expired", "the sign-in took too long; please start again")
        if params.get("error"):
            # only a well-formed error code is echoed: error_description is attacker-controllable page text
            error = str(params["error"])
            shown = f" ({error})" if re.fullmatch(r"[a-z_]{1,64}", error) else ""
            raise SsoError("idp_error", f"the identity provider refused the sign-in{shown}")
        code = params.get("code")
        if not code:
            raise SsoError("bad_response", "the identity provider sent no authorization code")
        meta = self.discovery()
        id_token = self._exchange(meta, str(code), pending)
        return self.validate_id_token(id_token, nonce=str(pending.get("nonce") or ""), meta=meta,
                                      allowed_tids=allowed_tids or self.allowed_tids)

    def _exchange(self, meta: Mapping[str, Any], code: str, pending: Mapping[str, Any]) -> str:
        """Token request (Core §3.1.3.1) with the PKCE verifier; client authentication as discovery allows."""
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": str(pending.get("redirect_uri")),
                "code_verifier": str(pending.get("code_verifier")), "client_id": self.settings.client_id}
        auth: httpx.Auth = httpx.Auth()          # no client authentication: a public client (PKCE only)
        secret = self.settings.client_secret
        if secret:
            methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            if "client_secret_basic" in methods:
                # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding
                auth = httpx.BasicAuth(urlencode({"": self.settings.client_id})[1:], urlencode({"": secret})[1:])
            elif "client_secret_post" in methods:
                data["client_secret"] = secret
            else:
                raise SsoError("invalid_config", "the provider supports neither client_secret_basic nor "
                                                 "client_secret_post")
        try:
            response = self.http.post(meta["token_endpoint"], data=data, auth=auth,
                                      headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise SsoError("unreachable", "the identity provider's token endpoint could not be reached") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict):
            error = str(body.get("error", "")) if isinstance(body, dict) else ""
            raise SsoError("idp_error", f"the identity provider refused the code exchange "
                                        f"(HTTP {response.status_code}{', ' + error[:64] if error else ''})")
        token = body.get("id_token")
        if not isinstance(token, str) or not token:
            raise SsoError("bad_response", "the token response carries no ID token")
        return token

    # -- ID token validation -----------------------------------------------------------------------------------
    def validate_id_token(self, token: str, *, nonce: str | None, meta: Mapping[str, Any] | None = None,
                          allowed_tids: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Verify signature and claims of an ID token (Core §3.1.3.7); the claims, or ``SsoError``."""
        meta = meta if meta is not None else self.discovery()
        header = _header(token)
        alg = header.get("alg")
        supported = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        if alg not in ALLOWED_ALGORITHMS or alg not in supported:
            raise SsoError("bad_algorithm", f"ID token signed with a refused algorithm ({str(alg)[:16]})")
        kid = header.get("kid")
        claims = self._verify(token, str(alg), kid if isinstance(kid, str) else None, meta["jwks_uri"])
        self._check_claims(claims, meta, nonce, allowed_tids)
        return claims

    def _verify(self, token: str, alg: str, kid: str | None, jwks_uri: str) -> dict[str, Any]:
        keys = self._keys(jwks_uri)
        try:
            key = keys.get_by_kid(kid)
        except InvalidKeyIdError:
            if not self.cache.may_force(jwks_uri, self.clock(), JWKS_MIN_REFETCH_SECONDS):
                raise SsoError("bad_signature", "the ID token is signed by a key the provider does not publish") \
                    from None
            try:
                key = self._keys(jwks_uri, refresh=True).get_by_kid(kid)   # key rollover: refetch once
            except InvalidKeyIdError as exc:
                raise SsoError("bad_signature", "the ID token is signed by a key the provider does not publish") \
                    from exc
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except BadSignatureError as exc:
            raise SsoError("bad_signature", "the ID token's signature is not valid") from exc
        except JoseError as exc:
            raise SsoError("bad_signature", "the ID token could not be verified") from exc
        return dict(decoded.claims)

    def _check_claims(self, claims: Mapping[str, Any], meta: Mapping[str, Any], nonce: str | None,
                      allowed_tids: Callable[[str], bool] | None) -> None:
        s = self.settings
        issuer = str(meta["issuer"])
        if s.multi_tenant:
            tid = claims.get("tid")
            if not isinstance(tid, str) or not tid:
                raise SsoError("wrong_issuer", "the ID token names no directory (tid)")
            issuer = issuer.replace(TENANT_PLACEHOLDER, tid)
            allowed = allowed_tids(tid) if allowed_tids is not None else tid.lower() in s.allowed_tenant_ids
            if not allowed:
                raise SsoError("unknown_tenant", "your organisation's directory is not allowed to sign in here")
        if claims.get("iss") != issuer:
            raise SsoError("wrong_issuer", "the ID token was issued by another provider")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if s.client_id not in audiences:
            raise SsoError("wrong_audience", "the ID token was issued for another application")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != s.client_id:
            raise SsoError("wrong_audience", "the ID token was issued to another party (azp)")
        now = self.clock()
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise SsoError("bad_response", "the ID token lacks exp or iat")
        if now > exp + self.leeway:
            raise SsoError("expired", "the ID token has expired")
        if iat > now + self.leeway or (isinstance(nbf, int | float) and nbf > now + self.leeway):
            raise SsoError("not_yet_valid", "the ID token is not valid yet (check the server clock)")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise SsoError("bad_nonce", "the ID token does not belong to this sign-in (nonce)")


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise SsoError("bad_signature", "the ID token is not a signed JWT")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise SsoError("bad_signature", "the ID token's header is not readable") from exc
    if not isinstance(header, dict):
        raise SsoError("bad_signature", "the ID token's header is not readable")
    return header
