"""A real nginx (Debian's, its own prefix and config: config/examples/nginx-auth-request/) in
front, terminating mTLS with the test CA and asking the gateway's decision listener
(auth_request) about every request; a recording upstream behind it. Real DPoP and mTLS clients.

What must hold: an allowed request reaches the upstream with the verified identity (and without
the client's credentials or forged identity headers); every refusal is nginx's answer with the
gateway's status, WWW-Authenticate / DPoP-Nonce and body, and the upstream never sees it; with
the gateway down nginx answers 503 and forwards nothing."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import quote

from tests.dpop.e2e_support import AsKey, dpop_headers
from tests.dpop.proofs import Signer, ath, b64

from .conftest import StackFactory


def proof(k: Signer, origin: str, token: str, path: str = "/accounts", **claims: Any) -> str:
    claims.setdefault("htu", origin + path)
    claims.setdefault("ath", ath(token))
    return k.proof(**claims)


def x5t(der: bytes) -> str:
    return b64(hashlib.sha256(der).digest())


async def test_valid_dpop_request_passes_with_identity(nginx_stack: StackFactory, as_key: AsKey, k1: Signer) -> None:
    stack = await nginx_stack()
    token = as_key.token(jkt=k1.jkt)
    forged = [("X-Auth-Subject", "someone-else"), ("X-Auth-Client-Id", "evil")]
    status, headers, body = await stack.send(
        "/accounts/1?x=1", [*dpop_headers(token, proof(k1, stack.origin, token, "/accounts/1")), *forged])
    assert status == 200, (body, stack.nginx.log()[-2000:])
    (seen,) = stack.upstream.requests
    assert seen.raw_path == "/accounts/1?x=1"
    assert seen.header("X-Auth-Subject") == "cust-123"
    assert seen.header("X-Auth-Client-Id") == "tpp-1"
    assert seen.header("X-Auth-Binding") == "dpop"
    assert seen.header("X-Auth-Cnf-Thumbprint") == k1.jkt
    # The client's credentials never reach the upstream.
    assert seen.header("Authorization") is None and seen.header("DPoP") is None
    assert seen.all("X-Auth-Subject") == ["cust-123"]
    assert headers.get("x-fapi-interaction-id")
    # Counted like the proxy's requests, under the front's mode.
    metrics = stack.gateway.metrics.render().decode()
    assert 'mode="auth_request"' in metrics and 'route="accounts"' in metrics


async def test_refusals_are_nginxs_answer_with_the_gateways_challenge(
    nginx_stack: StackFactory, as_key: AsKey, k1: Signer, k2: Signer
) -> None:
    stack = await nginx_stack()
    o = stack.origin
    token = as_key.token(jkt=k1.jkt)
    # A replayed proof: the first use passes, the second is refused.
    used = proof(k1, o, token)
    assert (await stack.send("/accounts", dpop_headers(token, used)))[0] == 200
    cases = {
        "replayed proof": (dpop_headers(token, used), 401, "invalid_dpop_proof"),
        "wrong htu": (dpop_headers(token, proof(k1, o, token, htu=o + "/payments")), 401, "invalid_dpop_proof"),
        "proof by another key": (dpop_headers(token, proof(k2, o, token)), 401, "invalid_token"),
        "expired token": (dpop_headers(t := as_key.token(jkt=k1.jkt, exp=int(time.time()) - 600),
                                       proof(k1, o, t)), 401, "invalid_token"),
        "token in the query": ([], 400, "invalid_request"),
    }
    for name, (headers, want_status, want_error) in cases.items():
        path = "/accounts?access_token=abc" if name == "token in the query" else "/accounts"
        status, resp_headers, body = await stack.send(path, headers)
        assert status == want_status, (name, status, body)
        assert json.loads(body)["error"] == want_error, (name, body)
        if status == 401:
            www = resp_headers.getall("WWW-Authenticate")
            assert len(www) == 1 and f'error="{want_error}"' in www[0], (name, www)
        assert resp_headers.get("Cache-Control") == "no-store"
    # Missing token: 401 with the challenges of the accepted schemes and no error (RFC 6750 §3.1).
    status, resp_headers, body = await stack.send("/accounts")
    assert status == 401
    www = resp_headers.getall("WWW-Authenticate")
    assert len(www) == 1 and "DPoP" in www[0] and "error=" not in www[0], www
    assert len(stack.upstream.requests) == 1  # only the first, valid request


async def test_certificate_bound_token_through_nginx_mtls(nginx_stack: StackFactory, as_key: AsKey) -> None:
    """RFC 8705: nginx verifies the client certificate and hands it to the gateway
    ($ssl_client_escaped_cert); a token bound to client A passes with A's certificate only."""
    stack = await nginx_stack()
    token = as_key.token(cnf={"x5t#S256": x5t(stack.pki.client_a.der)})
    auth = [("Authorization", f"Bearer {token}")]
    status, _, body = await stack.send("/accounts", auth, client="a")
    assert status == 200, body
    assert stack.upstream.last.header("X-Auth-Binding") == "mtls"
    assert stack.upstream.last.header("X-Auth-Cnf-Thumbprint") == x5t(stack.pki.client_a.der)
    for client in ("b", None):
        status, headers, body = await stack.send("/accounts", auth, client=client)
        assert status == 401, (client, body)
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    # A client without a certificate sending A's (public) certificate, and a forged original URI,
    # in the headers the check uses: nginx overwrites both (proxy_set_header), so they are never
    # believed.
    a_cert = quote(stack.pki.client_a.pem.decode(), safe="")
    status, _, body = await stack.send("/accounts", [*auth, ("X-SSL-Client-Cert", a_cert),
                                                     ("X-Original-URI", "/open")], client=None)
    assert status == 401, body
    assert len(stack.upstream.requests) == 1


async def test_nonce_challenge_carries_dpop_nonce(nginx_stack: StackFactory, as_key: AsKey, k1: Signer) -> None:
    """RFC 9449 §8: the nonce route's 401 use_dpop_nonce reaches the client with DPoP-Nonce
    (through auth_request_set), and a proof with that nonce passes."""
    stack = await nginx_stack()
    token = as_key.token(jkt=k1.jkt, scope="payments")
    o = stack.origin
    status, headers, body = await stack.send("/payments", dpop_headers(token, proof(k1, o, token, "/payments")))
    assert status == 401, body
    assert 'error="use_dpop_nonce"' in headers["WWW-Authenticate"]
    nonce = headers["DPoP-Nonce"]
    assert not stack.upstream.requests
    status, _, body = await stack.send(
        "/payments", dpop_headers(token, proof(k1, o, token, "/payments", nonce=nonce)))
    assert status == 200, body
    assert len(stack.upstream.requests) == 1


async def test_gateway_down_nginx_answers_503_and_forwards_nothing(
    nginx_stack: StackFactory, as_key: AsKey, k1: Signer
) -> None:
    stack = await nginx_stack()
    await stack.gateway.stop()
    token = as_key.token(jkt=k1.jkt)
    status, headers, body = await stack.send("/accounts", dpop_headers(token, proof(k1, stack.origin, token)))
    assert status == 503, body
    assert headers.get("Retry-After")
    assert not stack.upstream.requests


async def test_scope_refusal_is_403(nginx_stack: StackFactory, as_key: AsKey, k1: Signer) -> None:
    stack = await nginx_stack()
    token = as_key.token(jkt=k1.jkt, scope="other")
    status, headers, body = await stack.send("/accounts", dpop_headers(token, proof(k1, stack.origin, token)))
    assert status == 403, body
    assert json.loads(body)["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert not stack.upstream.requests
