"""OpenTelemetry spans for the decision fronts (Envoy ext_authz gRPC and HTTP, nginx auth_request,
Traefik forwardAuth), from a real gateway's decision listeners with the SDK's in-memory exporter:
one SERVER span per check, the proxy's stage spans as its children (no upstream: nothing is
forwarded), the caller's W3C context continued per ``incoming_context``, reason codes as status."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import textwrap
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc  # type: ignore[import-untyped]
from google.rpc import code_pb2  # type: ignore[import-untyped]
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.model import b64url
from gateway.server import GatewayServer
from tests.conftest import GatewayFactory, Pki
from tests.decision.support import ORIGIN_HOST, decision_yaml, dpop_headers, proof
from tests.decision.test_grpc import check_request
from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import Signer, es256
from tests.tracing.test_config import assert_loads_no_opentelemetry

from .test_spans import by_trace, exported_text, parent_of, server_spans

pytestmark = pytest.mark.timeout(60)

ORIGIN = f"https://{ORIGIN_HOST}"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER_PARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
ENVOY_TRACE = "a3ce929d0e0e47364bf92f3577b34da6"
ENVOY_SPAN = "b7ad6b7169203331"
ENVOY_PARENT = f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01"
FRONTS = "decision: {enabled: true, grpc: {host: 127.0.0.1, port: 0}, http: {host: 127.0.0.1, port: 0}}"

# How each HTTP protocol carries the original request (gateway/decision/http.py).
HTTP_FRONTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "ext_authz_http": ("/ext_authz/accounts/1", [("Host", ORIGIN_HOST), ("X-Forwarded-Proto", "https")]),
    "auth_request": ("/auth_request", [("X-Original-Method", "GET"), ("X-Original-URI", "/accounts/1"),
                                       ("X-Forwarded-Host", ORIGIN_HOST), ("X-Forwarded-Proto", "https")]),
    "forward_auth": ("/forward_auth", [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/accounts/1"),
                                       ("X-Forwarded-Host", ORIGIN_HOST), ("X-Forwarded-Proto", "https")]),
}


@pytest.fixture
def as_key(tmp_path: Path) -> AsKey:
    return AsKey(tmp_path)


def _yaml(pki: Pki, as_key: AsKey, tracing: str = "") -> str:
    return (decision_yaml(pki, as_key, decision=FRONTS)
            + f"observability:\n  access_log: {{enabled: false}}\n  tracing: {{enabled: true{tracing}}}\n")


def _get(port: int, path: str, headers: list[tuple[str, str]]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if not any(name.lower() == "host" for name, _ in headers):
            conn.putheader("Host", "127.0.0.1")
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


async def _http_check(gw: GatewayServer, mode: str, headers: list[tuple[str, str]]) -> int:
    """A check from http.client in a thread: an aiohttp client would be instrumented by the
    gateway's tracing and send a traceparent of its own."""
    assert gw.decision is not None
    path, protocol = HTTP_FRONTS[mode]
    return await asyncio.to_thread(_get, gw.decision.http_port, path, [*protocol, *headers])


def _check_span(finished: list[ReadableSpan]) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    (root,) = server_spans(finished)
    assert root.context is not None
    return root, by_trace(finished, root.context.trace_id)


@pytest.mark.parametrize("mode", list(HTTP_FRONTS))
async def test_an_http_decision_check_is_one_span_with_the_proxys_stage_children(
    spans: InMemorySpanExporter, gateway: GatewayFactory, pki: Pki, as_key: AsKey, mode: str,
) -> None:
    gw = await gateway(_yaml(pki, as_key), raw=True)
    k: Signer = es256()
    token = as_key.token(jkt=k.jkt)
    p = proof(k, token, htu=ORIGIN + "/accounts/1")
    status = await _http_check(gw, mode, [*dpop_headers(token, p), ("traceparent", CALLER_PARENT)])
    assert status == 200
    finished = list(spans.get_finished_spans())
    root, tree = _check_span(finished)
    # The caller (a trusted front: decision.http.trusted_peers) continues its own trace.
    assert f"{root.context.trace_id:032x}" == CALLER_TRACE  # type: ignore[union-attr]
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CALLER_SPAN
    assert root.name == "GET accounts"
    attrs = dict(root.attributes or {})
    assert attrs["gateway.mode"] == mode and attrs["http.route"] == "accounts"
    assert attrs["http.response.status_code"] == 200 and attrs["gateway.binding"] == "dpop"
    for name in ("credentials", "token_verify", "binding", "policy"):
        assert parent_of(tree[name]) == root.context.span_id, name  # type: ignore[union-attr]
    assert parent_of(tree["replay_store"]) == tree["binding"].context.span_id  # type: ignore[union-attr]
    assert "upstream" not in tree  # a decision forwards nothing

    # The same proof again: refused, the reason code as the span status; still one span per check.
    spans.clear()
    status = await _http_check(gw, mode, dpop_headers(token, p))
    assert status in (401, 403)  # nginx's auth_request: 401 as it is
    finished = list(spans.get_finished_spans())
    root, tree = _check_span(finished)
    assert root.status.status_code == StatusCode.ERROR and root.status.description == "dpop_replay"
    assert tree["binding"].status.description == "dpop_replay"
    text = exported_text(finished)
    for secret in (token, p, token.split(".")[2], p.split(".")[2]):
        assert secret not in text


async def test_a_grpc_check_with_a_certificate_has_a_tls_peer_span(
    spans: InMemorySpanExporter, gateway: GatewayFactory, pki: Pki, as_key: AsKey,
) -> None:
    gw = await gateway(_yaml(pki, as_key), raw=True)
    assert gw.decision is not None
    thumb = b64url(hashlib.sha256(pki.client_a.der).digest())
    token = as_key.token(cnf={"x5t#S256": thumb})
    async with grpc.aio.insecure_channel(f"localhost:{gw.decision.grpc_port}") as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        headers = [("authorization", f"Bearer {token}"), ("traceparent", CALLER_PARENT)]
        ok = await stub.Check(check_request("/payments", headers, cert=pki.client_a.pem), timeout=5)
        assert ok.status.code == code_pb2.OK
        root, tree = _check_span(list(spans.get_finished_spans()))
        assert dict(root.attributes or {})["gateway.mode"] == "ext_authz_grpc"
        assert f"{root.context.trace_id:032x}" == CALLER_TRACE  # type: ignore[union-attr]
        for name in ("tls_peer", "credentials", "token_verify", "binding", "policy"):
            assert parent_of(tree[name]) == root.context.span_id, name  # type: ignore[union-attr]
        assert dict(root.attributes or {})["gateway.binding"] == "mtls"

        # Envoy with tracing puts its ext_authz span's context in the call's metadata: that one is
        # the parent (the original request's headers only carry the client's).
        spans.clear()
        token = as_key.token(cnf={"x5t#S256": thumb})
        headers = [("authorization", f"Bearer {token}"), ("traceparent", CALLER_PARENT)]
        ok = await stub.Check(check_request("/payments", headers, cert=pki.client_a.pem), timeout=5,
                              metadata=(("traceparent", ENVOY_PARENT),))
        assert ok.status.code == code_pb2.OK
        root, _ = _check_span(list(spans.get_finished_spans()))
        assert f"{root.context.trace_id:032x}" == ENVOY_TRACE  # type: ignore[union-attr]
        assert root.parent is not None and f"{root.parent.span_id:016x}" == ENVOY_SPAN

        # Client B's certificate with A's token: refused, binding_mismatch on the check's span.
        spans.clear()
        denied = await stub.Check(check_request("/payments", headers, cert=pki.client_b.pem), timeout=5)
        assert denied.status.code != code_pb2.OK
        root, _ = _check_span(list(spans.get_finished_spans()))
        assert root.status.status_code == StatusCode.ERROR and root.status.description


async def test_incoming_context_none_starts_a_new_trace(
    spans: InMemorySpanExporter, gateway: GatewayFactory, pki: Pki, as_key: AsKey,
) -> None:
    gw = await gateway(_yaml(pki, as_key, ", incoming_context: none"), raw=True)
    k = es256()
    token = as_key.token(jkt=k.jkt)
    status = await _http_check(gw, "forward_auth", [
        *dpop_headers(token, proof(k, token, htu=ORIGIN + "/accounts/1")), ("traceparent", CALLER_PARENT)])
    assert status == 200
    root, _ = _check_span(list(spans.get_finished_spans()))
    assert root.parent is None and f"{root.context.trace_id:032x}" != CALLER_TRACE  # type: ignore[union-attr]
    assert root.kind == SpanKind.SERVER


async def test_unsampled_checks_make_no_span(
    spans: InMemorySpanExporter, gateway: GatewayFactory, pki: Pki, as_key: AsKey,
) -> None:
    gw = await gateway(_yaml(pki, as_key, ", sample_ratio: 0.0"), raw=True)
    k = es256()
    token = as_key.token(jkt=k.jkt)
    status = await _http_check(gw, "forward_auth", dpop_headers(token, proof(k, token, htu=ORIGIN + "/accounts/1")))
    assert status == 200
    assert not spans.get_finished_spans()


def test_tracing_off_decision_fronts_load_no_opentelemetry(tmp_path: Path) -> None:
    """Zero cost when off: a gateway whose decision fronts answered checks never imported OTel."""
    code = textwrap.dedent("""
        import asyncio, sys
        import aiohttp
        from gateway.config import parse_config
        from gateway.server import GatewayServer
        cfg = parse_config('''listen: {host: 127.0.0.1, port: 0, external_origin: "https://api.bank.example"}
        admin: {host: 127.0.0.1, port: 0}
        observability: {access_log: {enabled: false}}
        decision: {enabled: true, grpc: {host: 127.0.0.1, port: 0}, http: {host: 127.0.0.1, port: 0}}
        routes:
          - {id: open, match: {path_prefix: /open}, upstream: "http://127.0.0.1:9", auth: none}
        ''', source="t.yaml")
        async def main():
            s = GatewayServer(cfg)
            await s.start()
            async with aiohttp.ClientSession() as c, c.get(
                f"http://127.0.0.1:{s.decision.http_port}/forward_auth",
                headers={"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/open",
                         "X-Forwarded-Host": "api.bank.example", "X-Forwarded-Proto": "https"}) as r:
                assert r.status == 200, r.status
            await s.stop()
        asyncio.run(main())
    """)
    assert_loads_no_opentelemetry(code)
