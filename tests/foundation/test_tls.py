"""Real handshakes against the gateway listener: client auth modes and the FAPI TLS profile.

Checklist TLS-01..03: TLS 1.2+ only; under ``profile: fapi`` TLS 1.2 is limited to
ECDHE-(RSA|ECDSA)-AES(128|256)-GCM; TLS 1.3 allowed.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from tests.conftest import OPEN_ROUTE as ROUTES
from tests.conftest import GatewayFactory, Pki, Upstream, gateway_yaml

FAPI_SUITES = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]
NON_FAPI_TLS12 = [
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA",
    "AES128-GCM-SHA256",
    "DHE-RSA-AES128-GCM-SHA256",
]


async def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    """Handshake and one request; returns (tls version, cipher) or raises on refusal."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    try:
        sslobj = writer.get_extra_info("ssl_object")
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        if not line:
            raise ConnectionResetError("closed without an HTTP response")
        cipher = sslobj.cipher()
        return sslobj.version(), cipher[0] if cipher else None
    finally:
        writer.close()


def _tls12_client(pki: Pki, cipher: str) -> ssl.SSLContext:
    ctx = pki.client_context(pki.client_a)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    return ctx


async def test_required_client_auth_refuses_handshake_without_cert(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    gw = await gateway(ROUTES.format(url=upstream.url), client_auth="required")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        await _handshake(gw.port, pki.client_context())
    assert await _handshake(gw.port, pki.client_context(pki.client_a))
    assert upstream.requests and len(upstream.requests) == 1


async def test_cert_from_another_ca_refused(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    for mode in ("required", "optional"):
        gw = await gateway(ROUTES.format(url=upstream.url), client_auth=mode)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            await _handshake(gw.port, pki.client_context(pki.foreign_client))
    assert upstream.requests == []


async def test_optional_client_auth_lets_request_through_without_cert(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    gw = await gateway(ROUTES.format(url=upstream.url), client_auth="optional")
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context())
        assert r.status == 200


@pytest.mark.parametrize("cipher", FAPI_SUITES)
async def test_fapi_tls12_suites_accepted(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, cipher: str
) -> None:
    gw = await gateway(ROUTES.format(url=upstream.url))
    version, negotiated = await _handshake(gw.port, _tls12_client(pki, cipher))
    assert (version, negotiated) == ("TLSv1.2", cipher)


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"])
async def test_fapi_tls12_ecdsa_suites_with_ecdsa_server_key(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, cipher: str
) -> None:
    text = gateway_yaml(pki, ROUTES.format(url=upstream.url)).replace(
        str(pki.server_cert), str(pki.extra["server_ec_cert"])
    ).replace(str(pki.server_key), str(pki.extra["server_ec_key"]))
    gw = await gateway(text, raw=True)
    version, negotiated = await _handshake(gw.port, _tls12_client(pki, cipher))
    assert (version, negotiated) == ("TLSv1.2", cipher)
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        await _handshake(gw.port, _tls12_client(pki, "ECDHE-ECDSA-CHACHA20-POLY1305"))


@pytest.mark.parametrize("cipher", NON_FAPI_TLS12)
async def test_non_fapi_tls12_suites_refused(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, cipher: str
) -> None:
    gw = await gateway(ROUTES.format(url=upstream.url), profile="fapi")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        await _handshake(gw.port, _tls12_client(pki, cipher + ":@SECLEVEL=0"))


async def test_chacha20_allowed_by_default_profile_only(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """Control for the refusals above: the same client suite works where the profile allows it."""
    gw = await gateway(ROUTES.format(url=upstream.url), profile="default")
    assert await _handshake(gw.port, _tls12_client(pki, "ECDHE-RSA-CHACHA20-POLY1305")) == (
        "TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305")


async def test_tls13_accepted(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    gw = await gateway(ROUTES.format(url=upstream.url))
    ctx = pki.client_context(pki.client_a)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    version, _ = await _handshake(gw.port, ctx)
    assert version == "TLSv1.3"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"])
async def test_tls10_and_11_refused(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, version: ssl.TLSVersion
) -> None:
    def old_client() -> ssl.SSLContext:
        ctx = pki.client_context(pki.client_a)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = version
        ctx.maximum_version = version
        return ctx

    # Control: the same client does complete a handshake with a server that allows it, so the
    # refusal below is the gateway's doing, not this OpenSSL build's.
    control = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    control.set_ciphers("DEFAULT:@SECLEVEL=0")
    control.minimum_version = version
    control.load_cert_chain(str(pki.server_cert), str(pki.server_key))

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()

    srv = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=control)
    port = srv.sockets[0].getsockname()[1]
    try:
        await _handshake(port, old_client())
    except (ssl.SSLError, ConnectionResetError) as exc:
        pytest.skip(f"this OpenSSL cannot speak {version.name} at all: {exc}")
    finally:
        srv.close()
    gw = await gateway(ROUTES.format(url=upstream.url))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        await _handshake(gw.port, old_client())
    assert upstream.requests == []
