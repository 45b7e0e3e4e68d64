"""``gateway.decision.core.check``: the proxy's decision on a request another proxy received, with
real tokens (the AS key's JWKS), real DPoP proofs and the session PKI's client certificates."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.app import GatewayState, build_state
from gateway.config import parse_config
from gateway.decision.core import OriginalRequest, Verdict, check
from gateway.observability.accesslog import AccessLog
from gateway.observability.observer import Observer
from tests.conftest import Pki
from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import Signer, es256

from .support import ORIGIN_HOST, body_json, decision_yaml, dpop_headers, proof, url_pem

ORIGIN = f"https://{ORIGIN_HOST}"


@pytest.fixture(scope="module")
def as_key(tmp_path_factory: pytest.TempPathFactory) -> AsKey:
    return AsKey(tmp_path_factory.mktemp("as"))


@pytest.fixture(scope="module")
def k1() -> Signer:
    return es256()


@pytest.fixture(scope="module")
def k2() -> Signer:
    return es256()


StateFactory = Callable[..., Awaitable[GatewayState]]


@pytest.fixture
async def make_state(pki: Pki, as_key: AsKey) -> AsyncIterator[StateFactory]:
    states: list[GatewayState] = []

    async def make(**kw: Any) -> GatewayState:
        state = build_state(parse_config(decision_yaml(pki, as_key, **kw), source="decision.yaml"))
        await state.start()
        states.append(state)
        return state

    yield make
    for s in states:
        await s.close()


@pytest.fixture
async def state(make_state: StateFactory) -> GatewayState:
    return await make_state()


def original(
    path: str = "/accounts",
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    *,
    method: str = "GET",
    host: str = ORIGIN_HOST,
    cert: bytes | None = None,
    mode: str = "ext_authz_grpc",
    scheme: str = "https",
) -> OriginalRequest:
    return OriginalRequest.build(
        mode,  # type: ignore[arg-type]
        method=method, scheme=scheme, authority=host, raw_path=path, headers=headers,
        remote="192.0.2.10", client_cert=url_pem(cert) if cert is not None else None,
    )


def header(v: Verdict, name: str) -> str | None:
    return next((val for k, val in v.response_headers if k.lower() == name.lower()), None)


def upstream(v: Verdict) -> dict[str, str]:
    return {k.lower(): val for k, val in v.upstream_add}


async def test_valid_dpop_request_is_allowed_with_identity_headers(
    state: GatewayState, as_key: AsKey, k1: Signer
) -> None:
    token = as_key.token(jkt=k1.jkt)
    spoofed = [("X-Auth-Subject", "admin"), ("X-Auth-Client-Id", "other-tpp"),
               ("X-Forwarded-Client-Cert", "Hash=00"), ("X-HTTP-Method-Override", "DELETE"),
               ("X-Forwarded-For", "192.0.2.10"), ("Accept", "application/json")]
    v = await check(state, original("/accounts/1?from=2024", [*dpop_headers(token, proof(k1, token,
                                    htu=ORIGIN + "/accounts/1")), *spoofed]))
    assert v.allowed and v.status == 200 and v.route_id == "accounts"
    up = upstream(v)
    assert up["x-auth-subject"] == "cust-123" and up["x-auth-client-id"] == "tpp-1"
    assert up["x-auth-binding"] == "dpop" and up["x-auth-cnf-thumbprint"] == k1.jkt
    assert "x-fapi-interaction-id" in up
    removed = set(v.upstream_remove)
    # Credentials (the route does not forward them), spoofable identity and override headers go;
    # the calling proxy's own X-Forwarded-For and ordinary headers stay.
    assert {"authorization", "dpop", "x-forwarded-client-cert",
            "x-http-method-override"} <= removed
    assert "x-forwarded-for" not in removed and "accept" not in removed
    assert header(v, "x-fapi-interaction-id") == up["x-fapi-interaction-id"]


async def test_replayed_proof_is_denied_like_the_proxy(state: GatewayState, as_key: AsKey, k1: Signer) -> None:
    token = as_key.token(jkt=k1.jkt)
    p = proof(k1, token, htu=ORIGIN + "/accounts")
    assert (await check(state, original(headers=dpop_headers(token, p)))).allowed
    v = await check(state, original(headers=dpop_headers(token, p)))
    assert not v.allowed and v.status == 401 and v.reason == "dpop_replay"
    www = header(v, "WWW-Authenticate")
    assert www is not None and www.startswith('DPoP error="invalid_dpop_proof"')
    assert body_json(v.body)["error"] == "invalid_dpop_proof"
    assert header(v, "Cache-Control") == "no-store"
    assert not v.upstream_add and not v.upstream_remove


@pytest.mark.parametrize(("case", "status", "error"), [
    ("wrong htu", 401, "invalid_dpop_proof"),
    ("other key", 401, "invalid_token"),
    ("missing token", 401, None),
    ("expired token", 401, "invalid_token"),
    ("wrong scope", 403, "insufficient_scope"),
])
async def test_refusals_carry_the_proxys_status_challenge_and_body(
    state: GatewayState, as_key: AsKey, k1: Signer, k2: Signer, case: str, status: int, error: str | None
) -> None:
    token = as_key.token(jkt=k1.jkt)
    headers = {
        "wrong htu": dpop_headers(token, proof(k1, token, htu=ORIGIN + "/payments")),
        "other key": dpop_headers(token, proof(k2, token, htu=ORIGIN + "/accounts")),
        "missing token": [],
        "expired token": dpop_headers(t := as_key.token(jkt=k1.jkt, exp=int(time.time()) - 600),
                                      proof(k1, t, htu=ORIGIN + "/accounts")),
        "wrong scope": dpop_headers(t2 := as_key.token(jkt=k1.jkt, scope="payments"),
                                    proof(k1, t2, htu=ORIGIN + "/accounts")),
    }[case]
    v = await check(state, original(headers=headers))
    assert not v.allowed and v.status == status, (v.status, v.reason)
    www = header(v, "WWW-Authenticate")
    assert www is not None and www.startswith("DPoP")
    if error is None:
        assert "error=" not in www  # RFC 6750 §3.1: no error code when no credentials were sent
    else:
        assert f'error="{error}"' in www and body_json(v.body)["error"] == error


async def test_mtls_binding_uses_the_fronts_client_certificate(
    state: GatewayState, as_key: AsKey, pki: Pki
) -> None:
    a, b = pki.client_a, pki.client_b
    from gateway.model import sha256_b64url

    token = as_key.token(scope="payments", cnf={"x5t#S256": sha256_b64url(a.der)})
    auth = [("authorization", f"Bearer {token}")]
    ok = await check(state, original("/payments", auth, cert=a.pem))
    assert ok.allowed, (ok.status, ok.body)
    up = upstream(ok)
    assert up["x-client-cert-thumbprint"] == sha256_b64url(a.der) and up["x-auth-binding"] == "mtls"
    other = await check(state, original("/payments", auth, cert=b.pem))
    assert not other.allowed and other.status == 401
    assert 'error="invalid_token"' in (header(other, "WWW-Authenticate") or "")
    none = await check(state, original("/payments", auth))
    assert not none.allowed and none.status == 401
    bad = await check(state, original("/payments", auth, cert=b"-----BEGIN CERTIFICATE-----\nAAAA"))
    assert not bad.allowed and bad.status == 400


async def test_a_client_sent_certificate_header_is_not_believed(
    state: GatewayState, as_key: AsKey, pki: Pki
) -> None:
    """source: attribute: only Envoy's attribute counts; an XFCC the client wrote is removed, not read."""
    from gateway.model import sha256_b64url

    a = pki.client_a
    token = as_key.token(scope="payments", cnf={"x5t#S256": sha256_b64url(a.der)})
    xfcc = f'Hash={hashlib.sha256(a.der).hexdigest()};Cert="{url_pem(a.pem)}"'
    v = await check(state, original("/payments", [("authorization", f"Bearer {token}"),
                                                  ("x-forwarded-client-cert", xfcc)]))
    assert not v.allowed and v.status == 401
    assert 'gateway_front_proxy_cert_headers_dropped_total{header="x-forwarded-client-cert"} 1.0' in \
        state.metrics.render().decode()


async def test_dpop_nonce_challenge_and_retry(make_state: StateFactory, as_key: AsKey, k1: Signer) -> None:
    """RFC 9449 §9: the denial carries DPoP-Nonce (for the proxy to relay); the retry with it passes."""
    state = await make_state(dpop="nonce: {secrets: ['" + "n" * 40 + "']}", nonce=True)
    token = as_key.token(jkt=k1.jkt)
    first = await check(state, original(headers=dpop_headers(token, proof(k1, token, htu=ORIGIN + "/accounts"))))
    assert not first.allowed and first.status == 401
    assert 'error="use_dpop_nonce"' in (header(first, "WWW-Authenticate") or "")
    nonce = header(first, "DPoP-Nonce")
    assert nonce
    again = await check(state, original(headers=dpop_headers(token, proof(k1, token, htu=ORIGIN + "/accounts",
                                                                           nonce=nonce))))
    assert again.allowed, (again.status, again.body)


async def test_host_path_and_method_checks_are_the_proxys(state: GatewayState, as_key: AsKey, k1: Signer) -> None:
    token = as_key.token(jkt=k1.jkt)
    good = dpop_headers(token, proof(k1, token, htu=ORIGIN + "/accounts"))
    misdirected = await check(state, original(headers=good, host="evil.example"))
    assert misdirected.status == 421 and not misdirected.allowed
    wrong_port = await check(state, original(headers=good, host=f"{ORIGIN_HOST}:8443"))
    assert wrong_port.status == 400 and wrong_port.reason == "bad_host"
    assert (await check(state, original("/open/%2e%2e/accounts"))).status == 400  # encoded dot segment
    assert (await check(state, original("/nowhere"))).status == 404
    underscore = await check(state, original("/open", [("X_Auth_Subject", "admin")]))
    assert underscore.status == 400 and underscore.reason == "underscore_header_name"
    assert (await check(state, original("/open", method="TRACE"))).status == 405
    assert (await check(state, original("/open", scheme="ftp"))).status == 400
    assert (await check(state, original("/open", scheme=""))).status == 400  # not guessed
    opened = await check(state, original("/open/x", [("Authorization", "Bearer x"), ("X-Auth-Subject", "a")]))
    assert opened.allowed and set(opened.upstream_remove) >= {"authorization", "x-auth-subject"}
    last_hop = await check(state, original("/open", [("Max-Forwards", "0")], method="OPTIONS"))
    assert not last_hop.allowed and last_hop.status == 204 and header(last_hop, "Allow")


async def test_cors_preflight_is_answered_not_forwarded(pki: Pki, as_key: AsKey) -> None:
    """The proxy answers a CORS preflight itself: so does a decision front (a denial-shaped 204)."""
    text = decision_yaml(pki, as_key).replace(
        "    auth: none\n", "    auth: none\n    cors: {allowed_origins: ['https://tpp.example']}\n", 1)
    assert "cors:" in text
    state = build_state(parse_config(text))
    await state.start()
    try:
        pre = await check(state, original("/open/x", [("Origin", "https://tpp.example"),
                                                      ("Access-Control-Request-Method", "GET")], method="OPTIONS"))
        assert not pre.allowed and pre.status == 204
        assert header(pre, "Access-Control-Allow-Origin") == "https://tpp.example"
        other = await check(state, original("/open/x", [("Origin", "https://evil.example"),
                                                        ("Access-Control-Request-Method", "GET")], method="OPTIONS"))
        assert not other.allowed and other.status == 403
    finally:
        await state.close()


async def test_dependency_down_is_a_503_denial_never_an_allow(
    make_state: StateFactory, as_key: AsKey, k1: Signer
) -> None:
    with socket.socket() as s:  # a port nothing listens on: the replay store is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = await make_state(dpop=f"replay: {{backend: redis, redis: {{url: 'redis://127.0.0.1:{port}/0'}}}}")
    token = as_key.token(jkt=k1.jkt)
    v = await check(state, original(headers=dpop_headers(token, proof(k1, token, htu=ORIGIN + "/accounts"))))
    assert not v.allowed and v.status == 503 and v.reason == "replay_store_unavailable"
    assert header(v, "Retry-After") is not None


async def test_a_bug_is_a_500_denial_logged_without_credentials(
    state: GatewayState, as_key: AsKey, k1: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_a: object) -> None:
        raise RuntimeError("bug")

    state.pipeline.decide = broken  # type: ignore[method-assign, assignment]
    token = as_key.token(jkt=k1.jkt)
    with caplog.at_level(logging.ERROR, logger="gateway.decision"):
        v = await check(state, original(headers=dpop_headers(token, proof(k1, token, htu=ORIGIN + "/accounts"))))
    assert not v.allowed and v.status == 500 and body_json(v.body)["error"] == "internal"
    assert len([r for r in caplog.records if r.name == "gateway.decision"]) == 1
    assert token not in caplog.text and token[:40] not in caplog.text


async def test_a_check_past_its_deadline_is_a_503_denial(make_state: StateFactory, as_key: AsKey) -> None:
    state = await make_state(decision="decision: {enabled: true, grpc: {port: 0, deadline_s: 0.05}}")
    never = asyncio.Event()

    async def stuck(*_a: object) -> None:
        await never.wait()

    state.pipeline.decide = stuck  # type: ignore[method-assign, assignment]
    v = await check(state, original(headers=[("authorization", "Bearer x")]))
    assert not v.allowed and v.status == 503 and v.reason == "decision_timeout"
    assert header(v, "Retry-After") is not None


async def test_metrics_and_access_log_carry_the_mode(state: GatewayState, as_key: AsKey, k1: Signer) -> None:
    lines: list[str] = []

    class Sink:
        def write(self, s: str) -> None:
            lines.append(s)

        def flush(self) -> None:
            pass

    from gateway.config.observability import AccessLogConfig

    log = AccessLog(AccessLogConfig(), stream=Sink())  # type: ignore[arg-type]
    obs = Observer(state.metrics, log)
    token = as_key.token(jkt=k1.jkt)
    await check(state, original(headers=dpop_headers(token, proof(k1, token, htu=ORIGIN + "/accounts"))),
                observer=obs)
    await check(state, original(headers=[]), observer=obs)
    log.close()
    text = state.metrics.render().decode()
    assert _sample(text, mode="ext_authz_grpc", status="200", route="accounts") == 1.0
    assert _sample(text, mode="proxy") == 0.0
    assert _sample(text, mode="ext_authz_grpc", status="401") == 1.0
    records = [json.loads(line) for chunk in lines for line in chunk.splitlines()]
    assert [r["mode"] for r in records] == ["ext_authz_grpc", "ext_authz_grpc"]
    assert [r["status"] for r in records] == [200, 401]
    assert token not in "".join(lines)


def _sample(text: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "gateway_requests_total" and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
