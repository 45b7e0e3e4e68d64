"""Opaque tokens through RFC 7662 introspection against a real AS (checklist INTR-01..INTR-12)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.errors import IntrospectionUnavailableError, InvalidTokenError
from gateway.verify import AccessTokenVerifier

from .authserver import AuthServer, ec_key, raw_jws
from .conftest import AUD, FakeClock, IssuerFactory, introspection_block, policy

pytestmark = pytest.mark.timeout(60)

OPAQUE = "opaque-Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU+/="


def active(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    doc: dict[str, Any] = {"active": True, "aud": AUD, "scope": "accounts", "client_id": "tpp-1",
                           "sub": "cust-9", "exp": now + 300, "cnf": {"jkt": "jkt-1"}}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.fixture
def icfg(auth_server: AuthServer, issuer_cfg: IssuerFactory) -> Any:
    def make(mode: str = "introspection", **intro: Any) -> Any:
        jwks = f"{auth_server.url}/jwks" if mode != "introspection" or intro.get("response") == "jwt" else None
        return issuer_cfg(mode=mode, jwks_uri=jwks, introspection=introspection_block(auth_server, **intro))
    return make


async def test_active_token(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    """INTR-01: POST form with token + token_type_hint, token never in the URL, exact round-trip."""
    auth_server.tokens[OPAQUE] = active()
    v: AccessTokenVerifier = await make_verifier(icfg())
    tok = await v.verify(OPAQUE, policy())
    assert tok.source == "introspection" and tok.subject == "cust-9" and tok.cnf_jkt == "jkt-1"
    assert tok.scopes == frozenset({"accounts"}) and tok.audience == (AUD,)
    assert auth_server.introspection_forms[-1]["token"] == OPAQUE
    assert auth_server.introspection_forms[-1]["token_type_hint"] == "access_token"
    assert all(OPAQUE not in u for u in auth_server.introspection_urls)


@pytest.mark.parametrize(
    "response",
    [
        {"active": False, "scope": "payments", "cnf": {"jkt": "x"}},  # INTR-04
        {"active": "true", "aud": AUD},  # INTR-03a
        {"active": 1, "aud": AUD},  # INTR-03b
        {},  # INTR-03c
        active(exp=int(time.time()) - 60),  # INTR-05a
        active(iss="https://other-as.example"),  # INTR-05c
        active(nbf=int(time.time()) + 3600),  # INTR-05d
        active(token_type="Bearer"),  # INTR-06c: Bearer type with cnf.jkt
    ],
)
async def test_inactive_or_invalid(auth_server: AuthServer, icfg: Any, make_verifier: Any,
                                   response: dict[str, Any]) -> None:
    auth_server.tokens[OPAQUE] = response
    v = await make_verifier(icfg())
    with pytest.raises(InvalidTokenError) as info:
        await v.verify(OPAQUE, policy())
    assert info.value.status == 401


@pytest.mark.parametrize("mode", ["error", "garbage", "html"])
async def test_bad_as_answers_fail_closed(auth_server: AuthServer, icfg: Any, make_verifier: Any,
                                          mode: str) -> None:
    """INTR-07a / INTR-03d: 500, invalid JSON, wrong media type -> 503, and nothing is cached (INTR-07b)."""
    auth_server.tokens[OPAQUE] = active()
    auth_server.introspection_mode = mode
    v = await make_verifier(icfg())
    with pytest.raises(IntrospectionUnavailableError) as info:
        await v.verify(OPAQUE, policy())
    assert info.value.status == 503 and info.value.retry_after_s
    auth_server.introspection_mode = "ok"
    await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 2


async def test_gateway_credentials_rejected_is_503(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    """INTR-07a: the AS refusing our own client credentials is not the client's fault."""
    auth_server.tokens[OPAQUE] = active()
    auth_server.client_auth = "client_secret_post"  # the gateway sends basic
    v = await make_verifier(icfg())
    with pytest.raises(IntrospectionUnavailableError):
        await v.verify(OPAQUE, policy())
    assert auth_server.auth_failures == 1


async def test_single_flight(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    """100 concurrent requests with one uncached token -> one introspection call."""
    auth_server.tokens[OPAQUE] = active()
    v = await make_verifier(icfg())
    results = await asyncio.gather(*(v.verify(OPAQUE, policy()) for _ in range(100)))
    assert {r.subject for r in results} == {"cust-9"}
    assert auth_server.introspection_calls == 1


async def test_single_flight_negative(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    v = await make_verifier(icfg())
    nope = "nope-nnnnnnnnnnnnnnnnnnnn"
    results = await asyncio.gather(*(v.verify(nope, policy()) for _ in range(100)), return_exceptions=True)
    assert all(isinstance(r, InvalidTokenError) for r in results)
    assert auth_server.introspection_calls == 1


async def test_revoked_token_stops_after_ttl(auth_server: AuthServer, icfg: Any, make_verifier: Any,
                                             clock: FakeClock) -> None:
    """INTR-09: a revoked token works until its cache entry expires, then is refused."""
    auth_server.tokens[OPAQUE] = active()
    v = await make_verifier(icfg(cache_ttl_s=60))
    await v.verify(OPAQUE, policy())
    auth_server.tokens[OPAQUE] = {"active": False}  # revoked at the AS
    clock.advance(59)
    await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 1
    clock.advance(2)
    with pytest.raises(InvalidTokenError):
        await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 2


async def test_cache_never_beyond_exp(auth_server: AuthServer, icfg: Any, make_verifier: Any,
                                      clock: FakeClock) -> None:
    """INTR-08a: exp=now+5 with a 60 s TTL -> re-introspected (and refused) after exp."""
    auth_server.tokens[OPAQUE] = active(exp=int(clock.now) + 5)
    v = await make_verifier(icfg(cache_ttl_s=60))
    await v.verify(OPAQUE, policy())
    clock.advance(6)
    auth_server.tokens[OPAQUE] = {"active": False}  # what a real AS says after exp
    with pytest.raises(InvalidTokenError):
        await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 2


async def test_local_exp_check_on_introspection(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                                make_verifier: Any, clock: FakeClock) -> None:
    """INTR-05a with zero leeway: an AS still saying active after exp is overruled locally."""
    auth_server.tokens[OPAQUE] = active(exp=int(clock.now) + 5)
    v = await make_verifier(issuer_cfg(mode="introspection", jwks_uri=None, leeway_s=0,
                                       introspection=introspection_block(auth_server)))
    await v.verify(OPAQUE, policy())
    clock.advance(6)
    with pytest.raises(InvalidTokenError) as info:
        await v.verify(OPAQUE, policy())
    assert info.value.reason == "token_expired"


async def test_caching_disabled(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    """INTR-09: cache_ttl_s 0 -> every request asks the AS."""
    auth_server.tokens[OPAQUE] = active()
    v = await make_verifier(icfg(cache_ttl_s=0))
    for _ in range(3):
        await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 3


async def test_as_down_cached_works_uncached_fails_closed(auth_server: AuthServer, icfg: Any,
                                                          make_verifier: Any, clock: FakeClock) -> None:
    auth_server.tokens[OPAQUE] = active()
    auth_server.tokens["other-tttttttttttttttttttt"] = active()
    v = await make_verifier(icfg())
    await v.verify(OPAQUE, policy())
    auth_server.introspection_mode = "error"
    clock.advance(30)
    assert (await v.verify(OPAQUE, policy())).subject == "cust-9"
    with pytest.raises(IntrospectionUnavailableError):
        await v.verify("other-tttttttttttttttttttt", policy())


async def test_as_unreachable(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    cfg = icfg(endpoint="https://127.0.0.1:9/introspect", timeout_s=2)
    v = await make_verifier(cfg)
    with pytest.raises(IntrospectionUnavailableError):
        await v.verify(OPAQUE, policy())


async def test_negative_cache(auth_server: AuthServer, icfg: Any, make_verifier: Any, clock: FakeClock) -> None:
    v = await make_verifier(icfg(negative_cache_ttl_s=5))
    for _ in range(3):
        with pytest.raises(InvalidTokenError):
            await v.verify("unknown-uuuuuuuuuuuuuuuuuu", policy())
    assert auth_server.introspection_calls == 1
    clock.advance(6)
    with pytest.raises(InvalidTokenError):
        await v.verify("unknown-uuuuuuuuuuuuuuuuuu", policy())
    assert auth_server.introspection_calls == 2


async def test_memory_bounded(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    """Distinct garbage tokens: the negative cache stays at its bound."""
    v: AccessTokenVerifier = await make_verifier(icfg(negative_cache_size=50, cache_size=50))
    await asyncio.gather(*(v.verify(f"junk-{n:020d}", policy()) for n in range(400)), return_exceptions=True)
    intro = v.issuers["bank-as"].introspector
    assert intro is not None
    assert len(intro.negative) == 50 and len(intro.positive) == 0 and not intro._inflight


async def test_jwt_shaped_token_on_introspection_route(auth_server: AuthServer, icfg: Any,
                                                       make_verifier: Any) -> None:
    """INTR-12: an alg:none JWT on an introspection-only route is introspected, never validated locally."""
    forged = raw_jws({"alg": "none", "typ": "at+jwt"}, {"iss": auth_server.issuer, "aud": AUD, "exp": 2**31})
    v = await make_verifier(icfg())
    with pytest.raises(InvalidTokenError):
        await v.verify(forged, policy())
    assert auth_server.introspection_calls == 1


async def test_jwt_with_fallback(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    """Mode jwt_with_introspection_fallback: JWTs locally, opaque tokens introspected."""
    auth_server.tokens[OPAQUE] = active()
    v = await make_verifier(icfg(mode="jwt_with_introspection_fallback"))
    await v.verify(auth_server.token(), policy())
    assert auth_server.introspection_calls == 0
    await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 1
    # A JWT of another issuer is not "opaque": it is refused, never sent to our AS.
    with pytest.raises(InvalidTokenError) as info:
        await v.verify(auth_server.token(iss="https://other-as.example"), policy())
    assert info.value.reason == "token_wrong_issuer" and auth_server.introspection_calls == 1


async def test_jwt_only_route_refuses_opaque(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                             make_verifier: Any) -> None:
    v = await make_verifier(issuer_cfg())
    with pytest.raises(InvalidTokenError) as info:
        await v.verify(OPAQUE, policy())
    assert info.value.reason == "token_malformed"


@pytest.mark.parametrize("method", ["client_secret_post", "private_key_jwt", "tls_client_auth"])
async def test_client_auth_methods(auth_server: AuthServer, icfg: Any, make_verifier: Any, pki: Any,
                                   tmp_path: Path, method: str) -> None:
    """INTR-02a: each client authentication method is accepted by the AS."""
    auth_server.tokens[OPAQUE] = active()
    auth_server.client_auth = method
    client_auth: dict[str, Any] = {"method": method, "client_id": "gateway"}
    if method == "client_secret_post":
        client_auth["client_secret"] = "s3cret:+/="
    elif method == "private_key_jwt":
        key = ec_key("gw")
        auth_server.client_public_key = key.private.public_key()
        pem = tmp_path / "gw.pem"
        pem.write_bytes(key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        client_auth.update(private_key=str(pem), private_key_alg="ES256", private_key_kid="gw")
    else:
        client_auth.update(tls_cert=str(pki.client_a.cert), tls_key=str(pki.client_a.key))
    v = await make_verifier(icfg(client_auth=client_auth))
    await v.verify(OPAQUE, policy())
    assert auth_server.auth_failures == 0


async def test_discovered_endpoint(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any) -> None:
    auth_server.tokens[OPAQUE] = active()
    block = introspection_block(auth_server, endpoint=None)
    v = await make_verifier(issuer_cfg(mode="introspection", jwks_uri=None, discovery=True, introspection=block))
    await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 1


async def test_signed_response_rfc9701(auth_server: AuthServer, icfg: Any, make_verifier: Any) -> None:
    """INTR-10: a signed response verifies; a plain JSON answer in JWT mode is refused (503)."""
    auth_server.tokens[OPAQUE] = active()
    auth_server.introspection_mode = "jwt"
    v = await make_verifier(icfg(response="jwt"))
    assert (await v.verify(OPAQUE, policy())).subject == "cust-9"
    auth_server.introspection_mode = "ok"
    with pytest.raises(IntrospectionUnavailableError):
        await v.verify("second-token-ssssssssssssss", policy())


async def test_untrusted_as_certificate(auth_server: AuthServer, icfg: Any, make_verifier: Any, pki: Any) -> None:
    """INTR-02b: the AS presents a certificate we do not trust -> no token accepted (503)."""
    auth_server.tokens[OPAQUE] = active()
    cfg = icfg().model_copy(update={"ca": str(pki.other_ca_pem)})
    v = await make_verifier(cfg)
    with pytest.raises(IntrospectionUnavailableError):
        await v.verify(OPAQUE, policy())
    assert auth_server.introspection_calls == 0
