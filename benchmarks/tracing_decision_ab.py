"""In-process A/B of tracing's per-check cost on a decision front (benchmarks/TRACING.md): two
gateways in one process, decision HTTP front on, one with tracing off and one on at
``sample_ratio`` (default 0: nothing sampled), Traefik forwardAuth checks of an ``auth: none``
route on keep-alive connections in alternating batches, the main thread's CPU time per check.
Same process, same moment: the machine's other load cancels out (as benchmarks/tracing_ab.py).

    .venv/bin/python -m benchmarks.tracing_decision_ab [sample_ratio]
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time

from gateway.config import parse_config
from gateway.server import GatewayServer

from .paired import paired_rounds

BATCHES = 20
BATCH = 400


def _config(tracing: str) -> str:
    return f"""listen: {{host: 127.0.0.1, port: 0, external_origin: "https://api.bank.example"}}
admin: {{host: 127.0.0.1, port: 0}}
observability:
  access_log: {{enabled: false}}
{tracing}decision: {{enabled: true, grpc: null, http: {{host: 127.0.0.1, port: 0}}}}
routes:
  - {{id: open, match: {{path_prefix: /}}, upstream: "http://127.0.0.1:9", auth: none}}
"""


async def main(ratio: float) -> None:
    # Spans (ratio > 0) go to a port nothing listens on: export failures cost the exporter thread.
    tracing = f"  tracing: {{enabled: true, endpoint: 'http://127.0.0.1:9/v1/traces', sample_ratio: {ratio}}}\n"
    servers = {"on": GatewayServer(parse_config(_config(tracing), source="on")),
               "off": GatewayServer(parse_config(_config(""), source="off"))}
    for s in servers.values():
        await s.start()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)  # as gateway.server does
    conns = {k: await asyncio.open_connection("127.0.0.1", s.decision.http_port)  # type: ignore[union-attr]
             for k, s in servers.items()}
    req = (b"GET /forward_auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-Method: GET\r\n"
           b"X-Forwarded-Uri: /a\r\nX-Forwarded-Host: api.bank.example\r\nX-Forwarded-Proto: https\r\n\r\n")

    async def batch(name: str, n: int) -> float:
        rd, wr = conns[name]
        t0 = time.thread_time()
        for _ in range(n):
            wr.write(req)
            await wr.drain()
            head = await rd.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), b"0"))
            await rd.readexactly(length)
        return (time.thread_time() - t0) / n * 1e6

    res = await paired_rounds(batch, "off", "on", rounds=BATCHES, n=BATCH, unit="check")
    diff = [a - b for a, b in zip(res["on"], res["off"], strict=True)]
    print(f"on - off (sample_ratio {ratio:g}): median {statistics.median(diff):.1f} CPU-us/check")
    for s in servers.values():
        await s.stop()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0))
