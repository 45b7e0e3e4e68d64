"""Fixtures for the decision service's HTTP fronts: an AS key, the example configs rendered for a
test (ports, key files), a real gateway with its decision listener, a real nginx in front."""

from __future__ import annotations

import copy
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from multidict import CIMultiDictProxy

from gateway.config import parse_config
from gateway.server import GatewayServer
from tests.conftest import Pki, Upstream
from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import Signer, es256

from .nginx import Nginx, free_port

REPO = Path(__file__).resolve().parents[2]
NGINX_EXAMPLE = REPO / "config" / "examples" / "nginx-auth-request"
TRAEFIK_EXAMPLE = REPO / "config" / "examples" / "traefik-forward-auth"
ISS = "https://as.bank.example"
AUD = "https://api.bank.example"
NONCE_SECRET = "decision-http-tests-nonce-secret-0123456789"


@pytest.fixture
def as_key(tmp_path: Path) -> AsKey:
    return AsKey(tmp_path)


@pytest.fixture(scope="session")
def k1() -> Signer:
    return es256()


def gateway_config(example: Path, as_key: AsKey, *, origin: str, trusted: list[str],
                   decision_host: str = "127.0.0.1") -> dict[str, Any]:
    """The example's gateway.yaml with test ports, the test AS key and the test origin; the rest
    (routes, policies, trust) as written."""
    cfg: dict[str, Any] = copy.deepcopy(yaml.safe_load((example / "gateway.yaml").read_text()))
    cfg["listen"].update(port=0, external_origin=origin)
    cfg["decision"]["http"].update(host=decision_host, port=0, trusted_peers=trusted)
    cfg["admin"] = {"host": "127.0.0.1", "port": 0}
    (issuer,) = cfg["issuers"]
    assert issuer["issuer"] == ISS
    issuer.pop("discovery")
    issuer["jwks_file"] = str(as_key.jwks)
    cfg["dpop"]["nonce"]["secrets"] = [NONCE_SECRET]
    return cfg


def http_port(gw: GatewayServer) -> int:
    """The bound port of the gateway's decision HTTP listener."""
    assert gw.decision is not None, "decision not enabled"
    return gw.decision.http_port


async def start_gateway(cfg: dict[str, Any]) -> GatewayServer:
    server = GatewayServer(parse_config(yaml.safe_dump(cfg), source="test.yaml"))
    await server.start()
    return server


def render_nginx(pki: Pki, *, nginx_port: int, decision_port: int, upstream_port: int) -> str:
    """The example server block with this test's ports and certificate files; each replacement
    must hit, so an edit of the example that the test no longer matches fails here."""
    text = (NGINX_EXAMPLE / "fapi-api.conf").read_text()
    swaps = {
        "server 127.0.0.1:9192;": f"server 127.0.0.1:{decision_port};",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{nginx_port} ssl;",
        "/etc/nginx/tls/server.crt": str(pki.server_cert),
        "/etc/nginx/tls/server.key": str(pki.server_key),
        "/etc/nginx/tls/client-ca.pem": str(pki.ca_pem),
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"example nginx config changed: {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class NginxStack:
    gateway: GatewayServer
    nginx: Nginx
    port: int
    origin: str
    upstream: Upstream
    pki: Pki

    async def send(self, path: str, headers: list[tuple[str, str]] | None = None, *, method: str = "GET",
                   client: str | None = "a") -> tuple[int, CIMultiDictProxy[str], str]:
        cert = {"a": self.pki.client_a, "b": self.pki.client_b, None: None}[client]
        ctx: ssl.SSLContext = self.pki.client_context(cert)
        async with aiohttp.ClientSession() as s, s.request(
            method, self.origin + path, headers=headers or [], ssl=ctx
        ) as r:
            return r.status, r.headers, await r.text()


StackFactory = Callable[..., Awaitable[NginxStack]]


@pytest.fixture
async def nginx_stack(pki: Pki, upstream: Upstream, as_key: AsKey, tmp_path: Path) -> AsyncIterator[StackFactory]:
    made: list[NginxStack] = []

    async def make(*, trusted: list[str] | None = None) -> NginxStack:
        port = free_port()
        origin = f"https://localhost:{port}"
        gw = await start_gateway(gateway_config(NGINX_EXAMPLE, as_key, origin=origin,
                                                trusted=trusted or ["127.0.0.1/32"]))
        up_port = int(re.sub(r".*:", "", upstream.url))
        decision_port = http_port(gw)
        nginx = Nginx(tmp_path / f"nginx-{len(made)}", render_nginx(
            pki, nginx_port=port, decision_port=decision_port, upstream_port=up_port))
        stack = NginxStack(gw, nginx, port, origin, upstream, pki)
        made.append(stack)
        await nginx.start(port)
        return stack

    yield make
    for stack in made:
        await stack.nginx.stop()
        await stack.gateway.stop()


@pytest.fixture(scope="session")
def k2() -> Signer:
    return es256()
