"""Fixtures for the interop suite: node-oidc-provider started once per session, killed at the end.

Without node or ``tests/interop/node_modules`` the suite is skipped with the reason; under CI
(``CI=true``, where ``.ci/run`` runs ``npm ci --prefix tests/interop``) it fails instead, so a
missing install step can't hide behind a skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory, Upstream

from .harness import EXAMPLE, Gw, GwFactory, example_env
from .interop_as import AuthServer, Clients, make_clients, node_unavailable_reason
from .interop_pki import Pki


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def interop_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    reason = node_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"interop suite cannot run in CI: {reason}")
        pytest.skip(reason)
    return Pki(tmp_path_factory.mktemp("interop-pki"))


@pytest.fixture(scope="session")
def interop_clients(interop_pki: Pki) -> Clients:
    return make_clients(interop_pki)


@pytest.fixture(scope="session")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, interop_pki: Pki, interop_clients: Clients
) -> Iterator[AuthServer]:
    server = AuthServer(tmp_path_factory.mktemp("interop-as"), interop_pki, interop_clients)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def gw_factory(
    auth_server: AuthServer,
    interop_pki: Pki,
    upstream: Upstream,
    gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[GwFactory]:
    """Start gateways running the example config against the session's AS (stopped after the test)."""

    async def start(edit: Callable[[str], str] | None = None, **env: str) -> Gw:
        # A self-signed client id the AS does not know yet: its directory JWKS URL answers 404
        # until a test registers it.
        client_id = f"selfsigned-{secrets.token_hex(4)}"
        for name, value in (example_env(auth_server, interop_pki, upstream.url, client_id) | env).items():
            monkeypatch.setenv(name, value)
        text = EXAMPLE.read_text()
        server = await gateway(edit(text) if edit else text, raw=True)
        return Gw(server, upstream, auth_server, client_id)

    yield start


@pytest.fixture
async def gw(gw_factory: GwFactory) -> Gw:
    """A gateway running config/examples/node-oidc-provider.yaml unchanged."""
    return await gw_factory()
