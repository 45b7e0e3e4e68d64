"""The ext_authz gRPC front over a real gRPC connection (grpc.aio client, published Envoy protos):
the CheckRequest mapping, OkHttpResponse / DeniedHttpResponse, caller trust, limits, readiness."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from envoy.service.auth.v3 import (  # type: ignore[import-untyped]
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from google.rpc import code_pb2  # type: ignore[import-untyped]

from gateway.model import b64url
from gateway.server import GatewayServer
from tests.conftest import GatewayFactory, Pki
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


def check_request(path: str, headers: list[tuple[str, str]], *, cert: bytes | None = None,
                  method: str = "GET", raw: bool = False) -> Any:
    ctx = attribute_context_pb2.AttributeContext
    http = ctx.HttpRequest(method=method, scheme="https", host=ORIGIN_HOST, path=path)
    if raw:  # Envoy's encode_raw_headers: true
        from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]

        http.header_map.headers.extend(base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers)
    else:
        for k, v in headers:
            http.headers[k] = f"{http.headers[k]},{v}" if k in http.headers else v
    source = ctx.Peer(certificate=url_pem(cert) if cert else "")
    source.address.socket_address.address = "192.0.2.7"
    return external_auth_pb2.CheckRequest(attributes=ctx(source=source, request=ctx.Request(http=http)))


@pytest.fixture
async def stub_for(gateway: GatewayFactory) -> AsyncIterator[Any]:
    channels: list[Any] = []

    async def make(server: GatewayServer, creds: Any = None) -> Any:
        port = server.decision.grpc_port if server.decision else 0
        target = f"localhost:{port}"
        ch = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
        channels.append(ch)
        return external_auth_pb2_grpc.AuthorizationStub(ch)

    yield make
    for ch in channels:
        await ch.close()


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key.lower(): o.header.value for o in options}


async def test_allow_and_deny_over_grpc(
    gateway: GatewayFactory, stub_for: Any, pki: Pki, as_key: AsKey, k1: Signer
) -> None:
    gw = await gateway(decision_yaml(pki, as_key), raw=True)
    assert gw.decision is not None and gw.decision.grpc_port > 0 and gw.readiness.status()[1]["decision"]
    stub = await stub_for(gw)
    token = as_key.token(jkt=k1.jkt)
    p = proof(k1, token, htu=ORIGIN + "/accounts")
    req = check_request("/accounts?x=1", [*dpop_headers(token, p), ("x-auth-subject", "admin")])
    ok = await stub.Check(req, timeout=5)
    assert ok.status.code == code_pb2.OK and ok.HasField("ok_response")
    added = headers_of(ok.ok_response.headers)
    assert added["x-auth-subject"] == "cust-123" and added["x-auth-cnf-thumbprint"] == k1.jkt
    assert {"authorization", "dpop"} <= set(ok.ok_response.headers_to_remove)
    assert "x-fapi-interaction-id" in headers_of(ok.ok_response.response_headers_to_add)

    replay = await stub.Check(req, timeout=5)  # the same proof again
    assert replay.status.code == code_pb2.UNAUTHENTICATED and replay.HasField("denied_response")
    denied = replay.denied_response
    assert denied.status.code == 401
    assert headers_of(denied.headers)["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    assert body_json(denied.body.encode())["error"] == "invalid_dpop_proof"

    # Repeated headers kept apart (encode_raw_headers): two DPoP headers are refused as such.
    t2 = as_key.token(jkt=k1.jkt)
    two = check_request("/accounts", [("authorization", f"DPoP {t2}"),
                                      ("dpop", proof(k1, t2, htu=ORIGIN + "/accounts")),
                                      ("dpop", proof(k1, t2, htu=ORIGIN + "/accounts"))], raw=True)
    refused = await stub.Check(two, timeout=5)
    assert refused.denied_response.status.code in (400, 401)
    t3 = as_key.token(jkt=k1.jkt)
    raw_ok = await stub.Check(check_request("/accounts", dpop_headers(t3, proof(k1, t3, htu=ORIGIN + "/accounts")),
                                            raw=True), timeout=5)
    assert raw_ok.status.code == code_pb2.OK
    text = gw.metrics.render().decode()
    assert 'mode="ext_authz_grpc"' in text


async def test_untrusted_caller_is_refused_not_answered(
    gateway: GatewayFactory, stub_for: Any, pki: Pki, as_key: AsKey
) -> None:
    dec = "decision: {enabled: true, grpc: {port: 0, trusted_peers: [192.0.2.0/24]}}"
    gw = await gateway(decision_yaml(pki, as_key, decision=dec), raw=True)
    stub = await stub_for(gw)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(check_request("/open", []), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_oversized_check_request_is_refused(
    gateway: GatewayFactory, stub_for: Any, pki: Pki, as_key: AsKey
) -> None:
    dec = "decision: {enabled: true, grpc: {port: 0, max_message_bytes: 8192}}"
    gw = await gateway(decision_yaml(pki, as_key, decision=dec), raw=True)
    stub = await stub_for(gw)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(check_request("/open", [("x-big", "a" * 20000)]), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_mtls_decision_listener_pins_the_callers_certificate(
    gateway: GatewayFactory, stub_for: Any, pki: Pki, as_key: AsKey
) -> None:
    """decision.tls with client_auth: required + trusted_identities: only the pinned proxy may call."""
    x5t = b64url(hashlib.sha256(pki.client_a.der).digest())
    dec = f"""
    decision:
      enabled: true
      tls: {{cert: {pki.server_cert}, key: {pki.server_key}, client_ca: [{pki.ca_pem}], client_auth: required}}
      grpc: {{port: 0, trusted_identities: [{{x5t_s256: {x5t}}}]}}
    """
    gw = await gateway(decision_yaml(pki, as_key, decision=dec), raw=True)
    ca = pki.ca_pem.read_bytes()

    def creds(client: Any) -> Any:
        return grpc.ssl_channel_credentials(ca, client.key.read_bytes(), client.cert.read_bytes())

    ok = await (await stub_for(gw, creds(pki.client_a))).Check(check_request("/open/x", []), timeout=5)
    assert ok.status.code == code_pb2.OK
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await (await stub_for(gw, creds(pki.client_b))).Check(check_request("/open/x", []), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as nocert:
        await (await stub_for(gw, grpc.ssl_channel_credentials(ca))).Check(check_request("/open/x", []), timeout=5)
    assert nocert.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake itself is refused


async def test_decision_http_front_starts_beside_grpc(pki: Pki, as_key: AsKey) -> None:
    """Both fronts listen (the HTTP one is gateway/decision/http.py, tested in tests/decision_http)."""
    from gateway.config import parse_config

    both = "decision: {enabled: true, grpc: {port: 0}, http: {port: 0}}"
    cfg = parse_config(decision_yaml(pki, as_key, decision=both))
    server = GatewayServer(cfg)
    await server.start()
    try:
        assert server.decision is not None
        assert server.decision.grpc_port and server.decision.http_port
        assert server.decision.grpc_port != server.decision.http_port and server.decision.ready()
    finally:
        await server.stop()


async def test_concurrent_checks_beyond_the_bound_are_refused(
    gateway: GatewayFactory, stub_for: Any, pki: Pki, as_key: AsKey
) -> None:
    """max_concurrent: 1 and a check held inside the pipeline: a second one is RESOURCE_EXHAUSTED
    (Envoy then refuses its client), never queued without bound nor allowed."""
    import asyncio

    dec = "decision: {enabled: true, grpc: {port: 0, max_concurrent: 1}}"
    gw = await gateway(decision_yaml(pki, as_key, decision=dec), raw=True)
    stub = await stub_for(gw)
    entered, release = asyncio.Event(), asyncio.Event()
    state = gw.holder.current
    real = state.pipeline.decide

    async def held(*a: Any) -> Any:
        entered.set()
        await release.wait()
        return await real(*a)

    state.pipeline.decide = held  # type: ignore[method-assign]
    token = as_key.token(jkt="x" * 43)
    async def call_first() -> Any:
        return await stub.Check(check_request("/accounts", [("authorization", f"DPoP {token}")]), timeout=10)

    first = asyncio.create_task(call_first())
    await asyncio.wait_for(entered.wait(), 10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(check_request("/open/x", []), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    answered = await first
    assert answered.denied_response.status.code == 401  # it went on (no proof): refused, not allowed
