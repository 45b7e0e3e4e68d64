"""The client certificate from our own handshake (MTLS-01, MTLS-02, MTLS-10)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.config.mtls import ClientCertConfig
from gateway.model import PeerCertificate, sha256_b64url
from gateway.tls.peer import peer_certificate
from gateway.tls.reload import TlsContextManager

from .conftest import Pki, connect, leaf_der, serve


def identity_app(seen: list[PeerCertificate | None]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        peer = peer_certificate(request)
        seen.append(peer)
        return web.Response(text=peer.x5t_s256 if peer else "none")

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def test_handshake_certificate_parsed_once_per_connection(mpki: Pki) -> None:
    seen: list[PeerCertificate | None] = []
    mgr = TlsContextManager(mpki.listener(), ClientCertConfig())
    async with serve(identity_app(seen), mgr.listening_context) as port:
        conn = await connect(port, mpki.client_ctx(mpki.client_a))
        for _ in range(3):
            status, body = await conn.get()
            assert status == 200 and body.decode() == sha256_b64url(leaf_der(mpki.client_a))
        await conn.close()
        conn = await connect(port, mpki.client_ctx(mpki.client_b))
        assert (await conn.get())[1].decode() == sha256_b64url(leaf_der(mpki.client_b))
        await conn.close()
        conn = await connect(port, mpki.client_ctx())  # optional client auth, no certificate
        assert (await conn.get())[1] == b"none"
        await conn.close()
    # The same object on one connection (cached), a new one on the next connection.
    assert seen[0] is seen[1] is seen[2]
    assert seen[3] is not None and seen[3] is not seen[0] and seen[4] is None
    assert seen[0] is not None and seen[0].der == leaf_der(mpki.client_a) and seen[0].source == "tls"


async def test_plain_http_has_no_certificate() -> None:
    seen: list[PeerCertificate | None] = []
    async with (
        serve(identity_app(seen), None) as port,
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/") as resp,
    ):
        assert await resp.text() == "none"
    assert seen == [None]
