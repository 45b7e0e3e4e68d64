"""Metrics and the access log of a real gateway process, around real requests with real tokens.

OPS-01: with DEBUG logging on, no access token, DPoP proof or private key appears in any output.
FAPI-03: the access-log line carries the request's x-fapi-interaction-id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from .gwproc import GatewayProcess, ThreadedUpstream

pytestmark = pytest.mark.timeout(90)

Start = Callable[..., GatewayProcess]
ISSUER = "https://as.test.example"
AUDIENCE = "https://api.test.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canon.encode()).digest())


class Tokens:
    """An AS signing key (ES256) with its JWKS file, and a client's DPoP key."""

    def __init__(self, d: Path) -> None:
        self.as_key = ec.generate_private_key(ec.SECP256R1())
        self.jwks = d / "jwks.json"
        jwk = {**public_jwk(self.as_key), "kid": "k1", "alg": "ES256", "use": "sig"}
        self.jwks.write_text(json.dumps({"keys": [jwk]}))
        self.dpop_key = ec.generate_private_key(ec.SECP256R1())
        self.dpop_jwk = public_jwk(self.dpop_key)

    def access_token(self, *, client_id: str = "tpp-1", jkt: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER, "sub": "alice-subject", "client_id": client_id, "aud": AUDIENCE,
            "scope": "accounts", "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()),
        }
        if jkt:
            claims["cnf"] = {"jkt": jkt}
        return jwt.encode(claims, self.as_key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "k1"})

    def proof(self, method: str, url: str, token: str) -> str:
        claims = {
            "htm": method, "htu": url, "iat": int(time.time()), "jti": str(uuid.uuid4()),
            "ath": b64(hashlib.sha256(token.encode()).digest()),
        }
        return jwt.encode(claims, self.dpop_key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.dpop_jwk})


def config(d: Path, upstream: str, tokens: Tokens, *, tls: str = "") -> Path:
    path = d / "gw.yaml"
    path.write_text(textwrap.dedent(f"""
        listen: {{host: 127.0.0.1, port: 0, allowed_hosts: [localhost, 127.0.0.1]{tls}}}
        admin: {{host: 127.0.0.1, port: 0}}
        observability:
          log_level: debug
          access_log:
            fields: [time, route, method, path, status, latency_ms, reason, client_id, binding,
                     thumbprint, interaction_id, upstream_status, upstream_latency_ms, remote, jti]
        issuers:
          - name: test-as
            issuer: {ISSUER}
            jwks_file: {tokens.jwks}
        upstreams:
          up: {{url: "{upstream}"}}
        routes:
          - id: open
            match: {{path_prefix: /open}}
            upstream: up
            auth: none
          - id: slow
            match: {{path_prefix: /slow}}
            upstream: up
            auth: none
          - id: accounts
            match: {{path_prefix: /accounts}}
            upstream: up
            auth: {{issuers: [test-as], audience: {AUDIENCE}, scopes: [accounts], sender_constraint: none}}
          - id: payments
            match: {{path_prefix: /payments}}
            upstream: up
            auth: {{issuers: [test-as], audience: {AUDIENCE}, scopes: [accounts], sender_constraint: dpop}}
    """))
    return path


def call(url: str, headers: dict[str, str] | None = None, ctx: ssl.SSLContext | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def access_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.stdout if line.startswith("{")]


def test_metrics_move_with_real_requests(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    tokens = Tokens(tmp_path)
    gw = gateway_process(config(tmp_path, threaded_upstream.url, tokens)).started()
    m = gw.metric
    ok = {"route": "open", "method": "read", "status": "200", "reason": "none"}
    before = m("gateway_requests_total", **ok)
    assert call(gw.base + "/open/a") == 200
    assert call(gw.base + "/open/b") == 200
    assert m("gateway_requests_total", **ok) == before + 2
    assert m("gateway_request_duration_seconds_count", route="open") == before + 2
    assert m("gateway_upstream_duration_seconds_count", route="open") == before + 2

    assert call(gw.base + "/nowhere") == 404
    assert m("gateway_requests_total", route="_unmatched", method="read", status="404", reason="no_route") == 1

    assert call(gw.base + "/accounts/1") == 401
    assert m("gateway_requests_total", route="accounts", method="read", status="401",
             reason="missing_credentials") == 1
    assert m("gateway_auth_duration_seconds_count", route="accounts") == 1
    token = tokens.access_token()
    assert call(gw.base + "/accounts/1", {"Authorization": f"Bearer {token}"}) == 200
    assert m("gateway_requests_total", route="accounts", method="read", status="200", reason="none") == 1
    # A client-certificate header from a peer that is not a trusted front proxy: ignored, counted.
    assert call(gw.base + "/accounts/2", {"Authorization": f"Bearer {token}",
                                          "X-Forwarded-Client-Cert": "Hash=abc"}) == 200
    assert m("gateway_front_proxy_cert_headers_dropped_total", header="x-forwarded-client-cert") == 1
    # The JWKS (a file here) was loaded through the verifier's fetch hook.
    assert m("gateway_jwks_fetches_total", issuer="test-as", outcome="ok") >= 1

    # In-flight gauge: up while a slow request runs, back to 0 after.
    t = threading.Thread(target=call, args=(gw.base + "/slow/x?s=1.5",))
    t.start()
    assert threaded_upstream.arrived.wait(10)
    deadline = time.monotonic() + 5
    while m("gateway_requests_in_flight") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m("gateway_requests_in_flight") == 1
    t.join(10)
    assert m("gateway_requests_in_flight") == 0
    body = gw.admin("/metrics")[1]
    assert token not in body and "alice-subject" not in body and "tpp-1" not in body


def test_access_log_has_the_fields_and_never_a_secret(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    """OPS-01 / FAPI-03 with real tokens and DPoP proofs and DEBUG logging."""
    tokens = Tokens(tmp_path)
    gw = gateway_process(config(tmp_path, threaded_upstream.url, tokens)).started()
    secrets: list[str] = []
    fapi_id = str(uuid.uuid4())

    token = tokens.access_token()
    secrets.append(token)
    assert call(gw.base + "/accounts/7?access_token=" + token,
                {"x-fapi-interaction-id": fapi_id}) in (400, 401)
    assert call(gw.base + "/accounts/7?page=2", {"Authorization": f"Bearer {token}",
                                                 "x-fapi-interaction-id": fapi_id}) == 200
    jkt = jwk_thumbprint(tokens.dpop_jwk)
    dpop_token = tokens.access_token(jkt=jkt)
    url = gw.base + "/payments/1"
    proof = tokens.proof("GET", url, dpop_token)
    secrets += [dpop_token, proof]
    dpop_status = call(url, {"Authorization": f"DPoP {dpop_token}", "DPoP": proof})
    replay_status = call(url, {"Authorization": f"DPoP {dpop_token}", "DPoP": proof})  # replayed proof
    bad = token[:-6] + "AAAAAA"  # broken signature
    secrets.append(bad)
    assert call(gw.base + "/accounts/7", {"Authorization": f"Bearer {bad}"}) == 401
    assert call(gw.base + "/open/x") == 200

    gw.wait_for(r'"route":"open"', stream="stdout")
    lines = access_lines(gw)
    (ok,) = [ln for ln in lines if ln["route"] == "accounts" and ln["status"] == 200]
    assert ok["interaction_id"] == fapi_id and ok["client_id"] == "tpp-1"
    assert ok["binding"] == "none" and ok["method"] == "GET" and ok["path"] == "/accounts/7"
    assert ok["upstream_status"] == 200 and ok["latency_ms"] > 0 and ok["upstream_latency_ms"] > 0
    assert ok["time"].endswith("Z") and ok["remote"] == "127.0.0.1" and ok["reason"] is None
    assert ok["jti"]
    refused = [ln for ln in lines if ln["route"] == "accounts" and ln["status"] == 401]
    assert refused and all(ln["reason"] and ln["client_id"] is None for ln in refused)
    # The DPoP request: the thumbprint is logged, the proof is not; its replay is refused.
    assert dpop_status == 200 and replay_status == 401
    (dp,) = [ln for ln in lines if ln["route"] == "payments" and ln["status"] == 200]
    assert dp["binding"] == "dpop" and dp["thumbprint"] == jkt
    (rp,) = [ln for ln in lines if ln["route"] == "payments" and ln["status"] == 401]
    assert rp["reason"] == "dpop_replay"
    # Every access-log line carries an interaction id (generated when the client sent none).
    assert all(uuid.UUID(ln["interaction_id"]) for ln in lines)

    # FAPI-03: the auth-decision log entry of the refused request names its interaction id too.
    gw.wait_for(f"refused GET /accounts/7: .*x-fapi-interaction-id {fapi_id}")
    gw.stop()
    out = gw.all_output()
    assert "DEBUG" in out  # the test really ran with debug logging
    for secret in secrets:
        assert secret not in out
        for part in secret.split("."):
            assert len(part) < 20 or part not in out  # not even a JWS segment
    assert "PRIVATE KEY" not in out


def test_tls_handshake_failures_are_counted(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start, pki: Any
) -> None:
    tokens = Tokens(tmp_path)
    tls = (f", tls: {{cert: {pki.server_cert}, key: {pki.server_key}, client_ca: [{pki.ca_pem}], "
           "client_auth: required}")
    gw = gateway_process(config(tmp_path, threaded_upstream.url, tokens, tls=tls)).started()
    assert call(f"https://localhost:{gw.port}/open/x", ctx=pki.client_context(pki.client_a)) == 200
    assert gw.metric("gateway_tls_handshake_failures_total", reason="client_cert_missing") == 0
    with pytest.raises((ssl.SSLError, OSError, urllib.error.URLError)):
        call(f"https://localhost:{gw.port}/open/x", ctx=pki.client_context(None))
    with pytest.raises((ssl.SSLError, OSError, urllib.error.URLError)):
        call(f"https://localhost:{gw.port}/open/x", ctx=pki.client_context(pki.foreign_client))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:  # plain HTTP to TLS port
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(100)
    deadline = time.monotonic() + 5
    while gw.metric("gateway_tls_handshake_failures_total", reason="plain_http") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.metric("gateway_tls_handshake_failures_total", reason="client_cert_missing") == 1
    assert gw.metric("gateway_tls_handshake_failures_total", reason="client_cert_unknown_ca") == 1
    assert gw.metric("gateway_tls_handshake_failures_total", reason="plain_http") == 1


def test_replay_store_errors_are_counted(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    """A DPoP request while the Redis replay store is down: refused (503, fail closed) and counted."""
    tokens = Tokens(tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = config(tmp_path, threaded_upstream.url, tokens)
    cfg.write_text(cfg.read_text() + f'dpop: {{replay: {{backend: redis, redis: {{url: "redis://127.0.0.1:{dead}/0"}}}}}}\n')
    gw = gateway_process(cfg).started()
    token = tokens.access_token(jkt=jwk_thumbprint(tokens.dpop_jwk))
    url = gw.base + "/payments/1"
    assert call(url, {"Authorization": f"DPoP {token}", "DPoP": tokens.proof("GET", url, token)}) == 503
    assert gw.metric("gateway_replay_store_errors_total", store="redis") == 1
    assert gw.metric("gateway_requests_total", route="payments", method="read", status="503",
                     reason="replay_store_unavailable") == 1


def test_introspection_calls_and_cache_are_counted(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    """An opaque token checked by RFC 7662 introspection (the AS here answers "not active")."""
    as_server = ThreadedUpstream()  # answers every POST with a JSON object without "active": true
    try:
        tokens = Tokens(tmp_path)
        cfg = config(tmp_path, threaded_upstream.url, tokens)
        text = cfg.read_text()
        jwks_line = f"    jwks_file: {tokens.jwks}\n"
        assert jwks_line in text
        cfg.write_text(text.replace(jwks_line, textwrap.indent(textwrap.dedent(f"""\
            mode: introspection
            allow_insecure_http: true
            introspection:
              endpoint: {as_server.url}/introspect
              client_auth: {{method: client_secret_basic, client_id: rs, client_secret: s3cret-value}}
            """), "    ")))
        gw = gateway_process(cfg).started()
        opaque = "opaque-" + uuid.uuid4().hex
        for _ in range(2):
            assert call(gw.base + "/accounts/1", {"Authorization": f"Bearer {opaque}"}) == 401
        assert gw.metric("gateway_introspection_requests_total", issuer="test-as", outcome="inactive") == 1
        assert gw.metric("gateway_introspection_cache_total", issuer="test-as", result="miss") == 1
        assert gw.metric("gateway_introspection_cache_total", issuer="test-as", result="hit") == 1
        assert [p for m, p, _ in as_server.requests] == ["/introspect"]
        gw.stop()
        out = gw.all_output()
        assert opaque not in out and "s3cret-value" not in out
    finally:
        as_server.close()
