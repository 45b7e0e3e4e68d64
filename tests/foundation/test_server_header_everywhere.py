"""Issue #21 item 7 follow-up: one Server-header policy for every response of the public listener.

``proxy.server_header`` used to reach proxied responses and a route's refusals only; a 404 before
any route matched, a 400/505 at the wire, a 405 and the 408 of a slow header went out without it.
Now each carries the configured value, and with none configured none has a Server header at all
(aiohttp's banner included). Real server, raw sockets (so malformed requests reach it as sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.config.loader import parse_config
from gateway.server import GatewayServer

RAW = {
    "proxied": b"GET /up/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "no_route": b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad_target": b"GET nothttp HTTP/1.1\r\nHost: a\r\n\r\n",
    "method": b"TRACE /up/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "malformed": b"GET /up/x HTTP/1.1\r\nHost a\r\n\r\n",
    "version": b"GET /up/x HTTP/2.0\r\nHost: a\r\n\r\n",
    "slow_header": b"GET /up/x HTTP/1.1\r\nHost: a\r\n",  # never finished: 408
}


async def _upstream() -> tuple[web.AppRunner, int]:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="up")  # aiohttp adds its own "Server: Python/... aiohttp/..."

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    runner, port = await _upstream()
    try:
        yield port
    finally:
        await runner.cleanup()


async def _head(port: int, raw: bytes) -> tuple[int, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(15):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


async def _serve(upstream_port: int, extra: str) -> GatewayServer:
    cfg = parse_config(f"""listen: {{host: 127.0.0.1, port: 0, limits: {{header_timeout_s: 1}}}}
admin: {{port: 0}}
{extra}
routes:
  - id: up
    match: {{path_prefix: /up}}
    upstream: http://127.0.0.1:{upstream_port}
    auth: none
""", source="test.yaml")
    server = GatewayServer(cfg)
    await server.start()
    return server


@pytest.mark.parametrize("configured", ["bank-api", None])
async def test_every_response_follows_the_server_header_policy(upstream_port: int, configured: str | None) -> None:
    server = await _serve(upstream_port, f"proxy: {{server_header: {configured}}}" if configured else "")
    try:
        seen = {name: await _head(server.port, raw) for name, raw in RAW.items()}
    finally:
        await server.stop()
    # Each case is what it says (so the header check below covers a response made before routing).
    assert {name: status for name, (status, _) in seen.items()} == {
        "proxied": 200, "no_route": 404, "bad_target": 400, "method": 405, "malformed": 400,
        "version": 505, "slow_header": 408,
    }
    servers = {name: headers.get("server") for name, (_, headers) in seen.items()}
    assert servers == dict.fromkeys(RAW, configured)
