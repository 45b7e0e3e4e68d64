"""In-process A/B of the listener's send deadline (issue #20, second round).

    .venv/bin/python -m benchmarks.listener_ab [asyncio|uvloop]

Two gateways in one process on the same loop (uvloop by default, as ``gateway run``), an
``auth: none`` route to a local upstream, access log off, keep-alive requests in alternating
batches; the figure is the main thread's CPU time per request (client, gateway and upstream all
run in it, the same for both, so the difference is the change). ``timeout``: the send wrapped in
``asyncio.timeout`` on every request (the listener before this round); ``paused``: the deadline
armed only when the transport pauses writing (``GuardedRequestHandler.send_started``). Same
process, same moment: the machine's other load mostly cancels out.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway import listener
from gateway.config import parse_config
from gateway.server import GatewayServer
from gateway.wire import refusal_response

from .paired import paired_rounds

BATCHES = 30
BATCH = 400


async def _handle_with_timeout(self: listener.GuardedServer, request: web.BaseRequest) -> web.StreamResponse:
    """``GuardedServer._handle`` as it was before this round (one uvloop timer per request)."""
    protocol = request.protocol
    try:
        refusal = getattr(request, "wire_refusal", None)
        resp = refusal_response(refusal) if refusal is not None else await self._inner(request)
        if resp.status >= 400 and request.body_exists and not request.content.is_eof() and not resp.prepared:
            resp.force_close()
        try:
            async with asyncio.timeout(self._guard.limits.body_timeout_s):
                await resp.prepare(request)
                await resp.write_eof()
        except TimeoutError:
            self._guard.closed_by_us(listener.SEND_TIMEOUT)
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass
        else:
            if resp.status == 408 and isinstance(protocol, RequestHandler):
                protocol.force_close()
        return resp
    finally:
        if isinstance(protocol, listener.GuardedRequestHandler):
            protocol.request_finished()


def _config(upstream_port: int) -> str:
    return f"""listen: {{host: 127.0.0.1, port: 0, allowed_hosts: [127.0.0.1]}}
admin: {{host: 127.0.0.1, port: 0}}
observability:
  access_log: {{enabled: false}}
routes:
  - {{id: open, match: {{path_prefix: /}}, upstream: "http://127.0.0.1:{upstream_port}", auth: none}}
"""


async def main() -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    servers = {"paused": GatewayServer(parse_config(_config(up_port), source="paused"))}
    await servers["paused"].start()
    current = listener.GuardedServer._handle
    listener.GuardedServer._handle = _handle_with_timeout  # type: ignore[method-assign]
    try:  # bound at construction: only this server's listener gets the old send
        servers["timeout"] = GatewayServer(parse_config(_config(up_port), source="timeout"))
        await servers["timeout"].start()
    finally:
        listener.GuardedServer._handle = current  # type: ignore[method-assign]
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)  # as gateway.server does
    conns = {k: await asyncio.open_connection("127.0.0.1", s.port) for k, s in servers.items()}
    req = b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def batch(name: str, n: int) -> float:
        rd, wr = conns[name]
        t0 = time.thread_time()
        for _ in range(n):
            wr.write(req)
            await wr.drain()
            await rd.readuntil(b"\r\n\r\n")
            await rd.readexactly(2)
        return (time.thread_time() - t0) / n * 1e6

    res = await paired_rounds(batch, "timeout", "paused", rounds=BATCHES, n=BATCH, unit="req")
    diff = [a - b for a, b in zip(res["timeout"], res["paused"], strict=True)]
    print(f"timeout - paused, paired per round: median {statistics.median(diff):.1f} CPU-us/req "
          f"(quartiles {statistics.quantiles(diff, n=4)[0]:.1f} .. {statistics.quantiles(diff, n=4)[2]:.1f})")
    for s in servers.values():
        await s.stop()
    await runner.cleanup()


if __name__ == "__main__":
    if (sys.argv[1] if len(sys.argv) > 1 else "uvloop") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
