"""In-process A/B of tracing's per-request cost (benchmarks/TRACING.md): two gateways in one
process, one with tracing off and one on at ``sample_ratio`` (default 0: nothing sampled), an
``auth: none`` route to a local upstream, keep-alive requests in alternating batches, the main
thread's CPU time per request. Same process, same moment: the machine's other load cancels out.

    .venv/bin/python -m benchmarks.tracing_ab [sample_ratio]
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time

from aiohttp import web

from gateway.config import parse_config
from gateway.server import GatewayServer

from .paired import paired_rounds

BATCHES = 20
BATCH = 400


def _config(upstream_port: int, tracing: str) -> str:
    return f"""listen: {{host: 127.0.0.1, port: 0, allowed_hosts: [127.0.0.1]}}
admin: {{host: 127.0.0.1, port: 0}}
observability:
  access_log: {{enabled: false}}
{tracing}routes:
  - {{id: open, match: {{path_prefix: /}}, upstream: "http://127.0.0.1:{upstream_port}", auth: none}}
"""


async def main(ratio: float) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    # Spans (ratio > 0) go to a port nothing listens on: export failures cost the exporter thread.
    tracing = f"  tracing: {{enabled: true, endpoint: 'http://127.0.0.1:9/v1/traces', sample_ratio: {ratio}}}\n"
    servers = {"on": GatewayServer(parse_config(_config(up_port, tracing), source="on")),
               "off": GatewayServer(parse_config(_config(up_port, ""), source="off"))}
    for s in servers.values():
        await s.start()
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

    res = await paired_rounds(batch, "off", "on", rounds=BATCHES, n=BATCH, unit="req")
    diff = [a - b for a, b in zip(res["on"], res["off"], strict=True)]
    print(f"on - off (sample_ratio {ratio:g}): median {statistics.median(diff):.1f} CPU-us/req")
    for s in servers.values():
        await s.stop()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0))
