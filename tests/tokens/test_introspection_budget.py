"""Introspection under a flood of garbage tokens (issue #13, finding 15; checklist INTR-11).

A real, slow AS (``AuthServer.hold_unknown``: calls for unknown tokens wait until the test lets
them go) and many concurrent garbage tokens. The assertions are about order and outcomes, not
time: while the garbage calls are still held at the AS, a valid token (cached, or uncached from
another source) gets through; the garbage beyond the bounds is shed with 503 + Retry-After; the
number of AS calls stays at the bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import parse_config
from gateway.errors import ConfigError, IntrospectionUnavailableError, InvalidTokenError
from gateway.model import AuthRequest, PeerCertificate
from tests.conftest import GatewayFactory, Pki, Upstream

from .authserver import AuthServer
from .conftest import AUD, introspection_block, policy

pytestmark = pytest.mark.timeout(60)

# A liveness bound for "eventually" (never reached by a correct gateway; reached, without the
# bounds, by requests queued behind held calls with no deadline). Not a latency threshold.
LIVENESS_S = 20.0


def garbage() -> str:
    return "garbage-" + uuid.uuid4().hex


def active(**extra: Any) -> dict[str, Any]:
    doc = {"active": True, "aud": AUD, "scope": "accounts", "client_id": "tpp-1", "sub": "cust-9",
           "exp": int(time.time()) + 300}
    doc.update(extra)
    return doc


async def until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + LIVENESS_S
    while not condition():
        assert loop.time() < end, "gave up waiting"
        await asyncio.sleep(0.01)


def icfg_for(auth_server: AuthServer, issuer_cfg: Any, **intro: Any) -> Any:
    return issuer_cfg(mode="introspection", jwks_uri=None, introspection=introspection_block(auth_server, **intro))


async def test_bounded_queue_with_deadline(auth_server: AuthServer, issuer_cfg: Any, make_verifier: Any) -> None:
    """2 slots, 3 waiting places: of 10 concurrent garbage tokens 2 reach the AS, 3 wait and give
    up at the queue deadline, 5 are refused at once. All refusals are 503 + Retry-After."""
    auth_server.hold_unknown = asyncio.Event()
    v = await make_verifier(icfg_for(auth_server, issuer_cfg, max_concurrent_calls=2, max_queued_calls=3,
                                     queue_timeout_s=0.3))
    tasks = [asyncio.create_task(v.verify(garbage(), policy())) for _ in range(10)]
    await until(lambda: sum(t.done() for t in tasks) == 8 and auth_server.held == 2)
    shed = [t.exception() for t in tasks if t.done()]
    assert all(isinstance(e, IntrospectionUnavailableError) for e in shed)
    reasons = sorted(e.reason for e in shed if isinstance(e, IntrospectionUnavailableError))
    assert reasons == ["introspection_busy"] * 5 + ["introspection_queue_timeout"] * 3
    assert all(e.status == 503 and e.retry_after_s for e in shed if isinstance(e, IntrospectionUnavailableError))
    auth_server.hold_unknown.set()
    rest = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, InvalidTokenError) for r in rest) == 2
    assert auth_server.introspection_calls == 2


async def test_one_source_cannot_take_every_slot(auth_server: AuthServer, issuer_cfg: Any,
                                                 make_verifier: Any) -> None:
    """200 concurrent garbage tokens from one source: 8 (the per-source budget) reach the AS, the
    rest are refused at once; meanwhile another source's uncached valid token is introspected."""
    auth_server.hold_unknown = asyncio.Event()
    auth_server.tokens["valid-" + "v" * 20] = active()
    v = await make_verifier(icfg_for(auth_server, issuer_cfg))
    flood = [asyncio.create_task(v.verify(garbage(), policy(), source="ip:203.0.113.9")) for _ in range(200)]
    await until(lambda: sum(t.done() for t in flood) == 192 and auth_server.held == 8)
    assert {getattr(t.exception(), "reason", None) for t in flood if t.done()} == {"introspection_source_busy"}
    token = await v.verify("valid-" + "v" * 20, policy(), source="ip:198.51.100.7")
    assert token.subject == "cust-9"
    assert not all(t.done() for t in flood)  # the garbage is still held at the AS
    auth_server.hold_unknown.set()
    await asyncio.gather(*flood, return_exceptions=True)
    assert auth_server.introspection_calls == 9
    # The budget is given back: the source may introspect again.
    with pytest.raises(InvalidTokenError):
        await v.verify(garbage(), policy(), source="ip:203.0.113.9")


@pytest.mark.parametrize("token", ["short-tok", "x" * 8193], ids=["too-short", "too-long"])
async def test_token_length_checked_before_any_call(auth_server: AuthServer, issuer_cfg: Any,
                                                     make_verifier: Any, token: str) -> None:
    v = await make_verifier(icfg_for(auth_server, issuer_cfg))
    with pytest.raises(InvalidTokenError) as info:
        await v.verify(token, policy())
    assert info.value.reason == "token_malformed"
    assert auth_server.introspection_calls == 0


def _req(remote: str, cert: bytes | None = None, xff: str | None = None) -> AuthRequest:
    headers = CIMultiDict({"X-Forwarded-For": xff} if xff is not None else {})
    return AuthRequest(method="GET", url="https://gw/x", path="/x", query_string="",
                       headers=CIMultiDictProxy(headers), remote=remote,
                       peer_cert=PeerCertificate(cert) if cert is not None else None)


def test_request_source() -> None:
    """A client certificate names the source; else the address (IPv6 by /64, one host's usual share)."""
    from gateway.verify.admission import request_source

    assert request_source(_req("192.0.2.1")) == "ip:192.0.2.1"
    assert request_source(_req("2001:db8:1:2:aaaa::1")) == request_source(_req("2001:db8:1:2:bbbb::9"))
    assert request_source(_req("2001:db8:1:2::1")) != request_source(_req("2001:db8:1:3::1"))
    with_cert = request_source(_req("192.0.2.1", b"der-a"))
    assert with_cert is not None and with_cert.startswith("x5t:")
    assert with_cert != request_source(_req("192.0.2.1", b"der-b"))
    assert request_source(_req("")) is None
    # Behind a trusted front proxy: the client it forwarded for, never the proxy (shared by all),
    # never what the client itself wrote further left.
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    assert request_source(_req("10.1.1.1", xff="6.6.6.6, 192.0.2.5"), proxies) == "ip:192.0.2.5"
    assert request_source(_req("10.1.1.1", xff="192.0.2.5, 10.2.2.2"), proxies) == "ip:192.0.2.5"
    assert request_source(_req("10.1.1.1"), proxies) is None
    assert request_source(_req("10.1.1.1", xff="not-an-ip"), proxies) is None
    assert request_source(_req("192.0.2.9", xff="6.6.6.6"), proxies) == "ip:192.0.2.9"  # not a proxy


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("queue_timeout_s: 0", "introspection.queue_timeout_s: Input should be greater than 0"),
        ("max_concurrent_per_source: 0", "introspection.max_concurrent_per_source: Input should be greater"),
        ("min_token_length: 100\n      max_token_length: 50", "min_token_length must not exceed max_token_length"),
    ],
)
def test_bad_settings_named_at_load(field: str, expected: str) -> None:
    text = f"""
issuers:
  - name: as
    issuer: https://as.example
    mode: introspection
    introspection:
      endpoint: https://as.example/introspect
      client_auth: {{method: client_secret_basic, client_id: gw, client_secret: s}}
      {field}
routes:
  - {{id: a, match: {{path_prefix: /}}, upstream: 'http://127.0.0.1:9', auth: {{issuers: [as], audience: x}}}}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml")
    assert expected in str(info.value)


# --- end to end through the gateway ------------------------------------------------------------

async def _get(port: int, pki: Pki, token: str, cert: Any) -> tuple[int, str | None]:
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{port}/accounts", ssl=pki.client_context(cert),
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        await r.read()
        return r.status, r.headers.get("Retry-After")


async def test_flood_from_one_client_leaves_others_served(
    gateway: GatewayFactory, auth_server: AuthServer, pki: Pki, upstream: Upstream
) -> None:
    """Defaults only. Client A floods 60 distinct garbage tokens at a slow AS; A's cached token and
    client B's uncached token are served while A's garbage is held; A's excess gets a fast 503."""
    gw = await gateway(f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        ca: {pki.ca_pem}
        mode: introspection
        introspection:
          endpoint: {auth_server.url}/introspect
          client_auth: {{method: client_secret_basic, client_id: gateway, client_secret: "s3cret:+/="}}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none}}
    """)
    cached, fresh = "cached-" + "c" * 20, "fresh-" + "f" * 20
    auth_server.tokens[cached] = active()
    auth_server.tokens[fresh] = active()
    assert (await _get(gw.port, pki, cached, pki.client_a))[0] == 200  # now in the cache
    auth_server.hold_unknown = asyncio.Event()
    flood: list[asyncio.Task[tuple[int, str | None]]] = [
        asyncio.create_task(_get(gw.port, pki, garbage(), pki.client_a)) for _ in range(60)
    ]
    await until(lambda: sum(t.done() for t in flood) == 52 and auth_server.held == 8)
    assert {t.result() for t in flood if t.done()} == {(503, "1")}
    ok: list[Awaitable[tuple[int, str | None]]] = [
        _get(gw.port, pki, cached, pki.client_a), _get(gw.port, pki, fresh, pki.client_b)
    ]
    assert [s for s, _ in await asyncio.gather(*ok)] == [200, 200]
    assert not all(t.done() for t in flood)
    auth_server.hold_unknown.set()
    assert {(await t)[0] for t in flood} == {503, 401}
    assert auth_server.introspection_calls == 1 + 8 + 1


async def test_token_scanning_source_throttled(auth_server: AuthServer, issuer_cfg: Any, make_verifier: Any,
                                               clock: Any) -> None:
    """INTR-11: a fast AS does not make scanning cheap. After 5 inactive answers within the window,
    the source's uncached tokens are refused without an AS call (503); other sources, and the
    source's cached tokens, are unaffected; the window ends and the source may try again."""
    auth_server.tokens["valid-" + "v" * 20] = active()
    v = await make_verifier(icfg_for(auth_server, issuer_cfg, max_inactive_per_source=5, inactive_window_s=60))
    await v.verify("valid-" + "v" * 20, policy(), source="ip:203.0.113.9")  # cached from now on
    outcomes = []
    for _ in range(50):
        try:
            await v.verify(garbage(), policy(), source="ip:203.0.113.9")
        except (InvalidTokenError, IntrospectionUnavailableError) as exc:
            outcomes.append((exc.status, exc.reason))
    assert outcomes == [(401, "token_inactive")] * 5 + [(503, "introspection_source_throttled")] * 45
    assert auth_server.introspection_calls == 1 + 5
    assert (await v.verify("valid-" + "v" * 20, policy(), source="ip:203.0.113.9")).subject == "cust-9"
    with pytest.raises(InvalidTokenError):
        await v.verify(garbage(), policy(), source="ip:198.51.100.7")
    clock.advance(61)
    with pytest.raises(InvalidTokenError):
        await v.verify(garbage(), policy(), source="ip:203.0.113.9")
    assert auth_server.introspection_calls == 1 + 5 + 2
