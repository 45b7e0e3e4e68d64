"""OpenTelemetry spans from a real gateway (TLS listener, real AS, real upstream, real DPoP proofs),
collected with the SDK's in-memory exporter: one server span per request, a child per stage,
W3C trace context to the upstream and the AS, reason codes as span status, no token material."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.dpop.proofs import Signer, ath, es256
from tests.tokens.authserver import AuthServer

from .conftest import AUD, get

pytestmark = pytest.mark.timeout(60)

ORIGIN = "https://api.bank.example"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
FAPI_ID = "c7a3e2a0-0000-4000-8000-000000000001"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


def body(auth_server: AuthServer, pki: Pki, upstream: Upstream, tracing: str = "") -> str:
    return f"""
    observability:
      access_log: {{enabled: false}}
      tracing: {{enabled: true{tracing}}}
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: {auth_server.url}/jwks
        ca: {pki.ca_pem}
        mode: jwt_with_introspection_fallback
        introspection:
          endpoint: {auth_server.url}/introspect
          client_auth: {{method: client_secret_basic, client_id: gateway, client_secret: "s3cret:+/="}}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        external_origin: {ORIGIN}
        auth: {{issuers: [bank-as], audience: {AUD}, scopes: [accounts], sender_constraint: dpop}}
      - id: plain
        match: {{path_prefix: /plain}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none}}
    """


def by_trace(spans: list[ReadableSpan], trace_id: int) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans if s.context is not None and s.context.trace_id == trace_id}


def server_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == SpanKind.SERVER]


def traceparent(headers: list[tuple[str, str]]) -> str | None:
    values = [v for k, v in headers if k.lower() == "traceparent"]
    assert len(values) <= 1
    return values[0] if values else None


def is_context(header: str | None, trace_id: int, span_id: int, *, sampled: bool) -> bool:
    """A W3C traceparent naming this trace and parent span (flags: the sampled bit; bit 1 is
    Trace Context level 2's "random trace id")."""
    if header is None:
        return False
    version, trace, parent, flags = header.split("-")
    return (version, trace, parent) == ("00", f"{trace_id:032x}", f"{span_id:016x}") and (
        bool(int(flags, 16) & 1) == sampled
    )


def parent_of(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


def exported_text(spans: list[ReadableSpan]) -> str:
    """Everything a span exports that could carry request data: names, attributes, status, events."""
    return json.dumps([
        [s.name, dict(s.attributes or {}), s.status.description, [(e.name, dict(e.attributes or {})) for e in s.events]]
        for s in spans
    ], default=str)


async def test_a_dpop_request_is_one_trace_with_a_span_per_stage(
    spans: InMemorySpanExporter, gateway: GatewayFactory, traced_as: tuple[AuthServer, list[str | None]],
    pki: Pki, upstream: Upstream,
) -> None:
    auth_server, _ = traced_as
    gw = await gateway(body(auth_server, pki, upstream, ", sample_ratio: 1.0"))
    k: Signer = es256()
    token = auth_server.token(cnf={"jkt": k.jkt})
    proof = k.proof(htu=ORIGIN + "/accounts/1", ath=ath(token))
    status, _ = await get(gw.port, "/accounts/1", pki, {
        "Authorization": f"DPoP {token}", "DPoP": proof, "x-fapi-interaction-id": FAPI_ID,
    })
    assert status == 200
    (root,) = server_spans(spans.get_finished_spans())
    assert root.context is not None
    trace_id = root.context.trace_id
    tree = by_trace(list(spans.get_finished_spans()), trace_id)
    assert root.name == "GET accounts"
    attrs = dict(root.attributes or {})
    assert attrs["http.route"] == "accounts" and attrs["http.response.status_code"] == 200
    assert attrs["fapi.interaction_id"] == FAPI_ID
    assert attrs["gateway.binding"] == "dpop"
    assert root.status.status_code == StatusCode.UNSET
    # Every stage, in the request's trace, as a child of the request span (the replay store's of binding).
    for name in ("tls_peer", "credentials", "token_verify", "binding", "policy", "upstream"):
        assert parent_of(tree[name]) == root.context.span_id, name
    assert parent_of(tree["replay_store"]) == tree["binding"].context.span_id  # type: ignore[union-attr]
    assert tree["replay_store"].attributes["gateway.replay.store"] == "memory"  # type: ignore[index]
    assert tree["token_verify"].attributes["gateway.token.cache"] == "miss"  # type: ignore[index]
    assert tree["upstream"].kind == SpanKind.CLIENT
    # The upstream got our context: same trace, the upstream span as parent.
    up_parent = traceparent(upstream.last.headers)
    assert is_context(up_parent, trace_id, tree["upstream"].context.span_id, sampled=True)  # type: ignore[union-attr]

    # The same token again (a new proof): the verification is a cache hit, no AS call below it.
    spans.clear()
    proof2 = k.proof(htu=ORIGIN + "/accounts/1", ath=ath(token))
    status, _ = await get(gw.port, "/accounts/1", pki, {"Authorization": f"DPoP {token}", "DPoP": proof2})
    assert status == 200
    tree = by_trace(list(spans.get_finished_spans()), server_spans(spans.get_finished_spans())[0].context.trace_id)  # type: ignore[union-attr]
    assert tree["token_verify"].attributes["gateway.token.cache"] == "hit"  # type: ignore[index]
    assert not [s for s in tree.values() if s.kind == SpanKind.CLIENT and s.name != "upstream"]

    # The proof replayed: refused, the reason code is the status of the request and binding spans.
    spans.clear()
    status, _ = await get(gw.port, "/accounts/1", pki, {"Authorization": f"DPoP {token}", "DPoP": proof2})
    assert status == 401
    finished = list(spans.get_finished_spans())
    (root,) = server_spans(finished)
    tree = by_trace(finished, root.context.trace_id)  # type: ignore[union-attr]
    assert root.status.status_code == StatusCode.ERROR and root.status.description == "dpop_replay"
    assert tree["binding"].status.description == "dpop_replay"
    assert "upstream" not in tree and "policy" not in tree
    assert tree["replay_store"].attributes["gateway.replay.first_use"] is False  # type: ignore[index]
    # Neither the token nor the proofs, in any form the tests can think of, reach a span.
    text = exported_text(finished)
    for secret in (token, proof, proof2, token.split(".")[2], proof2.split(".")[2], "s3cret"):
        assert secret not in text


async def test_the_as_call_is_a_client_span_with_trace_context(
    spans: InMemorySpanExporter, gateway: GatewayFactory, traced_as: tuple[AuthServer, list[str | None]],
    pki: Pki, upstream: Upstream,
) -> None:
    auth_server, seen = traced_as
    gw = await gateway(body(auth_server, pki, upstream))
    opaque = "opaque-token-7f3a9b2c1d"
    auth_server.tokens[opaque] = {"active": True, "iss": auth_server.issuer, "aud": AUD, "client_id": "tpp-1",
                                  "sub": "cust-123", "exp": int(auth_server.clock()) + 300, "scope": "accounts"}
    seen.clear()
    status, _ = await get(gw.port, "/plain/x", pki, {"Authorization": f"Bearer {opaque}"})
    assert status == 200
    finished = list(spans.get_finished_spans())
    (root,) = server_spans(finished)
    tree = {s.name: s for s in finished if s.context.trace_id == root.context.trace_id}  # type: ignore[union-attr]
    verify = tree["token_verify"]
    (as_call,) = [s for s in finished if s.kind == SpanKind.CLIENT and parent_of(s) == verify.context.span_id]  # type: ignore[union-attr]
    assert as_call.attributes.get("http.request.method", as_call.attributes.get("http.method")) == "POST"  # type: ignore[union-attr]
    # The AS saw the client span as the parent of its request.
    assert is_context(seen[-1], root.context.trace_id, as_call.context.span_id, sampled=True)  # type: ignore[union-attr]
    text = exported_text(finished)
    assert opaque not in text and "s3cret" not in text and "Basic " not in text


async def test_refusal_before_the_token_has_the_reason_and_no_later_stage(
    spans: InMemorySpanExporter, gateway: GatewayFactory, traced_as: tuple[AuthServer, list[str | None]],
    pki: Pki, upstream: Upstream,
) -> None:
    auth_server, _ = traced_as
    gw = await gateway(body(auth_server, pki, upstream))
    status, _ = await get(gw.port, "/accounts/1", pki)
    assert status == 401
    finished = list(spans.get_finished_spans())
    (root,) = server_spans(finished)
    assert root.status.description == "missing_credentials"
    assert dict(root.attributes or {})["gateway.reason"] == "missing_credentials"
    names = {s.name for s in finished if s.context.trace_id == root.context.trace_id}  # type: ignore[union-attr]
    assert names == {"GET accounts", "tls_peer", "credentials"}
    status, _ = await get(gw.port, "/nowhere", pki)
    assert status == 404
    assert "GET _unmatched" in {s.name for s in server_spans(spans.get_finished_spans())}


@pytest.mark.parametrize("incoming", ["trusted_proxies", "none"])
async def test_a_clients_traceparent_is_not_continued_by_default(
    incoming: str, spans: InMemorySpanExporter, gateway: GatewayFactory,
    traced_as: tuple[AuthServer, list[str | None]], pki: Pki, upstream: Upstream,
) -> None:
    """127.0.0.1 is no trusted proxy here: its trace id and sampling choice are not adopted, and
    what the upstream gets is our context (its tracestate dropped)."""
    auth_server, _ = traced_as
    gw = await gateway(body(auth_server, pki, upstream, f", incoming_context: {incoming}"))
    token = auth_server.token()
    status, _ = await get(gw.port, "/plain/x", pki, {
        "Authorization": f"Bearer {token}", "traceparent": CLIENT_PARENT, "tracestate": "client=1",
    })
    assert status == 200
    (root,) = server_spans(spans.get_finished_spans())
    assert root.parent is None and f"{root.context.trace_id:032x}" != CLIENT_TRACE  # type: ignore[union-attr]
    sent = traceparent(upstream.last.headers)
    assert sent is not None and sent.split("-")[1] == f"{root.context.trace_id:032x}"  # type: ignore[union-attr]
    assert not [v for k, v in upstream.last.headers if k.lower() == "tracestate"]


async def test_incoming_context_any_continues_the_callers_trace(
    spans: InMemorySpanExporter, gateway: GatewayFactory, traced_as: tuple[AuthServer, list[str | None]],
    pki: Pki, upstream: Upstream,
) -> None:
    auth_server, _ = traced_as
    gw = await gateway(body(auth_server, pki, upstream, ", incoming_context: any, sample_ratio: 0.0"))
    token = auth_server.token()
    # Sampled by the caller: recorded although our own ratio is 0 (parent-based).
    status, _ = await get(gw.port, "/plain/x", pki, {"Authorization": f"Bearer {token}", "traceparent": CLIENT_PARENT})
    assert status == 200
    (root,) = server_spans(spans.get_finished_spans())
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE and root.parent is not None  # type: ignore[union-attr]
    assert root.parent.span_id == 0xB7AD6B7169203331


async def test_unsampled_requests_record_nothing_but_still_propagate(
    spans: InMemorySpanExporter, gateway: GatewayFactory, traced_as: tuple[AuthServer, list[str | None]],
    pki: Pki, upstream: Upstream,
) -> None:
    auth_server, _ = traced_as
    gw = await gateway(body(auth_server, pki, upstream, ", sample_ratio: 0.0"))
    token = auth_server.token()
    opaque = "opaque-token-unsampled-1"
    auth_server.tokens[opaque] = {"active": True, "iss": auth_server.issuer, "aud": AUD, "client_id": "tpp-1",
                                  "sub": "cust-123", "exp": int(auth_server.clock()) + 300, "scope": "accounts"}
    # Nothing sampled, the JWKS fetches at start-up included (other roots are sampled at the ratio).
    assert spans.get_finished_spans() == ()
    for _ in range(3):
        status, _ = await get(gw.port, "/plain/x", pki, {"Authorization": f"Bearer {token}"})
        assert status == 200
    # An unsampled request that calls the AS: that call is no trace of its own either.
    status, _ = await get(gw.port, "/plain/y", pki, {"Authorization": f"Bearer {opaque}"})
    assert status == 200
    assert spans.get_finished_spans() == ()
    sent = traceparent(upstream.last.headers)
    # Not sampled, and the upstream is told so (flags: the sampled bit clear).
    assert sent is not None and not int(sent.split("-")[3], 16) & 1


def _attrs(s: Any) -> dict[str, Any]:
    return dict(s.attributes or {})
