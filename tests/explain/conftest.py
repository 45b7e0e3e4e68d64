"""Fixtures for issue #19 (report-only enforcement, ``gateway explain``): the DPoP suite's keys."""

from __future__ import annotations

import pytest

from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import Signer, es256


@pytest.fixture(scope="module")
def as_key(tmp_path_factory: pytest.TempPathFactory) -> AsKey:
    return AsKey(tmp_path_factory.mktemp("as"))


@pytest.fixture(scope="session")
def k1() -> Signer:
    return es256()


@pytest.fixture(scope="session")
def k2() -> Signer:
    return es256()


# The token suite's running authorization server (jwks_uri, introspection), for --online parity.
from tests.tokens.conftest import auth_server, clock, signing_keys  # noqa: E402, F401
