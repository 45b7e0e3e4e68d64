"""Refused TLS handshakes are counted by reason, with real handshakes on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import warnings
from collections.abc import Callable

import pytest
import trustme
import uvloop

from gateway.observability.tls import count_handshake_failures


def _server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _client(
    port: int, ca: trustme.CA, *, cert: trustme.LeafCert | None, tls11: bool = False, read: bool = True
) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    if tls11:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x")
                if read:  # TLS 1.3: a refused client certificate shows up on the first read
                    s.recv(1)
        except (ssl.SSLError, OSError):
            pass


def _plain(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(OSError):
            s.recv(100)


async def _run(ctx: ssl.SSLContext, attempts: list[Callable[[int], None]]) -> list[str]:
    reasons: list[str] = []
    count_handshake_failures(ctx, reasons.append)
    loop = asyncio.get_running_loop()
    # Silence the loop's own report of the failed handshakes (uvloop logs them).
    loop.set_exception_handler(lambda _loop, _ctx: None)
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    for attempt in attempts:
        await asyncio.to_thread(attempt, port)
        await asyncio.sleep(0.05)
    server.close()
    await server.wait_closed()
    return reasons


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_refused_handshakes_are_classified(loop_kind: str) -> None:
    ca, other_ca = trustme.CA(), trustme.CA()
    good = ca.issue_cert("client-1")
    foreign = other_ca.issue_cert("client-2")
    attempts: list[Callable[[int], None]] = [
        lambda p: _client(p, ca, cert=None),
        lambda p: _client(p, ca, cert=foreign),
        lambda p: _client(p, ca, cert=good, read=False),  # accepted: not counted
        lambda p: _plain(p),
    ]
    if ssl.HAS_TLSv1_1:
        attempts.append(lambda p: _client(p, ca, cert=good, tls11=True))
    runner = uvloop.run if loop_kind == "uvloop" else asyncio.run
    reasons = runner(_run(_server_ctx(ca), attempts))
    assert reasons[:3] == ["client_cert_missing", "client_cert_unknown_ca", "plain_http"]
    if len(reasons) > 3:
        assert reasons[3] in ("protocol_version", "no_shared_cipher", "client_alert", "other")
