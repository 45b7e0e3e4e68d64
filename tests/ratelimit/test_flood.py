"""A garbage-token flood from one source against a real, recording introspection endpoint (issue #18).

The source budget (``rate_limits.source_budget``) counts refused requests per source in Redis; once
spent, the source is refused with 429 before any token work. So 300 garbage tokens from one source
cost the AS ``refused`` calls, and one more per further replica; another source (a client
certificate) is untouched.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.tokens.authserver import AuthServer
from tests.tokens.conftest import AUD, auth_server, clock, signing_keys  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)

BUDGET = 5


def body(auth_server: AuthServer, pki: Pki, upstream: Upstream, redis_url: str, prefix: str) -> str:  # noqa: F811
    return f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: {auth_server.url}/jwks
        ca: {pki.ca_pem}
        mode: introspection
        introspection:
          endpoint: {auth_server.url}/introspect
          client_auth: {{method: client_secret_basic, client_id: gateway, client_secret: "s3cret:+/="}}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, scopes: [accounts], sender_constraint: none}}
    rate_limits:
      backend: redis
      redis: {{url: "{redis_url}"}}
      key_prefix: "{prefix}"
      source_budget: {{refused: {BUDGET}, window_s: 300}}
    """


async def call(port: int, pki: Pki, token: str, cert: Any = None) -> int:
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{port}/accounts", ssl=pki.client_context(cert),
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        await r.read()
        return r.status


async def test_garbage_flood_costs_the_as_at_most_the_budget(
    gateway: GatewayFactory, auth_server: AuthServer, pki: Pki, upstream: Upstream,  # noqa: F811
    redis_url: str, redis_key_prefix: str,
) -> None:
    prefix = f"{redis_key_prefix}flood:{uuid.uuid4().hex[:6]}:"
    cfg = body(auth_server, pki, upstream, redis_url, prefix)
    a = await gateway(cfg)
    b = await gateway(cfg)  # a second replica sharing the budget through Redis
    statuses: list[int] = []
    for n in range(40):  # one at a time first: the budget is reached exactly
        statuses.append(await call((a if n % 2 else b).port, pki, "garbage-" + uuid.uuid4().hex))
    # then a concurrent flood, against both
    for _ in range(4):
        statuses += await asyncio.gather(*(
            call((a, b)[n % 2].port, pki, "garbage-" + uuid.uuid4().hex) for n in range(65)))
    assert len(statuses) == 300
    assert statuses[:BUDGET] == [401] * BUDGET
    # Each replica learns the budget is spent at its own next refusal: at most one more call each.
    assert auth_server.introspection_calls <= BUDGET + 1
    assert statuses.count(401) == auth_server.introspection_calls
    assert statuses.count(429) == 300 - auth_server.introspection_calls
    assert not [s for s in statuses if s >= 500]
    # Another source (its client certificate) still gets its token checked and through.
    good = "valid-" + uuid.uuid4().hex
    auth_server.tokens[good] = {"active": True, "aud": AUD, "scope": "accounts", "client_id": "tpp-1",
                                  "exp": int(auth_server.clock()) + 300}
    assert await call(a.port, pki, good, cert=pki.client_a) == 200
    metrics = a.metrics.render().decode() + b.metrics.render().decode()
    assert 'gateway_rate_limit_decisions_total{limit="source_budget",outcome="limited"}' in metrics


async def test_introspection_calls_per_source_are_bounded_across_replicas(
    gateway: GatewayFactory, auth_server: AuthServer, pki: Pki, upstream: Upstream,  # noqa: F811
    redis_url: str, redis_key_prefix: str,
) -> None:
    """Even tokens the AS says are active cost calls: at most ``introspection_calls`` per source and
    window, across replicas; cached tokens still pass, other sources are untouched."""
    prefix = f"{redis_key_prefix}calls:{uuid.uuid4().hex[:6]}:"
    cfg = body(auth_server, pki, upstream, redis_url, prefix).replace(
        f"source_budget: {{refused: {BUDGET}, window_s: 300}}",
        "source_budget: {refused: 1000, introspection_calls: 3, window_s: 300}")
    a = await gateway(cfg)
    b = await gateway(cfg)
    tokens = []
    for _ in range(8):
        tok = "valid-" + uuid.uuid4().hex
        auth_server.tokens[tok] = {"active": True, "aud": AUD, "scope": "accounts", "client_id": "tpp-1",
                                   "exp": int(auth_server.clock()) + 300}
        tokens.append(tok)
    statuses = [await call((a, b)[n % 2].port, pki, tok) for n, tok in enumerate(tokens[:6])]
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert auth_server.introspection_calls == 3
    assert await call(a.port, pki, tokens[0]) == 200  # cached at a: no call needed
    assert await call(b.port, pki, tokens[7], cert=pki.client_a) == 200  # another source
    assert auth_server.introspection_calls == 4
    assert 'gateway_rate_limit_decisions_total{limit="source_introspection",outcome="limited"}' in (
        a.metrics.render().decode() + b.metrics.render().decode())
