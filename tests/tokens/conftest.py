"""Fixtures for the token tests: session keys, a running TLS authorization server, a fake clock."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.config.auth import AuthPolicy
from gateway.config.issuers import IssuerConfig
from gateway.verify import AccessTokenVerifier
from tests.conftest import Pki

from .authserver import AuthServer, SigningKey, ec_key, ed_key, rsa_key

AUD = "https://api.bank.example"


class FakeClock:
    """Wall-clock time that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def signing_keys() -> list[SigningKey]:
    return [rsa_key("rsa-1"), ec_key("ec-1"), ed_key("ed-1")]


async def _serve(app: web.Application, ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def auth_server(pki: Pki, signing_keys: list[SigningKey], clock: FakeClock) -> AsyncIterator[AuthServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.load_verify_locations(str(pki.ca_pem))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # tls_client_auth tests present a client certificate
    srv = AuthServer(keys=list(signing_keys), audience=AUD, clock=clock)
    runner, port = await _serve(srv.app(), ctx)
    srv.url = f"https://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


IssuerFactory = Callable[..., IssuerConfig]


@pytest.fixture
def issuer_cfg(auth_server: AuthServer, pki: Pki) -> IssuerFactory:
    """``issuer_cfg(**overrides)``: an IssuerConfig for the running AS (jwks_uri by default)."""

    def make(**overrides: Any) -> IssuerConfig:
        data: dict[str, Any] = {
            "name": "bank-as",
            "issuer": auth_server.issuer,
            "jwks_uri": f"{auth_server.url}/jwks",
            "ca": str(pki.ca_pem),
        }
        data.update(overrides)
        return IssuerConfig.model_validate({k: v for k, v in data.items() if v is not None})

    return make


def introspection_block(auth_server: AuthServer, **overrides: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "endpoint": f"{auth_server.url}/introspect",
        "client_auth": {"method": "client_secret_basic", "client_id": "gateway", "client_secret": "s3cret:+/="},
    }
    block.update(overrides)
    return block


def policy(**overrides: Any) -> AuthPolicy:
    data: dict[str, Any] = {"issuers": ["bank-as"], "audience": AUD, "sender_constraint": "none"}
    data.update(overrides)
    return AuthPolicy.model_validate(data)


@pytest.fixture
async def make_verifier(clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """``await make_verifier(*issuer_cfgs, start=True)`` -> a started AccessTokenVerifier."""
    made: list[AccessTokenVerifier] = []

    async def make(*cfgs: IssuerConfig, start: bool = True) -> AccessTokenVerifier:
        v = AccessTokenVerifier(cfgs, clock=clock)
        made.append(v)
        if start:
            await v.start()
        return v

    yield make
    for v in made:
        await v.close()
