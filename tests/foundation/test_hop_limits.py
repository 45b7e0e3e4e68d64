"""Where one hop ends: forwarding loops, Max-Forwards, request bodies the upstream must never
complete, and transfer codings (issue #13 findings 17 and 20; checklist PRX-04, PRX-08, PRX-17, PRX-18).

The upstream here is a raw socket server parsing with llhttp, so the test sees exactly which bytes
arrived and whether they ever made a complete request.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field

import aiohttp
import httptools
import pytest

from gateway.config import parse_config
from gateway.server import GatewayServer
from tests.conftest import OPEN_ROUTE, GatewayFactory, Pki, Upstream, gateway_yaml
from tests.foundation.test_hardening import raw_exchange, status_of

# --- a raw recording upstream ------------------------------------------------------------------


@dataclass
class Conn:
    data: bytearray = field(default_factory=bytearray)
    completed: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    parse_error: bool = False
    closed: bool = False


class _Proto(asyncio.Protocol):
    def __init__(self, server: RawUpstream) -> None:
        self.server = server
        self.conn = Conn()
        server.conns.append(self.conn)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn.data += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.conn.parse_error = True
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.closed = True

    def on_url(self, url: bytes) -> None:
        self._url = url.decode()

    def on_headers_complete(self) -> None:
        self.conn.started.append(self._url)
        if self._url.startswith("/early"):
            self._answer()  # answers before reading the body, and keeps the connection

    def on_message_complete(self) -> None:
        self.conn.completed.append(self._url)
        if not self._url.startswith("/early"):
            self._answer()

    def _answer(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class RawUpstream:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Proto(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    @property
    def completed(self) -> list[str]:
        return [u for c in self.conns for u in c.completed]


@pytest.fixture
async def raw_upstream() -> RawUpstream:
    up = RawUpstream()
    await up.start()
    yield up  # type: ignore[misc]
    assert up.server is not None
    up.server.close()


async def tls_open(port: int, pki: Pki) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(), server_hostname="localhost")


async def read_response(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    m = re.search(rb"(?i)content-length: *(\d+)", head)
    body = await asyncio.wait_for(reader.readexactly(int(m.group(1))), timeout) if m else b""
    return head + body


def route(url: str, extra: str = "") -> str:
    return f"""
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: {url}
        auth: none{extra}
    """


# --- finding 20: bodies over the limit ----------------------------------------------------------


async def test_chunked_body_over_small_limit_never_reaches_the_upstream(
    gateway: GatewayFactory, raw_upstream: RawUpstream, pki: Pki
) -> None:
    """A chunked body over ``max_body_bytes`` small enough to be read first: 413, and the upstream
    never even sees the request head."""
    gw = await gateway(route(raw_upstream.url, "\n        max_body_bytes: 1000"))
    reader, writer = await tls_open(gw.port, pki)
    writer.write(b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(6):
        writer.write(b"1f4\r\n" + b"y" * 500 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
    response = await read_response(reader)
    writer.close()
    assert status_of(response) == 413, response[:200]
    await asyncio.sleep(0.2)
    assert raw_upstream.completed == []
    assert all(not c.data for c in raw_upstream.conns), "bytes reached the upstream"


async def test_chunked_body_over_limit_while_streaming_is_aborted_upstream(
    gateway: GatewayFactory, raw_upstream: RawUpstream, pki: Pki
) -> None:
    """Past the first buffered piece the body streams; crossing the limit aborts the upstream
    connection mid-message, so the upstream holds an incomplete request, never a complete one."""
    gw = await gateway(route(raw_upstream.url, "\n        max_body_bytes: 300000"))
    reader, writer = await tls_open(gw.port, pki)
    writer.write(b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"z" * 50_000
    try:
        for _ in range(10):
            writer.write(b"%x\r\n%b\r\n" % (len(block), block))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except (ConnectionResetError, ssl.SSLError):
        pass
    response = await read_response(reader)
    writer.close()
    assert status_of(response) == 413, response[:200]
    await asyncio.sleep(0.3)
    assert raw_upstream.completed == []
    assert raw_upstream.conns, "the body should have started streaming"
    for c in raw_upstream.conns:
        assert c.closed
        assert not c.data.endswith(b"0\r\n\r\n")


async def test_upstream_answering_before_the_body_ends_gets_a_fresh_connection_next(
    gateway: GatewayFactory, raw_upstream: RawUpstream, pki: Pki
) -> None:
    """An upstream may answer before reading the whole body (and keep the connection). The rest of
    the body is then not sent, so that connection is mid-request: it must never carry another
    request (whose bytes would be read as the first one's body: a desync)."""
    gw = await gateway(route(raw_upstream.url, "\n        max_body_bytes: 1000000"))
    reader, writer = await tls_open(gw.port, pki)
    size = 200_000
    writer.write(b"POST /early HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % size)
    writer.write(b"a" * 100_000)
    await writer.drain()
    await asyncio.sleep(0.3)  # the upstream has answered by now
    writer.write(b"a" * 100_000)
    await writer.drain()
    first = await read_response(reader)
    assert status_of(first) == 200, first[:200]
    writer.write(b"GET /second HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    second = await read_response(reader, timeout=8)
    writer.close()
    assert status_of(second) == 200, second[:200]
    assert "/second" in raw_upstream.completed
    assert not any(c.parse_error for c in raw_upstream.conns)


# --- finding 20: transfer codings ---------------------------------------------------------------


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate, chunked", b"gzip", b"identity"])
async def test_unsupported_transfer_coding_refused_and_never_forwarded(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, coding: bytes
) -> None:
    """RFC 9112 §6.1: a transfer coding the server does not understand SHOULD get 501. The gateway
    decodes chunked only; forwarding the body with the gzip layer silently dropped would hand the
    upstream compressed bytes as if they were the content. The connection is closed after."""
    gw = await gateway(OPEN_ROUTE.format(url=upstream.url))
    raw = b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    response = await raw_exchange(gw.port, pki.client_context(), raw + b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status = status_of(response)
    if b"chunked" in coding:
        assert status == 501, response[:300]
        assert b"connection: close" in response.lower()
    else:
        assert status in (400, 501), response[:300]
    assert response.count(b"HTTP/1.") == 1  # closed: the pipelined request is not answered
    assert upstream.requests == []


# --- finding 17: loops ---------------------------------------------------------------------------


def _requests_total(gw: GatewayServer) -> float:
    text = gw.metrics.render().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_route_pointing_at_the_gateway_itself_is_a_508_not_a_storm(
    gateway: GatewayFactory, pki: Pki, unused_tcp_port: int
) -> None:
    """PRX-04: the second pass sees our own pseudonym in Via and refuses (508 Loop Detected)."""
    port = unused_tcp_port
    text = gateway_yaml(pki, f"""
    upstreams:
      self: {{url: "https://localhost:{port}", ca: "{pki.ca_pem}"}}
    routes:
      - id: loop
        match: {{path_prefix: /}}
        upstream: self
        auth: none
    """).replace("port: 0", f"port: {port}", 1)
    gw = await gateway(text, raw=True)
    async with aiohttp.ClientSession() as s:
        r = await asyncio.wait_for(s.get(f"https://localhost:{port}/x", ssl=pki.client_context()), 10)
        assert r.status == 508, await r.text()
        assert (await r.json())["error"] == "forwarding_loop"
    await asyncio.sleep(0.2)
    assert _requests_total(gw) == 2


async def test_own_pseudonym_in_via_is_refused_and_others_pass(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    from gateway.proxy.headers import default_pseudonym

    gw = await gateway(route(upstream.url))
    cfg = gw.cfg
    mine = default_pseudonym(cfg)
    assert re.fullmatch(r"fapi-gateway-[0-9a-f]{12}", mine)
    async with aiohttp.ClientSession() as s:
        for via in (f"1.1 {mine}", f"1.0 other, HTTP/1.1 {mine.upper()} (comment, with comma)",
                    f"1.1 a, 1.1 {mine}"):
            r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(), headers={"Via": via})
            assert r.status == 508, via
        assert upstream.requests == []
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(),
                        headers={"Via": "1.1 fapi-gateway-000000000000, 1.1 edge (x)"})
        assert r.status == 200
    assert upstream.last.header("Via") == f"1.1 fapi-gateway-000000000000, 1.1 edge (x), 1.1 {mine}"


def test_pseudonym_configurable_stable_and_distinct_per_deployment(pki: Pki) -> None:
    from gateway.proxy.headers import default_pseudonym

    a = parse_config(gateway_yaml(pki, OPEN_ROUTE.format(url="http://u")), source="a.yaml")
    b = parse_config(gateway_yaml(pki, OPEN_ROUTE.format(url="http://u")).replace(
        "admin:", "  external_origin: https://api.bank.example\nadmin:", 1), source="b.yaml")
    assert default_pseudonym(a) == default_pseudonym(a)  # replicas with the same cert agree
    assert default_pseudonym(a) != default_pseudonym(b)
    c = parse_config(gateway_yaml(pki, "proxy: {pseudonym: edge-gw-1}\n" + OPEN_ROUTE.format(url="http://u")),
                     source="c.yaml")
    assert default_pseudonym(c) == "edge-gw-1"
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match=r"proxy\.pseudonym"):
        parse_config(gateway_yaml(pki, 'proxy: {pseudonym: "bad name,x"}\n' + OPEN_ROUTE.format(url="http://u")),
                     source="d.yaml")


async def test_max_forwards_is_decremented(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    gw = await gateway(route(upstream.url))
    async with aiohttp.ClientSession() as s:
        for sent, seen in (("5", "4"), ("1", "0"), ("0", "0")):
            r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(),
                            headers={"Max-Forwards": sent})
            assert r.status == 200
            assert upstream.last.header("Max-Forwards") == seen
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context())
        assert upstream.last.header("Max-Forwards") is None
        for bad in ("-1", "x", "1, 2"):
            r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(), headers={"Max-Forwards": bad})
            assert r.status == 400, bad
