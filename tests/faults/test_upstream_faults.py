"""Upstream faults through the real gateway: refused, reset mid-body (request and response), slow
(read timeout), oversized response head; then recovery on the same gateway.

The upstream is a raw asyncio HTTP/1.1 server whose behaviour the test switches, so it can do
what a well-behaved framework never would (RST mid-body, a 100 KB header). Documented behaviour:
502 ``upstream_unavailable`` / 504 ``upstream_timeout`` while the response head has not been sent;
once it has, the client connection is cut (the only honest signal left); never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatewayFactory, Pki

from .conftest import access_logged, reason_count
from .faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(60)

READ_S = 0.5
BOUND_S = READ_S + 3.0


class RawUpstream:
    def __init__(self) -> None:
        self.mode = "ok"
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                mode = self.mode
                if mode == "reset_request_body":
                    await reader.readexactly(min(length, 1024))
                    return _rst(writer)
                await reader.readexactly(length)
                if mode == "hang":
                    await asyncio.sleep(3600)
                if mode == "reset_response_body":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 2000)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    return _rst(writer)
                if mode == "big_head":
                    writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    up = await RawUpstream().start()
    yield up
    await up.close()


@pytest.fixture
async def proxy(raw: RawUpstream) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(("127.0.0.1", raw.port)) as p:
        yield p


async def gw_for(gateway: GatewayFactory, proxy: FaultProxy, log: Path) -> Any:
    return await gateway(f"""
    observability:
      access_log: {{destination: file, file: "{log}"}}
    upstreams:
      api: {{url: "http://127.0.0.1:{proxy.port}", timeouts: {{connect_s: {READ_S}, read_s: {READ_S}}}}}
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: api
        auth: none
    """)


async def request(gw: Any, pki: Pki, *, method: str = "GET", data: bytes | None = None) -> tuple[int | str, float]:
    start = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, s.request(
            method, f"https://localhost:{gw.port}/x", ssl=pki.client_context(), data=data
        ) as r:
            await r.read()
            return r.status, time.monotonic() - start
    except aiohttp.ClientPayloadError:
        return "cut", time.monotonic() - start


FAULTS = {
    # fault -> (status seen by the client, reason code)
    "refused": (502, "upstream_unavailable"),
    "reset_before_answer": (502, "upstream_unavailable"),
    "reset_request_body": (502, "upstream_unavailable"),
    "reset_response_body": ("cut", None),
    "slow": (504, "upstream_timeout"),
    "big_head": (502, "upstream_unavailable"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_upstream_fault_then_recovery(
    fault: str, gateway: GatewayFactory, raw: RawUpstream, proxy: FaultProxy, pki: Pki, tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    gw = await gw_for(gateway, proxy, log)
    assert (await request(gw, pki))[0] == 200
    expected, reason = FAULTS[fault]
    kw: dict[str, Any] = {}
    if fault == "refused":
        await proxy.set_mode("refuse")
    elif fault == "reset_before_answer":
        await proxy.set_mode("reset")
    elif fault == "slow":
        raw.mode = "hang"
    else:
        raw.mode = fault
    if fault == "reset_request_body":
        kw = {"method": "POST", "data": b"y" * (1024 * 1024)}
    status, took = await request(gw, pki, **kw)
    assert status == expected, fault
    assert took < BOUND_S, f"{fault}: answered after {took:.2f}s"
    if reason is not None:
        assert reason_count(gw, status=int(expected), reason=reason) == 1
        await access_logged(log, reason)
    # Recovery on the same gateway, no restart.
    raw.mode = "ok"
    await proxy.set_mode("forward")
    assert (await request(gw, pki))[0] == 200
