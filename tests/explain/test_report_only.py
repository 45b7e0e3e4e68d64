"""Report-only enforcement per route (issue #19 §2), through the real gateway over TLS.

A refusal on a ``report`` route is forwarded (marked, anonymous), counted and logged; a DPoP
replay is refused all the same; the guard rails (risks under fapi, start-up warning) hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.config.risks import analyse
from gateway.errors import ConfigError
from tests.conftest import GatewayFactory, Pki, Upstream
from tests.dpop.e2e_support import AsKey, config_body, dpop_headers, proof_for
from tests.dpop.proofs import Signer

pytestmark = pytest.mark.timeout(60)


def report_body(as_key: AsKey, upstream: Upstream, *, extra_auth: str = "enforcement: report",
                tail: str = "") -> str:
    body = config_body(as_key, upstream.url)
    body = body.replace("require_dpop_nonce: false}", f"require_dpop_nonce: false, {extra_auth}}}")
    assert extra_auth in body
    return body + tail


async def send(port: int, pki: Pki, headers: list[tuple[str, str]], path: str = "/accounts") -> tuple[int, Any]:
    conn = aiohttp.TCPConnector(ssl=pki.client_context())
    async with aiohttp.ClientSession(connector=conn) as s, s.get(
        f"https://127.0.0.1:{port}{path}", headers=headers
    ) as r:
        await r.read()
        return r.status, r.headers


async def metrics_text(gw: Any) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
        return await r.text()


async def test_report_route_forwards_marked_and_anonymous(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, k1: Signer, k2: Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway"):
        gw = await gateway(report_body(as_key, upstream) + "acknowledge_risks: [report_only_enforcement]\n")
    assert any("REPORT-ONLY ENFORCEMENT" in r.getMessage() and "accounts" in r.getMessage() for r in caplog.records)

    # No credentials, and a forged identity header: forwarded, marked, without any identity.
    status, headers = await send(gw.port, pki, [("X-Auth-Subject", "admin"), ("X-Auth-Would-Refuse", "no")])
    assert status == 200 and len(upstream.requests) == 1
    rec = upstream.last
    assert rec.all("X-Auth-Would-Refuse") == ["missing_credentials"]
    assert rec.header("X-Auth-Subject") is None and rec.header("X-Auth-Binding") is None
    assert "X-Auth-Debug-Reason" not in headers  # not asked for

    # A proof by the wrong key: binding refused -> forwarded, marked with that reason.
    token = as_key.token(jkt=k1.jkt)
    status, _ = await send(gw.port, pki, dpop_headers(token, proof_for(k2, token)))
    assert status == 200 and upstream.last.all("X-Auth-Would-Refuse") == ["binding_mismatch"]

    # A valid request: the usual identity, and a client-sent marker never reaches the upstream.
    proof = proof_for(k1, token)
    status, _ = await send(gw.port, pki, [*dpop_headers(token, proof), ("X-Auth-Would-Refuse", "forged")])
    assert status == 200
    assert upstream.last.header("X-Auth-Would-Refuse") is None
    assert upstream.last.header("X-Auth-Subject") == "cust-123"

    # The same proof again: a replay is an attack, refused in report mode too, never forwarded.
    before = len(upstream.requests)
    status, headers = await send(gw.port, pki, dpop_headers(token, proof))
    assert status == 401 and 'error="invalid_dpop_proof"' in headers["WWW-Authenticate"]
    assert len(upstream.requests) == before

    text = await metrics_text(gw)
    assert 'gateway_would_refuse_total{reason="missing_credentials",route="accounts"} 1.0' in text
    assert 'gateway_would_refuse_total{reason="binding_mismatch",route="accounts"} 1.0' in text
    assert "gateway_routes_report_only 1.0" in text
    assert 'reason="dpop_replay"' in text  # counted as the refusal it was (gateway_requests_total)
    assert 'gateway_would_refuse_total{reason="dpop_replay"' not in text


async def test_enforcing_config_reports_nothing(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey
) -> None:
    gw = await gateway(config_body(as_key, upstream.url))
    status, headers = await send(gw.port, pki, [])
    assert status == 401 and not upstream.requests and "X-Auth-Debug-Reason" not in headers
    text = await metrics_text(gw)
    assert "gateway_routes_report_only 0.0" in text
    assert "gateway_would_refuse_total{" not in text


async def test_access_log_field_and_debug_header(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, k1: Signer, tmp_path: Path
) -> None:
    log_file = tmp_path / "access.log"
    tail = f"""
observability:
  access_log: {{destination: file, file: {log_file}}}
acknowledge_risks: [report_only_enforcement, debug_reason_header]
"""
    gw = await gateway(report_body(as_key, upstream, extra_auth="enforcement: report, debug_reason_header: true",
                                   tail=tail))
    status, headers = await send(gw.port, pki, [])
    assert status == 200 and headers["X-Auth-Debug-Reason"] == "missing_credentials"
    token = as_key.token(jkt=k1.jkt)
    proof = proof_for(k1, token)
    assert (await send(gw.port, pki, dpop_headers(token, proof)))[0] == 200
    status, headers = await send(gw.port, pki, dpop_headers(token, proof))  # replay: refused
    assert status == 401 and headers["X-Auth-Debug-Reason"] == "dpop_replay"
    lines: list[dict[str, Any]] = []
    for _ in range(200):  # the access log is written by a thread, in batches
        lines = [json.loads(x) for x in log_file.read_text().splitlines()] if log_file.exists() else []
        if len(lines) >= 3:
            break
        await asyncio.sleep(0.02)
    assert [(x["status"], x["would_refuse"], x["reason"]) for x in lines] == [
        (200, "missing_credentials", None), (200, None, None), (401, None, "dpop_replay")]


async def test_debug_reason_header_on_an_enforcing_route(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, k1: Signer
) -> None:
    gw = await gateway(report_body(as_key, upstream, extra_auth="debug_reason_header: true")
                       + "acknowledge_risks: [debug_reason_header]\n")
    token = as_key.token(jkt=k1.jkt)
    status, headers = await send(gw.port, pki, dpop_headers(token, proof_for(k1, token, htm="POST")))
    assert status == 401 and headers["X-Auth-Debug-Reason"] == "dpop_htm_mismatch"
    assert not upstream.requests


ROUTE = """
listen: {{host: 127.0.0.1, port: 8443, tls: {{cert: {cert}, key: {key}, client_ca: [{ca}], profile: {profile}}}}}
issuers: [{{name: as, issuer: "https://as.example", jwks_file: {jwks}}}]
routes:
  - id: r
    match: {{path_prefix: /}}
    upstream: http://127.0.0.1:9
    external_origin: https://api.example
    auth: {{issuers: [as], audience: x, {auth}}}
"""


@pytest.mark.parametrize(("auth", "risk"), [("enforcement: report", "report_only_enforcement"),
                                            ("debug_reason_header: true", "debug_reason_header")])
def test_guard_rails_refused_under_fapi_unless_acknowledged(pki: Pki, as_key: AsKey, auth: str, risk: str) -> None:
    def text(profile: str) -> str:
        return ROUTE.format(cert=pki.server_cert, key=pki.server_key, ca=pki.ca_pem, jwks=as_key.jwks,
                            profile=profile, auth=auth)

    with pytest.raises(ConfigError) as err:
        parse_config(text("fapi"))
    assert f"acknowledge_risks: [{risk}]" in str(err.value) and "routes[0].auth" in str(err.value)
    acknowledged = parse_config(text("fapi") + f"acknowledge_risks: [{risk}]\n")
    assert [(r.id, r.label) for r in analyse(acknowledged) if r.id == risk] == [(risk, "acknowledged")]
    # Outside the fapi profile (a sandbox): loads, and is still warned about.
    sandbox = parse_config(text("default") + "acknowledge_risks: [tls_profile_default]\n")
    assert [(r.id, r.label) for r in analyse(sandbox) if r.id == risk] == [(risk, "warn")]


def test_enforcement_defaults_to_enforce_and_rejects_other_values(pki: Pki, as_key: AsKey) -> None:
    base = ROUTE.format(cert=pki.server_cert, key=pki.server_key, ca=pki.ca_pem, jwks=as_key.jwks, profile="fapi",
                        auth="scopes: [a]")
    auth = parse_config(base).routes[0].auth
    assert not isinstance(auth, str) and auth.enforcement == "enforce" and not auth.debug_reason_header
    with pytest.raises(ConfigError) as err:
        parse_config(base.replace("scopes: [a]", "enforcement: off"))
    assert "routes[0].auth.enforcement" in str(err.value)
