"""The cost of a Redis-backed rate limit on the DPoP route (issue #18): ``.venv/bin/python -m benchmarks.ratelimit``.

Two pipelines built from one config by ``gateway.app.build_pipeline``, the same run, interleaved
(A B A B ...): the DPoP route with the replay store in Redis, without and with one GCRA limit
keyed by ``client_id`` (also in Redis, same server: the limit rides on the replay check's script).
Each decide gets a fresh ES256 proof (unique jti); the limit is large enough never to refuse.

Figures: CPU µs per ``AuthPipeline.decide`` of this process (Redis's own CPU is not counted;
``redis CPU`` below is its ``used_cpu_sys + used_cpu_user`` delta per request, from INFO, which
includes other clients of a shared Redis), and Redis commands sent per request (counted on the
pipelined client). ``--width`` decides at once (asyncio.gather), as concurrent requests would be.
Writes benchmarks/out/ratelimit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .material import dpop_proof, make_material
from .micro import URL, _config_text, _request
from .servers import BENCH


def _body(m: Any, redis_url: str, prefix: str, limited: bool) -> str:
    text = _config_text(m, "dpop").replace(
        "dpop: {algorithms: [ES256]}",
        f'dpop: {{algorithms: [ES256], replay: {{backend: redis, redis: {{url: "{redis_url}", '
        f'key_prefix: "{prefix}jti:"}}}}}}',
    )
    if limited:
        text += f"""
rate_limits:
  backend: redis
  key_prefix: "{prefix}rl:"
  limits:
    - {{id: tpp-burst, key: client_id, rate: 1000000, burst: 10000000}}
  default: [tpp-burst]
"""
    return text


async def _redis_cpu(url: str) -> float:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        info = await client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> str:
    from gateway.app import build_pipeline
    from gateway.config import parse_config
    from gateway.model import PeerCertificate
    from gateway.observability.metrics import Metrics

    n, width, repeats = args.n, args.width, args.repeats
    (BENCH / "out").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ratelimit-", dir=BENCH / "out"))
    m = make_material(tmp, "https://as.bench.example", n_clients=1)
    hot = json.loads(m.clients_dpop.read_text())[0]["token"]
    peer = PeerCertificate(
        x509.load_pem_x509_certificate(m.client_cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    prefix = "bench:rlmicro:"  # fixed: the replay store's epoch key (no TTL) is not left once per run
    variants: dict[str, Any] = {}
    for name, limited in (("without limit", False), ("with one Redis limit", True)):
        cfg = parse_config(_body(m, args.redis, prefix, limited), source=name)
        pipeline, lifecycles, _ = build_pipeline(cfg, Metrics())
        for lc in lifecycles:
            await lc.start()
        replay = next(lc.replay for lc in lifecycles if hasattr(lc, "replay"))
        sent = [0]
        pipelined = replay._pipelined
        real = pipelined.execute

        async def counting(command: bytes, real: Any = real, sent: list[int] = sent) -> Any:
            sent[0] += 1
            return await real(command)

        pipelined.execute = counting
        variants[name] = (pipeline, cfg.routes[0], lifecycles, sent)
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    redis_cpu: dict[str, list[float]] = {k: [] for k in variants}
    commands: dict[str, list[float]] = {k: [] for k in variants}
    statuses: dict[str, set[str]] = {k: set() for k in variants}
    for r in range(repeats + 1):  # round 0 warms up (connections, scripts, caches) and is not kept
        order = list(variants.items())
        for name, (pipeline, route, _, sent) in order if r % 2 else order[::-1]:  # alternate who goes first
            reqs = [_request({"Authorization": "DPoP " + hot, "DPoP": dpop_proof(m.hot_key, "GET", URL, hot)}, peer)
                    for _ in range(n)]
            sent0, rc0 = sent[0], await _redis_cpu(args.redis)
            c0 = time.process_time()
            for start in range(0, n, width):
                got = await asyncio.gather(*(pipeline.decide(q, route) for q in reqs[start:start + width]),
                                           return_exceptions=True)
                statuses[name].update(type(x).__name__ for x in got)
            c1 = time.process_time()
            if r:
                cpu[name].append((c1 - c0) / n * 1e6)
                redis_cpu[name].append((await _redis_cpu(args.redis) - rc0) / n * 1e6)
                commands[name].append((sent[0] - sent0) / n)
    for _pipeline, _route, lifecycles, _ in variants.values():
        for lc in reversed(lifecycles):
            await lc.close()
    shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(cpu["without limit"])
    paired = [w / wo for w, wo in zip(cpu["with one Redis limit"], cpu["without limit"], strict=True)]
    lines = [
        f"`.venv/bin/python -m benchmarks.ratelimit -n {n} --width {width} --repeats {repeats}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): CPU µs per `AuthPipeline.decide` of the "
        "gateway process, median [min-max] over the rounds; Redis on 127.0.0.1 (shared machine).",
        "",
        "| DPoP route, Redis replay store | gateway CPU µs/req | vs without | Redis commands/req "
        "| Redis CPU µs/req | outcomes |",
        "|---|---|---|---|---|---|",
    ]
    for name in variants:
        c = cpu[name]
        lines.append(
            f"| {name} | {statistics.median(c):.1f} [{min(c):.1f}-{max(c):.1f}] | "
            f"{statistics.median(c) / base:.3f} | {statistics.median(commands[name]):.2f} | "
            f"{statistics.median(redis_cpu[name]):.1f} | {', '.join(sorted(statuses[name]))} |"
        )
    lines += ["", f"Per-round paired ratio (with ÷ without, same round): median {statistics.median(paired):.3f} "
              f"[{min(paired):.3f}-{max(paired):.3f}] over {len(paired)} rounds."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=1000, help="decides per variant per round")
    ap.add_argument("--width", type=int, default=16, help="decides at once")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = ap.parse_args()
    table = asyncio.run(run(args))
    print(table)
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    (out / "ratelimit.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
