"""JWKS faults through the real gateway: unreachable at start and later, rotation, a huge document,
a flood of unknown kids, malformed keys among good ones. Real TLS AS, real signatures; a
``FaultProxy`` in front of the AS makes it unreachable and brings it back.

Documented behaviour (gateway.verify.jwks): stale-on-error (the last good key set keeps serving
for ``jwks_max_stale_s``); no key set at all -> 503 ``jwks_unavailable``; an unknown kid causes at
most one refetch per ``jwks_refetch_cooldown_s``; documents over ``jwks_max_bytes`` are refused
unread; unusable keys are skipped, the others used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.tokens.authserver import AuthServer, ec_key
from tests.tokens.conftest import AUD

from .conftest import call, metric, reason_count, timed_call
from .faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 0.5
BOUND_S = TIMEOUT_S + 3.0
OK = 'gateway_jwks_fetches_total{issuer="bank-as",outcome="ok"}'
ERR = 'gateway_jwks_fetches_total{issuer="bank-as",outcome="error"}'


def body(auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream, **issuer: Any) -> str:
    extra = "".join(f"\n        {k}: {v}" for k, v in issuer.items())
    return f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: https://127.0.0.1:{proxy.port}/jwks
        ca: {pki.ca_pem}
        http_timeout_s: {TIMEOUT_S}{extra}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none, realm: bank}}
    """


@pytest.fixture
async def proxy(auth_server: AuthServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(("127.0.0.1", int(auth_server.url.rsplit(":", 1)[1]))) as p:
        yield p


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def until_status(gw: Any, pki: Pki, token: str, status: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        got, *_ = await call(gw, pki, "/accounts", bearer(token))
        if got == status:
            return
        assert time.monotonic() < deadline, f"still {got}, expected {status}"
        await asyncio.sleep(0.1)


async def test_unreachable_at_start_503_then_recovers_by_itself(
    gateway: GatewayFactory, auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await proxy.set_mode("refuse")
    with caplog.at_level(logging.WARNING):
        gw = await gateway(body(auth_server, proxy, pki, upstream, jwks_refresh_s=1))  # starts all the same
    token = auth_server.token("ec-1")
    status, headers, _, took = await timed_call(gw, pki, "/accounts", bearer(token))
    assert status == 503 and headers.get("Retry-After") and took < BOUND_S
    assert reason_count(gw, status=503, reason="jwks_unavailable") == 1
    assert metric(gw, ERR) >= 1 and "no keys yet" in caplog.text
    assert not upstream.requests
    await proxy.set_mode("forward")
    await until_status(gw, pki, token, 200)  # the background refresh retries: no restart
    assert metric(gw, OK) >= 1


async def test_unreachable_later_keeps_the_last_good_keys(
    gateway: GatewayFactory, auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await gateway(body(auth_server, proxy, pki, upstream, jwks_refetch_cooldown_s=0))
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-1"))))[0] == 200
    await proxy.set_mode("blackhole")  # hung, not refused: the fetch must time out
    with caplog.at_level(logging.WARNING):
        # An unknown kid forces a refetch, which fails within the timeout: refused as unknown.
        status, _, _, took = await timed_call(gw, pki, "/accounts", bearer(auth_server.token(key=ec_key("new"))))
    assert status == 401 and took < BOUND_S
    assert metric(gw, ERR) == 1 and "keeping the last good key set" in caplog.text
    # Known keys keep working from the last good set (stale-on-error).
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-1"))))[0] == 200
    await proxy.set_mode("forward")
    new = ec_key("ec-2")
    auth_server.keys.append(new)
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-2"))))[0] == 200


async def test_rotation_new_kid_is_fetched(
    gateway: GatewayFactory, auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream,
) -> None:
    gw = await gateway(body(auth_server, proxy, pki, upstream, jwks_refetch_cooldown_s=0))
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-1"))))[0] == 200
    fetches = auth_server.jwks_fetches
    auth_server.keys[:] = [ec_key("rotated"), *auth_server.keys[1:]]  # ec-1 retired, a new kid in
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("rotated"))))[0] == 200
    assert auth_server.jwks_fetches == fetches + 1


async def test_huge_document_refused_unread_last_keys_kept(
    gateway: GatewayFactory, auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await gateway(body(auth_server, proxy, pki, upstream, jwks_refetch_cooldown_s=0, jwks_max_bytes=65536))
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-1"))))[0] == 200
    filler = [{"kty": "EC", "kid": f"k{n}", "crv": "P-256", "x": "A" * 1000, "y": "B" * 1000} for n in range(1000)]
    auth_server.published = [*filler, auth_server.key("ec-1").public_jwk()]  # ~2 MB
    with caplog.at_level(logging.WARNING):
        status, _, _, took = await timed_call(gw, pki, "/accounts", bearer(auth_server.token(key=ec_key("x"))))
    assert status == 401 and took < BOUND_S
    assert "larger than 65536 bytes" in caplog.text and metric(gw, ERR) == 1
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-1"))))[0] == 200


async def test_unknown_kid_flood_refetch_is_rate_limited(
    gateway: GatewayFactory, auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream,
) -> None:
    gw = await gateway(body(auth_server, proxy, pki, upstream, jwks_refetch_cooldown_s=30))
    fetches = auth_server.jwks_fetches
    attacker = ec_key("attacker")
    tokens = [auth_server.token(key=attacker, headers={"kid": f"kid-{n}"}) for n in range(100)]
    results = await asyncio.gather(*(call(gw, pki, "/accounts", bearer(t)) for t in tokens))
    assert {r[0] for r in results} == {401}
    assert reason_count(gw, status=401, reason="token_unknown_key") == 100
    assert auth_server.jwks_fetches - fetches <= 1  # one fetch per cooldown, whatever the flood
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-1"))))[0] == 200


async def test_malformed_keys_mixed_with_good_ones(
    gateway: GatewayFactory, auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = ec_key("broken")
    jwk = broken.public_jwk()
    auth_server.published = [
        "not an object", 42, None, {"kid": "no-kty"}, {"kty": "EC", "kid": "bad-point", "crv": "P-256", "x": "AA",
                                                       "y": "AA"},
        {**jwk, "x": "!!!not-base64url!!!"}, {"kty": "RSA", "kid": "rsa-empty", "n": "", "e": "AQAB"},
        auth_server.key("ec-1").public_jwk(), auth_server.key("ed-1").public_jwk(),
    ]
    with caplog.at_level(logging.INFO):
        gw = await gateway(body(auth_server, proxy, pki, upstream))
    assert "skipping key #0" in caplog.text and "skipping key #6" in caplog.text
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ec-1"))))[0] == 200
    assert (await call(gw, pki, "/accounts", bearer(auth_server.token("ed-1"))))[0] == 200
    status, *_ = await call(gw, pki, "/accounts", bearer(auth_server.token(key=broken)))
    assert status == 401 and metric(gw, OK) == 1
