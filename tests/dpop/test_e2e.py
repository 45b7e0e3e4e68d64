"""DPoP end to end through the real gateway (TLS listener, recording upstream): status, challenge,
nothing forwarded on refusal. One request per §4.3 check, each violating exactly that check."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .e2e_support import CHALLENGE, ORIGIN, AsKey, Send, config_body, dpop_headers, proof_for
from .proofs import Signer, ath, b64json, private_jwk


@pytest.fixture
async def gw(gateway: Any, upstream: Any, as_key: AsKey) -> Any:
    return await gateway(config_body(as_key, upstream.url))


async def test_valid_proof_reaches_upstream(gw: Any, send: Send, upstream: Any, as_key: AsKey, k1: Signer) -> None:
    """A valid proof passes: 200, exactly one upstream request, no DPoP header forwarded."""
    token = as_key.token(jkt=k1.jkt)
    status, _, _ = await send(gw.port, headers=dpop_headers(token, proof_for(k1, token)))
    assert status == 200
    assert len(upstream.requests) == 1
    assert upstream.last.header("DPoP") is None
    # DPOP-02 / DPOP-12a: upper-case header name and a query string
    status, _, _ = await send(gw.port, path="/accounts?from=2024",
                              headers=[("Authorization", f"dPoP {token}"), ("DPOP", proof_for(k1, token))])
    assert status == 200 and len(upstream.requests) == 2


def _cases(k1: Signer, k2: Signer, token: str, token_k2: str) -> dict[str, tuple[list[tuple[str, str]], str, str]]:
    """name -> (headers, expected error, word expected in error_description)."""
    def h(*proofs: str) -> list[tuple[str, str]]:
        return dpop_headers(token, *proofs)

    def p(**c: Any) -> str:
        return proof_for(k1, token, **c)

    sig = p().split(".")
    flipped = sig[2][:10] + ("A" if sig[2][10] != "A" else "B") + sig[2][11:]
    return {
        "DPOP-01 two headers": (h(p(), p()), "invalid_dpop_proof", "more than one"),
        "DPOP-03 malformed": (h("not.a.jws!"), "invalid_dpop_proof", "DPoP"),
        "DPOP-04 no jti": (h(k1.proof(drop=("jti",), htu=ORIGIN + "/accounts", ath=ath(token))),
                           "invalid_dpop_proof", "jti"),
        "DPOP-05 typ": (h(k1.proof(header=k1.header(typ="JWT"), htu=ORIGIN + "/accounts", ath=ath(token))),
                        "invalid_dpop_proof", "typ"),
        "DPOP-06 alg none": (h(f"{b64json(k1.header(alg='none'))}.{b64json(k1.claims())}.AA"),
                             "invalid_dpop_proof", "alg"),
        "DPOP-08 private jwk": (h(k1.proof(header=k1.header(jwk=private_jwk(k1.key)), htu=ORIGIN + "/accounts",
                                           ath=ath(token))), "invalid_dpop_proof", "private"),
        "DPOP-09 signature": (h(f"{sig[0]}.{sig[1]}.{flipped}"), "invalid_dpop_proof", "signature"),
        "DPOP-11 htm": (h(p(htm="POST")), "invalid_dpop_proof", "htm"),
        "DPOP-12 htu": (h(p(htu=ORIGIN + "/payments")), "invalid_dpop_proof", "htu"),
        "DPOP-14 htu host": (h(p(htu="https://127.0.0.1/accounts")), "invalid_dpop_proof", "host"),
        "DPOP-15 iat old": (h(p(iat=int(time.time()) - 3600)), "invalid_dpop_proof", "too old"),
        "DPOP-15 iat ahead": (h(p(iat=int(time.time()) + 3600)), "invalid_dpop_proof", "too far ahead"),
        "DPOP-18 ath": (h(p(ath=ath("other"))), "invalid_dpop_proof", "ath"),
        "DPOP-19 jkt": (h(proof_for(k2, token)), "invalid_token", "key"),
        "DPOP-21 no proof": (h(), "invalid_dpop_proof", "missing"),
        "DPOP-25 size": (h("a" * 9000), "invalid_dpop_proof", "DPoP"),
        "scheme: unbound token with DPoP": (
            dpop_headers(token_k2, proof_for(k1, token_k2)), "invalid_token", "not DPoP"
        ),
    }


CASE_NAMES = ["DPOP-01 two headers", "DPOP-03 malformed", "DPOP-04 no jti", "DPOP-05 typ", "DPOP-06 alg none",
              "DPOP-08 private jwk", "DPOP-09 signature", "DPOP-11 htm", "DPOP-12 htu", "DPOP-14 htu host",
              "DPOP-15 iat old", "DPOP-15 iat ahead", "DPOP-18 ath", "DPOP-19 jkt", "DPOP-21 no proof",
              "DPOP-25 size", "scheme: unbound token with DPoP"]


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_each_check_refused_end_to_end(
    gw: Any, send: Send, upstream: Any, as_key: AsKey, k1: Signer, k2: Signer, case: str
) -> None:
    """Each §4.3 violation -> 401 + WWW-Authenticate: DPoP error=..., algs=...; the upstream sees nothing."""
    token = as_key.token(jkt=k1.jkt)
    unbound = as_key.token()
    headers, error, word = _cases(k1, k2, token, unbound)[case]
    status, resp_headers, _ = await send(gw.port, headers=headers)
    assert status == 401, (case, resp_headers)
    (www,) = resp_headers["www-authenticate"]
    m = CHALLENGE.match(www)
    assert m is not None, www
    assert m["error"] == error
    assert word in (m["desc"] or ""), www
    assert upstream.requests == []


async def test_replayed_proof_refused(gw: Any, send: Send, upstream: Any, as_key: AsKey, k1: Signer) -> None:
    """DPOP-17a / DPOP-27: the second copy (even with another body) -> 401, upstream count stays 1."""
    token = as_key.token(jkt=k1.jkt)
    headers = dpop_headers(token, proof_for(k1, token))
    assert (await send(gw.port, headers=headers))[0] == 200
    status, h, _ = await send(gw.port, headers=headers)
    assert status == 401 and 'error="invalid_dpop_proof"' in h["www-authenticate"][0]
    assert "already been used" in h["www-authenticate"][0]
    assert len(upstream.requests) == 1


async def test_bearer_downgrade_refused(gw: Any, send: Send, upstream: Any, as_key: AsKey, k1: Signer) -> None:
    """DPOP-20: a DPoP-bound token under Bearer (with or without a proof) -> Bearer error="invalid_token"."""
    token = as_key.token(jkt=k1.jkt)
    for extra in ((), (proof_for(k1, token),)):
        status, h, _ = await send(gw.port, headers=dpop_headers(token, *extra, scheme="Bearer"))
        assert status == 401
        assert 'Bearer error="invalid_token"' in h["www-authenticate"][0]
    assert upstream.requests == []


async def test_nonce_flow_end_to_end(gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer) -> None:
    """DPOPN-01/07/09: 401 use_dpop_nonce + DPoP-Nonce (no-store); retry passes at replica A and B."""
    dpop = '  nonce: {secrets: ["' + "n" * 40 + '"]}'
    a = await gateway(config_body(as_key, upstream.url, dpop=dpop, nonce_route=True))
    b = await gateway(config_body(as_key, upstream.url, dpop=dpop, nonce_route=True))
    token = as_key.token(jkt=k1.jkt)
    status, h, _ = await send(a.port, headers=dpop_headers(token, proof_for(k1, token)))
    assert status == 401
    assert CHALLENGE.match(h["www-authenticate"][0])["error"] == "use_dpop_nonce"  # type: ignore[index]
    (nonce,) = h["dpop-nonce"]
    assert "no-store" in h["cache-control"][0]
    assert upstream.requests == []
    assert (await send(a.port, headers=dpop_headers(token, proof_for(k1, token, nonce=nonce))))[0] == 200
    assert (await send(b.port, headers=dpop_headers(token, proof_for(k1, token, nonce=nonce))))[0] == 200
    assert len(upstream.requests) == 2


def redis_dpop(url: str, prefix: str, timeout: float = 0.5) -> str:
    return (f"  replay: {{backend: redis, redis: {{url: \"{url}\", key_prefix: \"{prefix}\", "
            f"timeout_s: {timeout}, connect_timeout_s: {timeout}}}}}")


async def test_replay_across_two_gateways_sharing_redis(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, redis_url: str, redis_key_prefix: str
) -> None:
    """DPOP-17b / OPS: the copy sent to a second gateway (own app, own pool) sharing Redis is refused."""
    body = config_body(as_key, upstream.url, dpop=redis_dpop(redis_url, redis_key_prefix + "e2e:"))
    a, b = await gateway(body), await gateway(body)
    token = as_key.token(jkt=k1.jkt)
    headers = dpop_headers(token, proof_for(k1, token))
    assert (await send(a.port, headers=headers))[0] == 200
    status, h, _ = await send(b.port, headers=headers)
    assert status == 401 and "jti replay" in h["www-authenticate"][0]
    assert len(upstream.requests) == 1


async def test_redis_down_fails_closed_and_recovers(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, own_redis: Any
) -> None:
    """Redis stopped mid-run -> 503 and nothing forwarded; Redis back -> 200 without a restart."""
    gw = await gateway(config_body(as_key, upstream.url, dpop=redis_dpop(own_redis.url, "e2e:", 0.3)))
    token = as_key.token(jkt=k1.jkt)
    assert (await send(gw.port, headers=dpop_headers(token, proof_for(k1, token))))[0] == 200
    own_redis.stop()
    status, h, _ = await send(gw.port, headers=dpop_headers(token, proof_for(k1, token)))
    assert status == 503 and "retry-after" in h
    assert len(upstream.requests) == 1
    own_redis.start()
    assert (await send(gw.port, headers=dpop_headers(token, proof_for(k1, token))))[0] == 200
    assert len(upstream.requests) == 2




async def test_fresh_nonce_on_success_when_about_to_expire(
    gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer
) -> None:
    """DPOPN-02/07/08: a 200 carries one new DPoP-Nonce (and no-store) once the nonce nears expiry."""
    import asyncio

    dpop = '  nonce: {secrets: ["' + "r" * 40 + '"], lifetime_s: 10, refresh_before_s: 9}'
    gw = await gateway(config_body(as_key, upstream.url, dpop=dpop, nonce_route=True))
    upstream.response_headers.append(("DPoP-Nonce", "from-upstream"))
    token = as_key.token(jkt=k1.jkt)
    _, h, _ = await send(gw.port, headers=dpop_headers(token, proof_for(k1, token)))
    nonce = h["dpop-nonce"][0]
    await asyncio.sleep(1.5)  # the nonce now has < 9 s of its 10 s left
    status, h, _ = await send(gw.port, headers=dpop_headers(token, proof_for(k1, token, nonce=nonce)))
    assert status == 200
    (fresh,) = h["dpop-nonce"]
    assert fresh not in (nonce, "from-upstream")
    assert h["cache-control"] == ["no-store"]


async def test_memory_replay_store_survives_config_reload(
    pki: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, tmp_path: Any
) -> None:
    """A proof used just before a config reload is still refused just after it (memory backend)."""
    from gateway.config import load_config
    from gateway.server import GatewayServer
    from tests.conftest import gateway_yaml

    path = tmp_path / "gw.yaml"
    path.write_text(gateway_yaml(pki, config_body(as_key, upstream.url)))
    server = GatewayServer(load_config(path), config_path=str(path))
    await server.start()
    try:
        token = as_key.token(jkt=k1.jkt)
        headers = dpop_headers(token, proof_for(k1, token))
        assert (await send(server.port, headers=headers))[0] == 200
        path.write_text(path.read_text().replace("scopes: [accounts]", "scopes: [accounts], realm: r2"))
        assert await server.reload()
        status, h, _ = await send(server.port, headers=headers)
        assert status == 401 and "already been used" in h["www-authenticate"][0]
        assert len(upstream.requests) == 1
    finally:
        await server.stop()
