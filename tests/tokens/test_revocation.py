"""Issue #13, revocation: JWT introspection per route, cached verifications vs the JWKS, stale limits.

Real parts: a real AS over TLS (JWKS + introspection), real signatures, the gateway's own verifier.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.config.issuers import IssuerConfig
from gateway.errors import ConfigError, IntrospectionUnavailableError, InvalidTokenError
from gateway.verify import AccessTokenVerifier

from .authserver import AuthServer, ec_key
from .conftest import AUD, FakeClock, IssuerFactory, introspection_block, policy

pytestmark = pytest.mark.timeout(60)


async def refused(v: AccessTokenVerifier, token: str, reason: str, **pol: Any) -> None:
    with pytest.raises(InvalidTokenError) as info:
        await v.verify(token, policy(**pol))
    assert info.value.status == 401 and info.value.error == "invalid_token"
    assert info.value.reason == reason, info.value.reason


async def wait_for_fetches(auth_server: AuthServer, n: int) -> None:
    for _ in range(500):
        if auth_server.jwks_fetches >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"JWKS fetched {auth_server.jwks_fetches} times, expected {n}")


# --- a cached verification dies when its key leaves the JWKS -----------------------------------

async def test_cached_token_refused_once_its_kid_leaves_the_jwks(
    auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any
) -> None:
    """Issue #13 / OPS-06: accept (cached), the AS drops the key, the background refresh sees it: refused."""
    v = await make_verifier(issuer_cfg(jwks_refresh_s=0.05))
    tok = auth_server.token("ec-1")
    other = auth_server.token("rsa-1")
    await v.verify(tok, policy())
    await v.verify(other, policy())
    assert len(v.token_cache) == 2
    auth_server.published = [auth_server.key("rsa-1").public_jwk()]  # ec-1 withdrawn (compromised)
    await wait_for_fetches(auth_server, auth_server.jwks_fetches + 2)
    await refused(v, tok, "token_unknown_key")
    await v.verify(other, policy())  # tokens of the remaining key are unaffected


async def test_cached_token_refused_when_the_kid_gets_another_key(
    auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any
) -> None:
    """Same kid, new key material (re-keyed after a leak): tokens of the old key die too."""
    v = await make_verifier(issuer_cfg(jwks_refresh_s=0.05))
    tok = auth_server.token("ec-1")
    await v.verify(tok, policy())
    replacement = ec_key("ec-1")
    auth_server.published = [replacement.public_jwk(), auth_server.key("rsa-1").public_jwk()]
    await wait_for_fetches(auth_server, auth_server.jwks_fetches + 2)
    await refused(v, tok, "token_bad_signature")
    await v.verify(auth_server.token(key=replacement), policy())


# --- jwks_max_stale_s is hours, not a day ---------------------------------------------------------

def test_jwks_max_stale_default_and_limit(issuer_cfg: IssuerFactory) -> None:
    assert issuer_cfg().jwks_max_stale_s == 3600
    assert issuer_cfg(jwks_max_stale_s=6 * 3600).jwks_max_stale_s == 21600
    with pytest.raises(ValueError, match="jwks_max_stale_s"):
        issuer_cfg(jwks_max_stale_s=6 * 3600 + 1)
    with pytest.raises(ValueError, match="jwks_max_stale_s"):
        issuer_cfg(jwks_refresh_s=600, jwks_max_stale_s=300)


async def test_stale_keys_unusable_after_an_hour_by_default(
    auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, clock: FakeClock
) -> None:
    """AS unreachable: the last good key set serves for at most an hour (it was a day)."""
    v = await make_verifier(issuer_cfg(jwks_refetch_cooldown_s=0))
    tok = auth_server.token("ec-1")
    await v.verify(tok, policy())
    auth_server.jwks_down = True
    clock.advance(3000)
    await v.verify(auth_server.token("ec-1"), policy())
    clock.advance(700)
    from gateway.errors import KeySourceUnavailableError

    with pytest.raises(KeySourceUnavailableError):
        await v.verify(auth_server.token("ec-1"), policy())


# --- introspect: always -------------------------------------------------------------------------

@pytest.fixture
def jwt_and_introspection(auth_server: AuthServer, issuer_cfg: IssuerFactory) -> IssuerConfig:
    return issuer_cfg(introspection=introspection_block(auth_server, cache_ttl_s=30))


def active_for(auth_server: AuthServer, token: str, **extra: Any) -> None:
    import jwt as pyjwt

    claims = pyjwt.decode(token, options={"verify_signature": False})
    doc = {"active": True, **{k: claims[k] for k in ("iss", "sub", "client_id", "aud", "exp", "scope", "jti")}}
    doc.update(extra)
    auth_server.tokens[token] = {k: v for k, v in doc.items() if v is not None}


async def test_introspect_always_revokes_a_jwt(
    auth_server: AuthServer, jwt_and_introspection: IssuerConfig, make_verifier: Any, clock: FakeClock
) -> None:
    """JWT-15 / INTR-09: a JWT on an ``introspect: always`` route: verified locally AND active at the
    AS; once the AS revokes it, it is refused within the introspection cache TTL."""
    v = await make_verifier(jwt_and_introspection)
    tok = auth_server.token("ec-1")
    active_for(auth_server, tok)
    got = await v.verify(tok, policy(introspect="always"))
    assert got.source == "jwt" and got.subject == "cust-123"
    assert auth_server.introspection_calls == 1
    await v.verify(tok, policy(introspect="always"))
    assert auth_server.introspection_calls == 1  # within cache_ttl_s
    auth_server.tokens[tok] = {"active": False}
    clock.advance(31)
    await refused(v, tok, "token_inactive", introspect="always")
    # The same JWT on a route without the mode is still verified locally only.
    await v.verify(tok, policy())


async def test_introspect_always_checks_the_signature_first(
    auth_server: AuthServer, jwt_and_introspection: IssuerConfig, make_verifier: Any
) -> None:
    v = await make_verifier(jwt_and_introspection)
    forged = auth_server.token(key=ec_key("ec-1"))
    active_for(auth_server, forged)  # a careless AS that says active to anything
    await refused(v, forged, "token_bad_signature", introspect="always")
    assert auth_server.introspection_calls == 0


@pytest.mark.parametrize("field", ["sub", "client_id"])
async def test_introspect_always_both_must_agree(
    auth_server: AuthServer, jwt_and_introspection: IssuerConfig, make_verifier: Any, field: str
) -> None:
    v = await make_verifier(jwt_and_introspection)
    tok = auth_server.token("ec-1")
    active_for(auth_server, tok, **{field: "someone-else"})
    await refused(v, tok, "token_introspection_mismatch", introspect="always")


async def test_introspect_always_fails_closed(
    auth_server: AuthServer, jwt_and_introspection: IssuerConfig, make_verifier: Any
) -> None:
    v = await make_verifier(jwt_and_introspection)
    tok = auth_server.token("ec-1")
    active_for(auth_server, tok)
    auth_server.introspection_mode = "error"
    with pytest.raises(IntrospectionUnavailableError):
        await v.verify(tok, policy(introspect="always"))


async def test_introspect_always_without_the_mode_never_introspects_jwts(
    auth_server: AuthServer, jwt_and_introspection: IssuerConfig, make_verifier: Any
) -> None:
    v = await make_verifier(jwt_and_introspection)
    await v.verify(auth_server.token("ec-1"), policy())
    assert auth_server.introspection_calls == 0


ROUTE = """
routes:
  - id: payments
    match: {path_prefix: /payments}
    upstream: http://127.0.0.1:1
    external_origin: https://api.example
    auth: {issuers: [bank], audience: https://api.example, introspect: always}
issuers:
"""


def test_introspect_always_needs_an_introspection_endpoint() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ROUTE + "  - {name: bank, issuer: https://as.example, jwks_uri: https://as.example/j}")
    assert any("routes[0].auth.introspect" in p and "bank" in p for p in info.value.problems), info.value.problems
    ok = parse_config(ROUTE + "  - {name: bank, issuer: https://as.example, jwks_uri: https://as.example/j, "
                      "introspection: {endpoint: https://as.example/i, client_auth: "
                      "{method: client_secret_basic, client_id: gw, client_secret: s}}}")
    assert ok.routes[0].auth.introspect == "always"  # type: ignore[union-attr]
    assert AUD


async def test_introspect_always_through_the_gateway(gateway: Any, auth_server: AuthServer, pki: Any,
                                                     upstream: Any) -> None:
    """INTR-09: payments introspects every JWT (cache_ttl_s 0: each revocation at once); accounts does not."""
    import aiohttp

    gw = await gateway(f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: {auth_server.url}/jwks
        ca: {pki.ca_pem}
        introspection:
          endpoint: {auth_server.url}/introspect
          cache_ttl_s: 0
          client_auth: {{method: client_secret_basic, client_id: gateway, client_secret: "s3cret:+/="}}
    routes:
      - id: payments
        match: {{path_prefix: /payments}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none, introspect: always}}
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none}}
    """)
    tok = auth_server.token("ec-1")
    active_for(auth_server, tok)

    async def status(path: str) -> int:
        async with aiohttp.ClientSession() as s, s.get(
            f"https://localhost:{gw.port}{path}", ssl=pki.client_context(),
            headers={"Authorization": f"Bearer {tok}"},
        ) as r:
            return r.status

    assert await status("/payments/1") == 200 and await status("/accounts/1") == 200
    assert auth_server.introspection_calls == 1
    auth_server.tokens[tok] = {"active": False}
    assert await status("/payments/1") == 401
    assert await status("/accounts/1") == 200  # a local-only route: until exp (documented)
