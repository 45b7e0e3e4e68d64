"""Fixtures: client signing keys and JWKS files, the gateway's signing key, a body-recording
upstream, a real gateway (TLS listener) with a DPoP + signed payments route, and a client."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import Signer, es256

from .support import ClientKey, config_body, write_jwks


@dataclass
class Keys:
    es: ClientKey
    ed: ClientKey
    ps: ClientKey
    other: ClientKey  # tpp-2's key
    jwks1: Path
    jwks2: Path
    gw_key: Path
    dpop: Signer


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("sigkeys")
    es, ed, ps = ClientKey("ES256", "tpp1-es"), ClientKey("Ed25519", "tpp1-ed"), ClientKey("PS256", "tpp1-ps")
    other = ClientKey("ES256", "tpp2-es")
    gw = ec.generate_private_key(ec.SECP256R1())
    gw_key = d / "gw.pem"
    gw_key.write_bytes(gw.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return Keys(es, ed, ps, other, write_jwks(d / "tpp1.json", es, ed, ps), write_jwks(d / "tpp2.json", other),
                gw_key, es256())


@pytest.fixture(scope="module")
def as_key(tmp_path_factory: pytest.TempPathFactory) -> AsKey:
    return AsKey(tmp_path_factory.mktemp("as"))


@dataclass
class BodyUpstream:
    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def body_upstream() -> AsyncIterator[BodyUpstream]:
    up = BodyUpstream()

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        up.bodies.append(body)
        up.headers.append(dict(request.headers))
        if request.path.startswith("/payments/big"):
            return web.Response(body=b"x" * int(request.query["n"]), content_type="application/octet-stream")
        return web.json_response({"ok": True, "sha256": hashlib.sha256(body).hexdigest()})

    app = web.Application(client_max_size=1 << 24)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield up
    await runner.cleanup()


Send = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]


@pytest.fixture
async def send(pki: Any) -> Send:
    async def go(port: int, method: str, path: str, headers: dict[str, str],
                 body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = aiohttp.TCPConnector(ssl=pki.client_context())
        async with aiohttp.ClientSession(connector=conn) as s, s.request(
            # encoded: the target goes out byte for byte as signed (yarl would re-normalise it)
            method, URL(f"https://127.0.0.1:{port}{path}", encoded=True), headers=headers, data=body
        ) as r:
            return r.status, dict(r.headers), await r.read()

    return go


@pytest.fixture
async def gw(gateway: Any, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys) -> Any:
    return await gateway(config_body(as_key, body_upstream.url, keys.jwks1, keys.jwks2, keys.gw_key))
