"""Shared fixtures: a throwaway PKI made in the test session, a recording upstream, a real gateway.

Everything runs for real: TLS handshakes with certificates made here, real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from gateway.config import GatewayConfig, parse_config
from gateway.server import GatewayServer

# The shared Redis fixture (real redis-server: the machine's, or one the tests start).
pytest_plugins = ["tests.redis_fixture"] if (Path(__file__).parent / "redis_fixture.py").exists() else []


@dataclass
class ClientCert:
    cert: Path
    key: Path
    pem: bytes
    der: bytes


@dataclass
class Pki:
    """Files for a CA, a server cert (localhost/127.0.0.1), client certs A and B, and a foreign CA."""

    dir: Path
    ca: trustme.CA
    ca_pem: Path
    server_cert: Path
    server_key: Path
    client_a: ClientCert
    client_b: ClientCert
    other_ca_pem: Path
    foreign_client: ClientCert
    extra: dict[str, Any] = field(default_factory=dict)

    def client_context(self, client: ClientCert | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        return ctx


def _client(ca: trustme.CA, d: Path, name: str) -> ClientCert:
    leaf = ca.issue_cert(f"{name}@tpp.example", common_name=name)
    cert = d / f"{name}.pem"
    key = d / f"{name}-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    pem = leaf.cert_chain_pems[0].bytes()
    return ClientCert(cert, key, pem, ssl.PEM_cert_to_DER_cert(pem.decode()))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca_pem = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    # RSA like most bank deployments; an ECDSA server cert is in ``extra`` for the ECDSA suites.
    server = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server-key.pem"))
    ec_server = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.ECDSA)
    ec_server.cert_chain_pems[0].write_to_path(str(d / "server-ec.pem"))
    ec_server.private_key_pem.write_to_path(str(d / "server-ec-key.pem"))
    other = trustme.CA()
    other_ca_pem = d / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca_pem))
    return Pki(
        dir=d,
        ca=ca,
        ca_pem=ca_pem,
        server_cert=d / "server.pem",
        server_key=d / "server-key.pem",
        client_a=_client(ca, d, "client-a"),
        client_b=_client(ca, d, "client-b"),
        other_ca_pem=other_ca_pem,
        foreign_client=_client(other, d, "foreign"),
        extra={"server_ec_cert": d / "server-ec.pem", "server_ec_key": d / "server-ec-key.pem"},
    )


@dataclass
class Recorded:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_bytes: int

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Upstream:
    """A recording upstream. ``/slow?s=N`` sleeps, ``/download?n=BYTES`` streams, others echo."""

    url: str
    requests: list[Recorded]
    response_headers: list[tuple[str, str]]

    @property
    def last(self) -> Recorded:
        return self.requests[-1]


async def _recording_handler(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    n = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        n += len(chunk)
    up.requests.append(Recorded(request.method, request.raw_path, list(request.headers.items()), n))
    if request.path.startswith("/slow"):
        await asyncio.sleep(float(request.query.get("s", "5")))
    if request.path.startswith("/download"):
        size = int(request.query["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * (256 * 1024)
        sent = 0
        while sent < size:
            part = block[: min(len(block), size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp
    resp_headers = list(up.response_headers)
    r = web.json_response({"ok": True, "path": request.raw_path, "body_bytes": n})
    for k, v in resp_headers:
        r.headers.add(k, v)
    return r


UPSTREAM = web.AppKey("upstream", Upstream)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _recording_handler)
    up = Upstream("", [], [])
    app[UPSTREAM] = up
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await runner.cleanup()


# One open route to ``{url}`` (``.format(url=...)``): for tests about TLS and HTTP, not auth.
OPEN_ROUTE = """
routes:
  - id: open
    match: {{path_prefix: /}}
    upstream: {url}
    auth: none
"""


def gateway_yaml(pki: Pki, body: str, *, client_auth: str = "optional", profile: str = "fapi") -> str:
    """A full config: TLS listener on an ephemeral port with the session PKI, plus ``body``."""
    head = f"""
    listen:
      host: 127.0.0.1
      port: 0
      tls:
        cert: {pki.server_cert}
        key: {pki.server_key}
        client_ca: [{pki.ca_pem}]
        client_auth: {client_auth}
        profile: {profile}
      allowed_hosts: [localhost, 127.0.0.1]  # the names tests connect with (and DPoP htu host)
    admin: {{host: 127.0.0.1, port: 0}}
    """
    return textwrap.dedent(head) + textwrap.dedent(body)


GatewayFactory = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
async def gateway(pki: Pki) -> AsyncIterator[GatewayFactory]:
    """``await gateway(yaml_body, client_auth=...)`` starts a real gateway; stopped after the test."""
    started: list[GatewayServer] = []

    async def start(body: str, *, client_auth: str = "optional", profile: str = "fapi",
                    raw: bool = False) -> GatewayServer:
        text = body if raw else gateway_yaml(pki, body, client_auth=client_auth, profile=profile)
        cfg: GatewayConfig = parse_config(text, source="test.yaml")
        server = GatewayServer(cfg)
        await server.start()
        started.append(server)
        return server

    yield start
    for s in started:
        await s.stop()
