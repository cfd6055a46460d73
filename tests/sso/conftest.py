"""Fixtures of the single sign-on tests: the local identity providers of ``tests/sso/idp.py``, one per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sso.idp import MockOidcProvider, SamlTestIdp


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[MockOidcProvider]:
    with MockOidcProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def oidc_multi_provider() -> Iterator[MockOidcProvider]:
    with MockOidcProvider(multi_tenant=True, client_id="scimgrip-multi") as provider:
        yield provider


@pytest.fixture(scope="module")
def saml_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamlTestIdp]:
    directory: Path = tmp_path_factory.mktemp("saml-idp")
    with SamlTestIdp(directory) as idp:
        yield idp
