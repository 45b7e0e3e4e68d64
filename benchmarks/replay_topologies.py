"""The DPoP replay store's cost per proof on each Redis topology (standalone, Sentinel, Cluster).

Standalone goes through the hand-written pipelined client (``gateway.bind.redis_client``);
Sentinel and Cluster through redis-py's clients, which follow failovers and MOVED/ASK. Each
topology is started on free ports by ``tests/faults/redis_topologies.py`` and stopped after.

    nice -n 10 .venv/bin/python -m benchmarks.replay_topologies [--n 3000] [--concurrency 64]

Prints a markdown table: proofs/s one at a time and with ``--concurrency`` in flight, and CPU
microseconds per proof in this process (the gateway's side of the cost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from gateway.bind.replay import RedisReplayStore, replay_key
from gateway.config.dpop import RedisReplayConfig
from tests.faults.redis_topologies import Cluster, SentinelSet, Standalone


async def measure(store: RedisReplayStore, n: int, concurrency: int) -> tuple[float, float, float]:
    await store.start()
    tag = uuid.uuid4().hex
    keys = [replay_key("bench", f"{tag}-{i}") for i in range(2 * n)]
    for k in keys[:50]:
        await store.first_use(k, 75)  # warm the connections / slot map
    cpu0, t0 = time.process_time(), time.perf_counter()
    for k in keys[50:n]:
        await store.first_use(k, 75)
    seq_s, seq_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    sem = asyncio.Semaphore(concurrency)

    async def one(k: bytes) -> None:
        async with sem:
            await store.first_use(k, 75)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in keys[n:]))
    conc_s = time.perf_counter() - t0
    await store.close()
    count = n - 50
    return count / seq_s, n / conc_s, seq_cpu / count * 1e6


async def main(args: argparse.Namespace) -> None:
    rows: list[str] = []
    topologies: list[tuple[str, Callable[[], Any], Callable[[Any], RedisReplayConfig]]] = [
        ("standalone (pipelined client)", Standalone,
         lambda t: RedisReplayConfig(url=t.server.url, key_prefix="bench:")),
        ("sentinel (redis-py)", SentinelSet,
         lambda t: RedisReplayConfig(mode="sentinel", sentinels=tuple(t.sentinel_addrs),
                                     service_name=SentinelSet.SERVICE, key_prefix="bench:")),
        ("cluster, 3 masters (redis-py)", lambda: Cluster(replicas=False),
         lambda t: RedisReplayConfig(mode="cluster", url=t.url, key_prefix="bench:")),
    ]
    for name, make, cfg in topologies:
        topo = await asyncio.to_thread(make)
        try:
            seq, conc, cpu_us = await measure(RedisReplayStore(cfg(topo)), args.n, args.concurrency)
        finally:
            await asyncio.to_thread(topo.close)
        rows.append(f"| {name} | {seq:,.0f} | {conc:,.0f} | {cpu_us:,.0f} |")
    print(f"n={args.n}, concurrency={args.concurrency}, pid {os.getpid()}\n")
    print(f"| topology | proofs/s one at a time | proofs/s, {args.concurrency} in flight | CPU µs/proof (sequential) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
