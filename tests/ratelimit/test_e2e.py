"""Limits through the real gateway: a TLS listener, real DPoP proofs, a real Redis (issue #18).

A burst above the limit gets 429 with Retry-After and the RateLimit fields naming the limit; another
client is untouched; garbage naming the victim's client_id never touches its quota; the admin port
reads a key's usage; the metrics count every decision.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import aiohttp
import jwt

from tests.dpop.e2e_support import AsKey, Send, dpop_headers, proof_for
from tests.dpop.proofs import Signer

from .support import limited_body

LIMITS = """
  limits:
    - {id: tpp-burst, key: client_id, rate: 1, per_s: 60, burst: 3}
    - {id: tpp-daily, key: [client_id], quota: 100, window_s: 86400}
  routes:
    accounts: {limits: [tpp-burst, tpp-daily], headers: true}
"""


def _prefix(redis_key_prefix: str) -> str:
    return f"{redis_key_prefix}{uuid.uuid4().hex[:8]}:"


async def _admin(gw: Any, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}{path}", headers=headers) as r:
        text = await r.text()
        return r.status, json.loads(text) if r.content_type == "application/json" else text


async def test_burst_above_the_limit_gets_429_with_retry_after_and_fields(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, k2: Signer,
    redis_url: str, redis_key_prefix: str,
) -> None:
    gw = await gateway(limited_body(as_key, upstream.url, redis_url, _prefix(redis_key_prefix), LIMITS))
    token = as_key.token(jkt=k1.jkt)  # client_id tpp-1
    answers = [await send(gw.port, headers=dpop_headers(token, proof_for(k1, token))) for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    # Allowed responses carry the fields (headers: true): the tightest limit, 2 then 1 then 0 left.
    assert answers[0][1]["ratelimit-policy"] == ['"tpp-burst";q=3;w=180, "tpp-daily";q=100;w=86400']
    assert [re.search(r";r=(\d+)", a[1]["ratelimit"][0]).group(1) for a in answers[:3]] == ["2", "1", "0"]  # type: ignore[union-attr]
    _, h, text = answers[3]
    retry = int(h["retry-after"][0])
    assert 30 <= retry <= 60  # one emission interval (60 s), less the time the test took
    assert h["ratelimit"] == [f'"tpp-burst";r=0;t={h["ratelimit"][0].rsplit("=", 1)[1]}']
    assert json.loads(text) == {"error": "rate_limited", "error_description": "rate limit tpp-burst exceeded",
                                "limit": "tpp-burst"}
    assert "www-authenticate" not in h
    assert len(upstream.requests) == 3
    # Another client (tpp-2) has its own bucket.
    other = as_key.token(jkt=k2.jkt, client_id="tpp-2")
    assert (await send(gw.port, headers=dpop_headers(other, proof_for(k2, other))))[0] == 200
    metrics = gw.metrics.render().decode()
    assert 'gateway_rate_limit_decisions_total{limit="tpp-burst",outcome="limited"} 1.0' in metrics
    assert 'gateway_rate_limit_decisions_total{limit="tpp-daily",outcome="allowed"} 5.0' in metrics


async def test_garbage_naming_a_client_never_touches_its_quota(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, redis_url: str, redis_key_prefix: str,
) -> None:
    gw = await gateway(limited_body(as_key, upstream.url, redis_url, _prefix(redis_key_prefix), LIMITS))
    token = as_key.token(jkt=k1.jkt)
    # Forged tokens carrying tpp-1's client_id: a wrong signature, and an unsigned one.
    forged = jwt.encode({**jwt.decode(token, options={"verify_signature": False})}, "x" * 32, algorithm="HS256")
    header, payload, _ = token.split(".")
    for bad in (forged, f"{header}.{payload}.AAAA", token[:-4] + "AAAA"):
        for _ in range(5):
            status, _, _ = await send(gw.port, headers=dpop_headers(bad, proof_for(k1, bad)))
            assert status == 401
    # A valid token with a replayed proof: refused before any limit is counted.
    proof = proof_for(k1, token)
    assert (await send(gw.port, headers=dpop_headers(token, proof)))[0] == 200
    for _ in range(5):
        assert (await send(gw.port, headers=dpop_headers(token, proof)))[0] == 401
    # tpp-1 still has its whole burst but the one request it made.
    answers = [await send(gw.port, headers=dpop_headers(token, proof_for(k1, token))) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]


async def test_admin_reads_the_usage_of_a_key(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, redis_url: str, redis_key_prefix: str,
    pki: Any,
) -> None:
    from tests.conftest import gateway_yaml

    admin_token = "s" * 40
    body = limited_body(as_key, upstream.url, redis_url, _prefix(redis_key_prefix), LIMITS)
    text = gateway_yaml(pki, body).replace(
        "admin: {host: 127.0.0.1, port: 0}", f"admin: {{host: 127.0.0.1, port: 0, token: {admin_token}}}")
    gw = await gateway(text, raw=True)
    token = as_key.token(jkt=k1.jkt)
    for _ in range(2):
        assert (await send(gw.port, headers=dpop_headers(token, proof_for(k1, token))))[0] == 200
    status, doc = await _admin(gw, "/admin/ratelimit/usage?limit=tpp-daily&client_id=tpp-1", admin_token)
    assert status == 200, doc
    assert doc["limit"] == "tpp-daily" and doc["key"] == {"client_id": "tpp-1"}
    assert doc["capacity"] == 100 and doc["remaining"] == 98 and doc["throttled"] is False
    # Reading consumed nothing.
    assert (await _admin(gw, "/admin/ratelimit/usage?limit=tpp-daily&client_id=tpp-1", admin_token))[1][
        "remaining"] == 98
    status, doc = await _admin(gw, "/admin/ratelimit/usage?limit=tpp-burst&client_id=tpp-1", admin_token)
    assert status == 200 and doc["remaining"] == 1
    assert (await _admin(gw, "/admin/ratelimit/usage?limit=nope&client_id=x", admin_token))[0] == 404
    assert (await _admin(gw, "/admin/ratelimit/usage?limit=tpp-daily", admin_token))[0] == 400
    assert (await _admin(gw, "/admin/ratelimit/usage?limit=tpp-daily&client_id=tpp-1"))[0] == 401


async def test_dpop_route_checks_replay_and_limits_in_one_round_trip(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, redis_url: str, redis_key_prefix: str,
) -> None:
    """Same Redis for the replay store and the limits: one command per request, the replay SET NX and
    every limit of the route in one script; the limiter's own connection is never used."""
    gw = await gateway(limited_body(as_key, upstream.url, redis_url, _prefix(redis_key_prefix), LIMITS))
    state = gw.handler.holder.current
    limiter = state.pipeline.limits
    assert limiter is not None and limiter.rides_with_replay
    token = as_key.token(jkt=k1.jkt)
    assert (await send(gw.port, headers=dpop_headers(token, proof_for(k1, token))))[0] == 200  # connects
    sent: list[bytes] = []
    pipelined = state.replay_store._pipelined
    real = pipelined.execute

    async def counting(command: bytes) -> Any:
        sent.append(command)
        return await real(command)

    pipelined.execute = counting
    answers = [await send(gw.port, headers=dpop_headers(token, proof_for(k1, token))) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]
    assert len(sent) == 3 and all(c.split(b"\r\n")[2] == b"EVALSHA" for c in sent)
    own = limiter.store.pipelined
    assert own is None or own.connection_number == 0  # never connected


async def test_access_log_names_the_limit(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, redis_url: str, redis_key_prefix: str,
    tmp_path: Any,
) -> None:
    log_file = tmp_path / "access.log"
    body = limited_body(as_key, upstream.url, redis_url, _prefix(redis_key_prefix), LIMITS) + f"""
observability:
  access_log: {{destination: file, file: "{log_file}", fields: [status, reason, client_id, limit]}}
"""
    gw = await gateway(body)
    token = as_key.token(jkt=k1.jkt)
    for _ in range(4):
        await send(gw.port, headers=dpop_headers(token, proof_for(k1, token)))
    await gw.stop()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    # The throttled client is named: its token was verified before the limit was checked.
    assert lines[-1] == {"status": 429, "reason": "rate_limited", "client_id": "tpp-1", "limit": "tpp-burst"}
    assert lines[0] == {"status": 200, "reason": None, "client_id": "tpp-1", "limit": None}
