"""Slow clients on raw TLS sockets (issue #13, finding 14; checklist PRX-18d/e).

Deadlines in these configs are small so the tests are quick; each test waits far longer than the
deadline it checks (and far less than the old behaviour: keep-alive 3630 s, handshake 60 s, no
header or body deadline), so it fails on a gateway without the deadline and passes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.config.listener import ListenerLimits
from gateway.errors import ConfigError
from gateway.server import GatewayServer
from tests.conftest import GatewayFactory, Pki, Upstream

pytestmark = pytest.mark.timeout(90)

# Longer than every deadline below, far shorter than the defaults they replace.
WAIT_S = 8.0


def config(pki: Pki, url: str, limits: str, route_extra: str = "") -> str:
    """A full config: the fixture's TLS listener with ``limits``, one open route."""
    return f"""
listen:
  host: 127.0.0.1
  port: 0
  tls:
    cert: {pki.server_cert}
    key: {pki.server_key}
    client_ca: [{pki.ca_pem}]
    client_auth: optional
  limits: {{{limits}}}
admin: {{host: 127.0.0.1, port: 0}}
routes:
  - id: open
    match: {{path_prefix: /}}
    upstream: {url}
    auth: none
    {route_extra}
"""


async def tls_open(port: int, pki: Pki) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(), server_hostname="localhost")


async def read_until_closed(reader: asyncio.StreamReader, wait_s: float = WAIT_S) -> tuple[bool, bytes]:
    """(closed by the server within ``wait_s``, bytes received)."""
    got = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        return False, got
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    return True, got


async def until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < end, "gave up waiting"
        await asyncio.sleep(0.01)


def closed_count(gw: GatewayServer, reason: str) -> float:
    value = gw.metrics.registry.get_sample_value("gateway_connections_closed_total", {"reason": reason})
    return value or 0.0


GET = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def test_idle_new_tls_connection_closed_after_header_timeout(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """A TLS connection that never sends a request is closed after ``header_timeout_s``."""
    gw = await gateway(config(pki, upstream.url, "header_timeout_s: 0.5, idle_timeout_s: 60"), raw=True)
    reader, writer = await tls_open(gw.port, pki)
    try:
        closed, got = await read_until_closed(reader)
        assert closed, "an idle new connection is still open"
        assert got == b""  # nothing was asked: nothing is answered (no stray 408)
    finally:
        writer.close()


async def test_keep_alive_connection_closed_after_idle_timeout(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    gw = await gateway(config(pki, upstream.url, "header_timeout_s: 30, idle_timeout_s: 0.5"), raw=True)
    reader, writer = await tls_open(gw.port, pki)
    try:
        writer.write(GET)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        closed, _ = await read_until_closed(reader)
        assert closed, "an idle keep-alive connection is still open"
    finally:
        writer.close()


async def test_slowloris_header_drip_cut_off(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    """PRX-18d: one header line every 0.2 s never completes a head; the header deadline (1 s)
    closes the connection although it is never idle (idle_timeout_s is 60)."""
    gw = await gateway(config(pki, upstream.url, "header_timeout_s: 1, idle_timeout_s: 60"), raw=True)
    reader, writer = await tls_open(gw.port, pki)
    loop = asyncio.get_running_loop()
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\n")
        end = loop.time() + WAIT_S
        cut_off = False
        n = 0
        while loop.time() < end:
            try:
                writer.write(b"X-Drip-%d: a\r\n" % n)
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                cut_off = True
                break
            if reader.at_eof():
                cut_off = True
                break
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(65536), 0.2)
                if not data or data.startswith(b"HTTP/1.1 408"):
                    cut_off = True
                    break
            n += 1
        assert cut_off, "a dripped request head was still being read after 8 s"
        assert upstream.requests == []
        assert closed_count(gw, "header_timeout") == 1
    finally:
        writer.close()


@pytest.mark.parametrize("length", [100, 1_000_000], ids=["buffered", "streamed"])
async def test_slow_body_408_and_nothing_reaches_upstream(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, length: int
) -> None:
    """A body that stops arriving gets 408 (connection closed) within ``body_timeout_s``; the
    upstream never sees a complete request and its connection is not held."""
    gw = await gateway(config(pki, upstream.url, "body_timeout_s: 0.5, idle_timeout_s: 60",
                              "max_body_bytes: 2000000"), raw=True)
    reader, writer = await tls_open(gw.port, pki)
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % length)
        writer.write(b"a" * min(length // 2, 200_000))
        await writer.drain()
        closed, got = await read_until_closed(reader)
        assert closed, "a stalled body still holds the connection"
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"connection: close" in got.lower()
        assert upstream.requests == []
    finally:
        writer.close()


async def test_dripped_body_below_min_rate_408(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    """A streamed body dripped slower than ``body_min_rate_bytes_s`` (never idle long enough for the
    per-read deadline) still gets 408: it cannot hold the upstream connection for hours."""
    limits = "body_timeout_s: 1, body_min_rate_bytes_s: 10000, idle_timeout_s: 60"
    gw = await gateway(config(pki, upstream.url, limits, "max_body_bytes: 2000000"), raw=True)
    reader, writer = await tls_open(gw.port, pki)
    loop = asyncio.get_running_loop()
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n")
        end = loop.time() + WAIT_S
        got = b""
        while loop.time() < end and not got:
            try:
                writer.write(b"d" * 200)  # 1000 B/s, a read every 0.2 s
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                break
            with contextlib.suppress(TimeoutError):
                got = await asyncio.wait_for(reader.read(65536), 0.2)
        assert got.startswith(b"HTTP/1.1 408"), f"still reading a dripped body after {WAIT_S} s: {got[:100]!r}"
        assert upstream.requests == []
    finally:
        writer.close()


async def test_tls_handshake_timeout(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    """A TCP connection that never starts the TLS handshake is dropped after handshake_timeout_s."""
    gw = await gateway(config(pki, upstream.url, "handshake_timeout_s: 0.5"), raw=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        closed, _ = await read_until_closed(reader)
        assert closed, "a connection without a handshake is still open"
    finally:
        writer.close()


async def _partial_head(port: int, pki: Pki) -> asyncio.StreamWriter:
    _, writer = await tls_open(port, pki)
    writer.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\n")  # a head begun, never finished
    await writer.drain()
    return writer


async def test_connection_cap_refuses_when_all_busy_and_evicts_idle(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """PRX-18e: at ``max_connections`` a new connection first closes the oldest idle keep-alive
    connection; when none is idle (all have a request under way) it is closed at once."""
    limits = "max_connections: 3, header_timeout_s: 30, idle_timeout_s: 60"
    gw = await gateway(config(pki, upstream.url, limits), raw=True)
    guard = gw.connections
    assert guard is not None
    busy = [await _partial_head(gw.port, pki) for _ in range(3)]
    await until(lambda: guard.open == 3 and guard.idle == 0)  # the gateway has seen the heads begin
    try:
        reader, writer = await tls_open(gw.port, pki)
        closed, got = await read_until_closed(reader, 5.0)  # << header_timeout_s: not a timeout
        writer.close()
        assert closed and got == b""
        assert closed_count(gw, "over_capacity") == 1
    finally:
        for w in busy:
            w.close()
    await until(lambda: guard.open == 0)

    # Three idle keep-alive connections (each served one request) fill the cap again ...
    sessions = []
    for _ in range(3):
        s = aiohttp.ClientSession()
        sessions.append(s)
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context())
        assert r.status == 200
        await r.read()
    await until(lambda: guard.open == 3 and guard.idle == 3)
    try:
        # ... and a real client on a fresh connection is still served: an idle one makes room.
        async with aiohttp.ClientSession() as fresh:
            r = await fresh.get(f"https://localhost:{gw.port}/y", ssl=pki.client_context())
            assert r.status == 200
        assert closed_count(gw, "idle_evicted") >= 1
        assert closed_count(gw, "over_capacity") == 1
    finally:
        for s in sessions:
            await s.close()


async def test_client_that_stops_reading_releases_the_upstream(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """A client that never reads a large response is cut off after ``body_timeout_s`` of no
    progress instead of pinning the gateway's handler and upstream connection forever."""
    gw = await gateway(config(pki, upstream.url, "body_timeout_s: 0.5"), raw=True)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=pki.client_context(), server_hostname="localhost", limit=1024
    )
    try:
        writer.write(b"GET /download?n=268435456 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")  # the head arrived; then the client stops reading
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT_S
        while loop.time() < end and gw.metrics.in_flight.value > 0:
            await asyncio.sleep(0.1)
        assert gw.metrics.in_flight.value == 0, "the handler is still pinned by a client that does not read"
        assert closed_count(gw, "send_timeout") == 1
    finally:
        writer.close()


async def test_client_that_never_reads_buffered_responses_is_cut_off(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """The listener's own send deadline (not the relay's per-chunk one): a client pipelines many
    requests with small, buffered answers and never reads. Once the transport stops taking writes
    the send must be done within ``body_timeout_s``: the connection is closed and counted, and the
    handler is released. Fails on a listener that waits on the client without a deadline."""
    gw = await gateway(config(pki, upstream.url, "body_timeout_s: 0.5"), raw=True)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=pki.client_context(), server_hostname="localhost", limit=1024
    )
    # Each answer echoes the ~4 KB path (a buffered response, far below the relay's threshold);
    # together they are far more than the kernel buffers and the transport's high-water mark.
    one = b"GET /x?" + b"a" * 4000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    try:
        writer.write(one * 3000)
        await until(lambda: closed_count(gw, "send_timeout") == 1)
        await until(lambda: gw.metrics.in_flight.value == 0)
        closed, _ = await read_until_closed(reader)
        assert closed, "the connection of a client that never reads stays open"
    finally:
        writer.transport.abort()


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("header_timeout_s: 0", "t.yaml:2: listen.limits.header_timeout_s: Input should be greater than 0"),
        ("idle_timeout_s: 3630", "listen.limits.idle_timeout_s: Input should be less than or equal to 600"),
        ("max_connections: 0", "listen.limits.max_connections: Input should be greater than or equal to 1"),
        ("body_timeout: 5", "listen.limits.body_timeout: unknown key"),
        ("body_min_rate_bytes_s: 0", "listen.limits.body_min_rate_bytes_s: Input should be greater than or equal to 1"),
    ],
)
def test_bad_limits_named_at_load(limits: str, expected: str) -> None:
    text = f"listen:\n  limits: {{{limits}}}\nroutes:\n  - {{id: a, match: {{path_prefix: /}}, " \
           "upstream: 'http://127.0.0.1:9', auth: none}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml")
    assert expected in str(info.value)


def test_safe_defaults() -> None:
    limits = ListenerLimits()
    assert (limits.handshake_timeout_s, limits.header_timeout_s, limits.idle_timeout_s,
            limits.body_timeout_s, limits.body_min_rate_bytes_s, limits.max_connections) == (10, 10, 60, 30, 500, 2048)
