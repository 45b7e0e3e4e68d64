"""Redis killed mid-run: each limit's documented fail mode, no 5xx, recovery when Redis returns (issue #18).

``fail: open`` lets requests through and counts them as ``fail_open``; ``fail: closed`` answers
429 with ``Retry-After: 1``. The replay store is in memory here, so only the limits lose Redis.
"""

from __future__ import annotations

from typing import Any

from tests.dpop.e2e_support import ORIGIN, AsKey, Send, config_body, dpop_headers, proof_for
from tests.dpop.proofs import Signer
from tests.redis_fixture import RedisProcess


def body(as_key: AsKey, upstream_url: str, redis_url: str) -> str:
    base = config_body(as_key, upstream_url)
    strict = base.split("routes:\n", 1)[1].replace("id: accounts", "id: payments").replace(
        "/accounts", "/payments")
    return base + strict + f"""
rate_limits:
  backend: redis
  redis: {{url: "{redis_url}", timeout_s: 0.2, connect_timeout_s: 0.2}}
  limits:
    - {{id: open-daily, key: client_id, quota: 1000, window_s: 86400, fail: open}}
    - {{id: closed-burst, key: client_id, rate: 100, burst: 100, fail: closed}}
  routes:
    accounts: {{limits: [open-daily]}}
    payments: {{limits: [closed-burst]}}
"""


async def test_redis_down_fails_open_or_closed_per_limit_and_recovers(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, own_redis: RedisProcess,
) -> None:
    gw = await gateway(body(as_key, upstream.url, own_redis.url))
    token = as_key.token(jkt=k1.jkt)

    async def get(path: str) -> tuple[int, dict[str, list[str]]]:
        status, h, _ = await send(gw.port, path=path, headers=dpop_headers(
            token, proof_for(k1, token, htu=ORIGIN + path)))
        return status, h

    assert (await get("/accounts"))[0] == 200 and (await get("/payments"))[0] == 200
    own_redis.stop()
    for _ in range(3):
        assert (await get("/accounts"))[0] == 200  # fail open: the payment goes through
        status, h = await get("/payments")
        assert status == 429 and h["retry-after"] == ["1"]  # fail closed, never a 5xx
    metrics = gw.metrics.render().decode()
    assert 'gateway_rate_limit_decisions_total{limit="open-daily",outcome="fail_open"} 3.0' in metrics
    assert 'gateway_rate_limit_decisions_total{limit="closed-burst",outcome="fail_closed"} 3.0' in metrics
    own_redis.start()
    # Back: counted again (the pipelined client reconnects by itself; a fresh Redis starts empty).
    assert (await get("/payments"))[0] == 200 and (await get("/accounts"))[0] == 200
    metrics = gw.metrics.render().decode()
    assert 'gateway_rate_limit_decisions_total{limit="open-daily",outcome="allowed"} 2.0' in metrics
    assert 'gateway_rate_limit_decisions_total{limit="closed-burst",outcome="allowed"} 2.0' in metrics
