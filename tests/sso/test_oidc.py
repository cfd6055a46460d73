"""The OpenID Connect relying party against a real local provider (tests/sso/idp.py): the code flow with PKCE,
and every refusal of OpenID Connect Core §3.1.3.7 with its reason."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from scimgrip.sso.config import OidcSettings
from scimgrip.sso.errors import SsoError
from scimgrip.sso.oidc import OidcRelyingParty, ProviderCache, pkce_challenge
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.sso_store import SqlReplayCache
from tests.sso.idp import OTHER_TENANT, MockOidcProvider

REDIRECT = "https://scimgrip.test/sso/contoso/oidc/callback"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def make_rp(provider: MockOidcProvider, http: httpx.Client, **kw: Any) -> OidcRelyingParty:
    settings = OidcSettings(discovery_url=provider.discovery_url, client_id=provider.client_id,
                            client_secret=provider.client_secret, multi_tenant=provider.multi_tenant,
                            allowed_tenant_ids=kw.pop("allowed_tenant_ids", ()))
    return OidcRelyingParty(settings, http, cache=ProviderCache(), **kw)


def authorize(rp: OidcRelyingParty, http: httpx.Client) -> tuple[dict[str, str], dict[str, Any]]:
    """Start a login and follow the provider's auto-approval: the callback parameters and the pending state."""
    url, pending = rp.begin(REDIRECT)
    answer = http.get(url)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}, pending


def login(rp: OidcRelyingParty, http: httpx.Client, **kw: Any) -> dict[str, Any]:
    params, pending = authorize(rp, http)
    return rp.complete(params, pending, **kw)


@pytest.fixture
def issue(oidc_provider: MockOidcProvider) -> Iterator[Callable[[Callable[[dict[str, Any], MockOidcProvider], str]],
                                                               None]]:
    """Make the provider's next tokens come from a hook; restored afterwards."""
    def set_hook(hook: Callable[[dict[str, Any], MockOidcProvider], str]) -> None:
        oidc_provider.issue_token = hook
    yield set_hook
    oidc_provider.issue_token = None


def reason(exc: pytest.ExceptionInfo[SsoError]) -> str:
    return exc.value.reason


# -- happy paths -----------------------------------------------------------------------------------------------
def test_single_tenant_login(oidc_provider: MockOidcProvider, http: httpx.Client) -> None:
    rp = make_rp(oidc_provider, http)
    oidc_provider.next_user = {"oid": "0c9d-alice", "preferred_username": "alice@contoso.test", "name": "Alice"}
    url, pending = rp.begin(REDIRECT)
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"] == [pkce_challenge(pending["code_verifier"])]
    assert query["state"] == [pending["state"]] and query["nonce"] == [pending["nonce"]]
    assert set(pending) == {"state", "nonce", "code_verifier", "redirect_uri", "created_at"}
    claims = login(rp, http)
    assert claims["oid"] == "0c9d-alice" and claims["aud"] == oidc_provider.client_id
    assert oidc_provider.token_requests[-1]["auth"] == "basic"


def test_client_secret_post_when_basic_is_not_offered(oidc_provider: MockOidcProvider, http: httpx.Client) -> None:
    oidc_provider.auth_methods = ("client_secret_post",)
    try:
        assert login(make_rp(oidc_provider, http), http)["iss"] == oidc_provider.issuer_for(oidc_provider.tenant_id)
    finally:
        oidc_provider.auth_methods = ("client_secret_basic", "client_secret_post")
    assert oidc_provider.token_requests[-1]["auth"] == "post"


def test_public_client_without_secret(http: httpx.Client) -> None:
    with MockOidcProvider(client_secret=None) as provider:
        claims = login(make_rp(provider, http), http)
        assert provider.token_requests[-1] == {"auth": "none", "client_id": provider.client_id}
        assert claims["sub"]


def test_wrong_client_secret_is_an_idp_error(oidc_provider: MockOidcProvider, http: httpx.Client) -> None:
    settings = OidcSettings(discovery_url=oidc_provider.discovery_url, client_id=oidc_provider.client_id,
                            client_secret="wrong")
    rp = OidcRelyingParty(settings, http, cache=ProviderCache())
    with pytest.raises(SsoError) as exc:
        login(rp, http)
    assert reason(exc) == "idp_error" and "invalid_client" in exc.value.message and "wrong" not in exc.value.message


def test_multi_tenant_login_from_an_onboarded_directory(oidc_multi_provider: MockOidcProvider,
                                                        http: httpx.Client) -> None:
    tid = "aaaaaaaa-1111-4222-8333-bbbbbbbbbbbb"
    oidc_multi_provider.next_user = {"oid": "o-1", "tid": tid, "preferred_username": "bob@fabrikam.test"}
    rp = make_rp(oidc_multi_provider, http)
    claims = login(rp, http, allowed_tids=lambda t: t == tid)
    assert claims["tid"] == tid and claims["iss"] == oidc_multi_provider.issuer_for(tid)
    # the same through the settings' allow-list
    assert login(make_rp(oidc_multi_provider, http, allowed_tenant_ids=(tid,)), http)["oid"] == "o-1"


def test_multi_tenant_refuses_a_directory_not_onboarded(oidc_multi_provider: MockOidcProvider,
                                                        http: httpx.Client) -> None:
    oidc_multi_provider.next_user = {"oid": "o-2", "tid": OTHER_TENANT}
    with pytest.raises(SsoError) as exc:
        login(make_rp(oidc_multi_provider, http), http, allowed_tids=lambda t: t == "someone-else")
    assert reason(exc) == "unknown_tenant"
    with pytest.raises(SsoError) as exc:           # no allow-list at all: nobody
        login(make_rp(oidc_multi_provider, http), http)
    assert reason(exc) == "unknown_tenant"


def test_multi_tenant_tid_must_match_the_issuer(oidc_multi_provider: MockOidcProvider, http: httpx.Client) -> None:
    """A token from directory B claiming tid A (onboarded) does not pass: iss is checked with A substituted."""
    onboarded = "aaaaaaaa-1111-4222-8333-bbbbbbbbbbbb"
    oidc_multi_provider.next_user = {"oid": "o-3", "tid": onboarded}
    oidc_multi_provider.issue_token = lambda c, p: p.mint({**c, "iss": p.issuer_for(OTHER_TENANT)})
    try:
        with pytest.raises(SsoError) as exc:
            login(make_rp(oidc_multi_provider, http), http, allowed_tids=lambda t: t == onboarded)
    finally:
        oidc_multi_provider.issue_token = None
    assert reason(exc) == "wrong_issuer"


def test_multi_tenant_switch_must_match_the_discovery_document(oidc_multi_provider: MockOidcProvider,
                                                               http: httpx.Client) -> None:
    settings = OidcSettings(discovery_url=oidc_multi_provider.discovery_url, client_id="x", multi_tenant=False)
    with pytest.raises(SsoError) as exc:
        OidcRelyingParty(settings, http, cache=ProviderCache()).begin(REDIRECT)
    assert reason(exc) == "invalid_config"


def test_signing_key_rollover_refetches_the_jwks_once(http: httpx.Client) -> None:
    with MockOidcProvider() as provider:
        rp = make_rp(provider, http)
        login(rp, http)
        assert provider.jwks_fetches == 1
        login(rp, http)
        assert provider.jwks_fetches == 1            # cached
        provider.rotate_key()
        assert login(rp, http)["aud"] == provider.client_id
        assert provider.jwks_fetches == 2
        assert provider.discovery_fetches == 1           # one per hour per process, whatever the logins


def test_interactive_provider_page_for_browsers(http: httpx.Client) -> None:
    """The page the browser tests click through: a form with a "Sign in" button that posts back."""
    with MockOidcProvider(interactive=True) as provider:
        rp = make_rp(provider, http)
        url, pending = rp.begin(REDIRECT)
        page = http.get(url)
        assert page.status_code == 200 and 'id=sign-in' in page.text
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
        answer = http.post(f"{provider.base_url}/authorize", data={k: html.unescape(v) for k, v in fields.items()})
        assert answer.status_code == 302
        params = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}
        assert rp.complete(params, pending)["preferred_username"] == provider.next_user["preferred_username"]


# -- refusals --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("hook", "expected"), [
    (lambda c, p: p.forge_with_foreign_key(c), "bad_signature"),
    (lambda c, p: p.mint({**c, "exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}), "expired"),
    (lambda c, p: p.mint({**c, "aud": "another-app"}), "wrong_audience"),
    (lambda c, p: p.mint({**c, "aud": [c["aud"], "another-app"]}), "wrong_audience"),     # several, no azp
    (lambda c, p: p.mint({**c, "azp": "another-app"}), "wrong_audience"),
    (lambda c, p: p.mint({**c, "iss": "https://evil.test/v2.0"}), "wrong_issuer"),
    (lambda c, p: p.mint({**c, "nonce": "not-the-nonce"}), "bad_nonce"),
    (lambda c, p: p.mint({k: v for k, v in c.items() if k != "nonce"}), "bad_nonce"),
    (lambda c, p: p.mint({**c, "iat": int(time.time()) + 3600}), "not_yet_valid"),
    (lambda c, p: p.mint({**c, "nbf": int(time.time()) + 3600}), "not_yet_valid"),
    (lambda c, p: p.forge_alg_none(c), "bad_algorithm"),
    (lambda c, p: p.forge_hs256_with_public_key(c), "bad_algorithm"),
    (lambda c, p: p.mint(c, kid="unknown-kid"), "bad_signature"),
    (lambda c, p: "not-a-jwt", "bad_signature"),
], ids=["forged-signature", "expired", "wrong-aud", "several-aud-no-azp", "wrong-azp", "wrong-iss",
        "nonce-mismatch", "nonce-missing", "iat-future", "nbf-future", "alg-none", "hs256-public-key",
        "unknown-kid", "garbage"])
def test_refused_id_tokens(oidc_provider: MockOidcProvider, http: httpx.Client, issue: Any, hook: Any,
                           expected: str) -> None:
    issue(hook)
    with pytest.raises(SsoError) as exc:
        login(make_rp(oidc_provider, http), http)
    assert reason(exc) == expected


def test_several_audiences_with_our_azp_are_accepted(oidc_provider: MockOidcProvider, http: httpx.Client,
                                                     issue: Any) -> None:
    issue(lambda c, p: p.mint({**c, "aud": [c["aud"], "api://other"], "azp": c["aud"]}))
    assert login(make_rp(oidc_provider, http), http)["azp"] == oidc_provider.client_id


def test_expiry_within_leeway_is_accepted(oidc_provider: MockOidcProvider, http: httpx.Client, issue: Any) -> None:
    issue(lambda c, p: p.mint({**c, "exp": int(time.time()) - 30}))
    assert login(make_rp(oidc_provider, http, leeway_seconds=60), http)["oid"]


def test_state_mismatch_error_response_and_stale_pending(oidc_provider: MockOidcProvider,
                                                         http: httpx.Client) -> None:
    rp = make_rp(oidc_provider, http)
    params, pending = authorize(rp, http)
    with pytest.raises(SsoError) as exc:
        rp.complete({**params, "state": params["state"][:-1] + "x"}, pending)
    assert reason(exc) == "bad_state"
    with pytest.raises(SsoError) as exc:
        rp.complete({"state": pending["state"], "error": "access_denied",
                     "error_description": "The user cancelled"}, pending)
    assert reason(exc) == "idp_error" and "access_denied" in exc.value.message
    assert "cancelled" not in exc.value.message                  # provider text is not echoed onto our page
    late = OidcRelyingParty(rp.settings, http, cache=rp.cache, clock=lambda: time.time() + 601)
    with pytest.raises(SsoError) as exc:
        late.complete(params, pending)
    assert reason(exc) == "expired"
    assert rp.complete(params, pending)["oid"]       # the untouched callback still works once…
    with pytest.raises(SsoError) as exc:             # …and the provider refuses the code a second time
        rp.complete(params, pending)
    assert reason(exc) == "idp_error"


def test_state_is_single_use_through_the_replay_store(oidc_provider: MockOidcProvider, http: httpx.Client,
                                                      storage: Storage) -> None:
    """What the web layer does: register the state at begin, take it at the callback — a replayed callback
    finds nothing to take."""
    cache = SqlReplayCache(storage)
    rp = make_rp(oidc_provider, http)
    params, pending = authorize(rp, http)
    assert cache.seen_once(f"oidc-state:{pending['state']}", time.time() + 600)
    assert cache.take(f"oidc-state:{params['state']}")
    assert rp.complete(params, pending)["oid"]
    assert not cache.take(f"oidc-state:{params['state']}")       # replayed


def test_unreachable_provider(http: httpx.Client) -> None:
    settings = OidcSettings(discovery_url="http://127.0.0.1:9/tenant/v2.0/.well-known/openid-configuration",
                            client_id="x")
    with pytest.raises(SsoError) as exc:
        OidcRelyingParty(settings, http, cache=ProviderCache()).begin(REDIRECT)
    assert reason(exc) == "unreachable"
