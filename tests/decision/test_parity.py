"""The decision service and the proxy give the same answer to the same request: one gateway, its
TLS listener driven by a real client, and ``check`` on the same state (same routes, same replay
store: a proof the proxy accepted is a replay for the decision service, and the other way round)."""

from __future__ import annotations

import json
import socket
import textwrap
import time
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.decision.core import OriginalRequest, Verdict, check
from gateway.server import GatewayServer
from tests.conftest import GatewayFactory, Pki
from tests.dpop.e2e_support import AUD, ISS, AsKey
from tests.dpop.proofs import Signer, es256

from .support import dpop_headers, proof


@pytest.fixture(scope="module")
def as_key(tmp_path_factory: pytest.TempPathFactory) -> AsKey:
    return AsKey(tmp_path_factory.mktemp("as"))


@pytest.fixture(scope="module")
def k1() -> Signer:
    return es256()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start(gateway: GatewayFactory, pki: Pki, as_key: AsKey, upstream_url: str) -> tuple[GatewayServer, str]:
    port = _free_port()
    origin = f"https://localhost:{port}"
    text = textwrap.dedent(f"""
    listen:
      host: 127.0.0.1
      port: {port}
      external_origin: {origin}
      tls: {{cert: {pki.server_cert}, key: {pki.server_key}, client_ca: [{pki.ca_pem}], client_auth: optional}}
    admin: {{host: 127.0.0.1, port: 0}}
    issuers: [{{name: bank-as, issuer: {ISS}, jwks_file: {as_key.jwks}}}]
    dpop: {{algorithms: [PS256, ES256, EdDSA]}}
    decision: {{enabled: true, grpc: {{port: 0}}}}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream_url}
        auth: {{issuers: [bank-as], audience: [{AUD}], scopes: [accounts], sender_constraint: dpop}}
    """)
    return await gateway(text, raw=True), origin


async def _proxy(pki: Pki, origin: str, path: str, headers: list[tuple[str, str]],
                 method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str], str]:
    conn = aiohttp.TCPConnector(ssl=pki.client_context(pki.client_a), force_close=True)
    hdrs = [*headers, ("Host", host)] if host else headers
    async with aiohttp.ClientSession(connector=conn) as s, s.request(
        method, URL(origin + path, encoded=True), headers=hdrs  # sent as written: no client-side normalising
    ) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text()


async def _decide(gw: GatewayServer, origin: str, path: str, headers: list[tuple[str, str]],
                  method: str = "GET", host: str | None = None) -> Verdict:
    return await check(gw.holder.current, OriginalRequest.build(
        "ext_authz_grpc", method=method, scheme="https", authority=host or origin.removeprefix("https://"),
        raw_path=path, headers=headers, remote="127.0.0.1", client_cert=None, sni="localhost"))


def _same(proxied: tuple[int, dict[str, str], str], v: Verdict, case: str) -> None:
    status, headers, body = proxied
    assert v.status == status, (case, status, v.status, body, v.body)
    vh = {k.lower(): val for k, val in v.response_headers}
    assert vh.get("www-authenticate") == headers.get("www-authenticate"), case
    assert ("dpop-nonce" in vh) == ("dpop-nonce" in headers), case
    if status >= 400:
        assert json.loads(v.body) == json.loads(body), case


async def test_same_answers_as_the_proxy(
    gateway: GatewayFactory, upstream: Any, pki: Pki, as_key: AsKey, k1: Signer
) -> None:
    gw, origin = await _start(gateway, pki, as_key, upstream.url)
    token = as_key.token(jkt=k1.jkt)
    expired = as_key.token(jkt=k1.jkt, exp=int(time.time()) - 600)
    wrong_scope = as_key.token(jkt=k1.jkt, scope="payments")

    def good(t: str = token, **kw: Any) -> list[tuple[str, str]]:
        return dpop_headers(t, proof(k1, t, htu=origin + "/accounts", **kw))

    cases: dict[str, tuple[str, list[tuple[str, str]], str, str | None]] = {
        "valid": ("/accounts", good(), "GET", None),
        "wrong htu": ("/accounts", dpop_headers(token, proof(k1, token, htu=origin + "/other")), "GET", None),
        "missing token": ("/accounts", [], "GET", None),
        "expired token": ("/accounts", good(expired), "GET", None),
        "wrong scope": ("/accounts", good(wrong_scope), "GET", None),
        "bearer for a DPoP token": ("/accounts", [("Authorization", f"Bearer {token}")], "GET", None),
        "unknown route": ("/nowhere", [], "GET", None),
        "dot segment": ("/accounts/%2e%2e/x", [], "GET", None),
        "underscore header": ("/accounts", [("X_Auth_Subject", "a")], "GET", None),
        "other host": ("/accounts", good(), "GET", "evil.example"),
        "wrong htm": ("/accounts", good(method="POST"), "GET", None),
    }
    for case, (path, headers, method, host) in cases.items():
        proxied = await _proxy(pki, origin, path, headers, method, host)
        # A fresh proof for the second run where the first one was valid (else: a replay).
        again = good(**({"method": "POST"} if case == "wrong htm" else {})) if case in ("valid", "wrong htm") else \
            good(expired) if case == "expired token" else good(wrong_scope) if case == "wrong scope" else headers
        _same(proxied, await _decide(gw, origin, path, again, method, host), case)

    # One replay store: a proof the proxy accepted is refused by the decision service, and back.
    used = good()
    assert (await _proxy(pki, origin, "/accounts", used))[0] == 200
    replayed = await _decide(gw, origin, "/accounts", used)
    assert replayed.status == 401 and replayed.reason == "dpop_replay"
    used2 = good()
    assert (await _decide(gw, origin, "/accounts", used2)).allowed
    assert (await _proxy(pki, origin, "/accounts", used2))[0] == 401
