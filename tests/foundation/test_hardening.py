"""Request smuggling and HTTP hardening, over raw TLS sockets (checklist PRX-06..18, OPS-04).

Each malformed request must get a 4xx (or a closed connection) and never reach the upstream.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tests.conftest import OPEN_ROUTE as ROUTES
from tests.conftest import GatewayFactory, Pki, Upstream


async def raw_exchange(port: int, ctx: ssl.SSLContext, data: bytes, timeout: float = 5) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionResetError, ssl.SSLError):
            pass
        return out
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    if not response:
        return 0  # connection closed without a response: also a refusal
    return int(response.split(b" ", 2)[1])


SMUGGLING = {
    "PRX-06 TE+CL": b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /b HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "PRX-07a duplicate CL": b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 1\r\n\r\nabc",
    "PRX-07b CL list": b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1, 3\r\n\r\nabc",
    "PRX-07c CL plus": b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: +4\r\n\r\nabcd",
    "PRX-08a chunked not final": b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    b"0\r\n\r\n",
    "PRX-09a xchunked": b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "PRX-09b space before colon": b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\n",
    "PRX-09d chunk size 0x": b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0x5\r\nhello\r\n0\r\n\r\n",
    "PRX-09f bare LF chunk line": b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\nhello\r\n0\r\n\r\n",
    "PRX-09h CR in header": b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-Abc: \rxTransfer-Encoding: chunked\r\n\r\n",
    "PRX-10a no Host": b"GET /a HTTP/1.1\r\n\r\n",
    "PRX-10b two Hosts": b"GET /a HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
    "PRX-11a space before colon": b"GET /a HTTP/1.1\r\nHost: localhost\r\nAuthorization : DPoP x\r\n\r\n",
    "PRX-12a bare CR in value": b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-Test: a\rb\r\n\r\n",
    "PRX-12b NUL in value": b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-Test: a\x00b\r\n\r\n",
    "PRX-13a CONNECT": b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nConnection: close\r\n\r\n",
    "PRX-13b absolute-form": b"GET https://evil.example/a HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    "PRX-17b TRACE": b"TRACE /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    "PRX-18a huge header": b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_malformed_framing_refused(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, raw: bytes
) -> None:
    gw = await gateway(ROUTES.format(url=upstream.url))
    response = await raw_exchange(gw.port, pki.client_context(), raw)
    status = status_of(response)
    assert status == 0 or 400 <= status < 500, response[:200]
    assert upstream.requests == [], f"reached the upstream: {upstream.requests}"


async def test_upgrade_h2c_not_forwarded(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    """PRX-14: the upstream never sees Upgrade or HTTP2-Settings; the client gets no 101."""
    gw = await gateway(ROUTES.format(url=upstream.url))
    response = await raw_exchange(
        gw.port, pki.client_context(),
        b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 0\r\n\r\n", timeout=1,
    )
    assert status_of(response) != 101
    for rec in upstream.requests:
        assert rec.header("Upgrade") is None and rec.header("HTTP2-Settings") is None


async def test_options_max_forwards_zero_answered_locally(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """PRX-17a."""
    gw = await gateway(ROUTES.format(url=upstream.url))
    response = await raw_exchange(
        gw.port, pki.client_context(),
        b"OPTIONS /a HTTP/1.1\r\nHost: localhost\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
    )
    assert status_of(response) == 204
    assert upstream.requests == []


async def test_expect_continue_not_sent_before_authorisation(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """PRX-16: a request refused by the auth stage gets its final status without ``100 Continue``."""
    gw = await gateway(ROUTES.format(url=upstream.url).replace("auth: none", """auth:
      issuers: [as]
      audience: https://api.example
    """) + """
issuers:
  - name: as
    issuer: https://as.example
    jwks_file: {jwks}
""".format(jwks=pki.extra.setdefault("empty_jwks", _empty_jwks(pki))))
    response = await raw_exchange(
        gw.port, pki.client_context(),
        b"POST /a HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n"
        b"Connection: close\r\n\r\n", timeout=1,
    )
    assert not response.startswith(b"HTTP/1.1 100"), response[:100]
    assert status_of(response) == 401
    assert upstream.requests == []


async def test_expect_continue_sent_once_authorised(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    gw = await gateway(ROUTES.format(url=upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=pki.client_context(),
                                                   server_hostname="localhost")
    writer.write(b"POST /a HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
                 b"Connection: close\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readline(), 5)
    assert first.startswith(b"HTTP/1.1 100"), first
    await reader.readline()
    writer.write(b"hello")
    await writer.drain()
    final = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert b" 200 " in final
    assert upstream.last.body_bytes == 5


async def test_unsupported_expectation_is_417(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    """RFC 9110 §10.1.1: an expectation other than 100-continue is refused, never forwarded."""
    gw = await gateway(ROUTES.format(url=upstream.url))
    response = await raw_exchange(
        gw.port, pki.client_context(),
        b"POST /a HTTP/1.1\r\nHost: localhost\r\nExpect: teapot\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello", timeout=2,
    )
    assert status_of(response) == 417
    assert b"expectation_failed" in response
    assert upstream.requests == []


def test_c_parser_is_active() -> None:
    """OPS-04: the llhttp C parser, not the pure-Python fallback, parses requests."""
    from aiohttp import http_parser

    assert http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"


def _empty_jwks(pki: Pki) -> str:
    path = pki.dir / "empty-jwks.json"
    path.write_text('{"keys": []}')
    return str(path)
