"""The decision HTTP listener at the protocol level, over real sockets: Traefik forwardAuth (no
Traefik package here: the check requests carry the headers exactly as Traefik's forwardAuth and
passTLSClientCert middlewares set them, per Traefik's documentation and source), Envoy ext_authz
HTTP mode, and what every front refuses: untrusted callers, bodies, incomplete checks."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from multidict import CIMultiDictProxy

from gateway.server import GatewayServer
from gateway.tls.front_proxy import parse_traefik
from tests.conftest import ClientCert, Pki
from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import Signer, ath

from .conftest import NGINX_EXAMPLE, TRAEFIK_EXAMPLE, gateway_config, http_port, start_gateway
from .test_nginx import x5t

ORIGIN = "https://api.bank.example"
IDENTITY = ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Scope", "X-Auth-Issuer", "X-Auth-Binding",
            "X-Auth-Cnf-Thumbprint", "X-Auth-Token-Id")

Reply = tuple[int, CIMultiDictProxy[str], str]


def traefik_cert(client: ClientCert, *, escaped: bool) -> str:
    """passTLSClientCert ``pem: true``: the PEM body without armour and newlines; Traefik 2
    URL-escapes it (url.QueryEscape), Traefik 3 does not."""
    body = base64.b64encode(client.der).decode()
    return quote(body, safe="") if escaped else body


async def call(port: int, path: str, headers: list[tuple[str, str]], *, method: str = "GET",
               source: str = "127.0.0.1", data: bytes | None = None) -> Reply:
    conn = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=conn, skip_auto_headers=("User-Agent",)) as s, s.request(
        method, f"http://127.0.0.1:{port}{path}", headers=headers, data=data
    ) as r:
        return r.status, r.headers, await r.text()


def proof(k: Signer, token: str, *, htm: str = "GET", path: str = "/accounts", **claims: Any) -> str:
    return k.proof(htm=htm, htu=ORIGIN + path, ath=ath(token), **claims)


@pytest.fixture
async def traefik_gw(as_key: AsKey) -> AsyncIterator[GatewayServer]:
    gw = await start_gateway(gateway_config(TRAEFIK_EXAMPLE, as_key, origin=ORIGIN, trusted=["127.0.0.1/32"]))
    yield gw
    await gw.stop()


def traefik_check(uri: str, *, method: str = "GET", cert: str | None = None,
                  extra: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Traefik's forwardAuth request: the original headers, then X-Forwarded-* set by Traefik."""
    h = [*extra]
    if cert is not None:
        h.append(("X-Forwarded-Tls-Client-Cert", cert))
    h += [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Method", method), ("X-Forwarded-Proto", "https"),
          ("X-Forwarded-Host", "api.bank.example"), ("X-Forwarded-Uri", uri)]
    return h


async def test_traefik_allow_returns_identity_for_auth_response_headers(
    traefik_gw: GatewayServer, as_key: AsKey, k1: Signer
) -> None:
    token = as_key.token(jkt=k1.jkt)
    headers = traefik_check("/accounts/7?x=1", method="POST", extra=[
        ("Authorization", f"DPoP {token}"), ("DPoP", proof(k1, token, htm="POST", path="/accounts/7")),
        ("X-Auth-Subject", "forged")])
    status, resp, body = await call(http_port(traefik_gw), "/forward_auth", headers)
    assert status == 200, body
    assert resp["X-Auth-Subject"] == "cust-123" and resp["X-Auth-Binding"] == "dpop"
    assert resp["X-Auth-Cnf-Thumbprint"] == k1.jkt
    assert resp["Cache-Control"] == "no-store"
    assert 'mode="forward_auth"' in traefik_gw.metrics.render().decode()


@pytest.mark.parametrize("escaped", [False, True], ids=["traefik3", "traefik2-escaped"])
async def test_traefik_certificate_bound_token(
    traefik_gw: GatewayServer, as_key: AsKey, pki: Pki, escaped: bool
) -> None:
    token = as_key.token(cnf={"x5t#S256": x5t(pki.client_a.der)})
    auth = [("Authorization", f"Bearer {token}")]
    port = http_port(traefik_gw)
    status, resp, body = await call(port, "/forward_auth", traefik_check(
        "/accounts", cert=traefik_cert(pki.client_a, escaped=escaped), extra=auth))
    assert status == 200, body
    assert resp["X-Auth-Binding"] == "mtls" and resp["X-Auth-Cnf-Thumbprint"] == x5t(pki.client_a.der)
    # Client B's certificate, or none: the denial Traefik relays as it is (status, challenge, body).
    for cert in (traefik_cert(pki.client_b, escaped=escaped), None):
        status, resp, body = await call(port, "/forward_auth", traefik_check("/accounts", cert=cert, extra=auth))
        assert status == 401, body
        assert 'error="invalid_token"' in resp["WWW-Authenticate"]
        assert json.loads(body)["error"] == "invalid_token"
        assert not any(h in resp for h in IDENTITY)


async def test_traefik_denials_keep_their_status(traefik_gw: GatewayServer, as_key: AsKey, k1: Signer) -> None:
    port = http_port(traefik_gw)
    status, resp, _ = await call(port, "/forward_auth", traefik_check("/accounts"))
    assert status == 401 and "error=" not in resp["WWW-Authenticate"]
    status, _, body = await call(port, "/forward_auth", traefik_check("/accounts?access_token=x"))
    assert status == 400 and json.loads(body)["error"] == "invalid_request"
    token = as_key.token(jkt=k1.jkt, scope="payments")
    status, resp, body = await call(port, "/forward_auth", traefik_check("/payments", extra=[
        ("Authorization", f"DPoP {token}"), ("DPoP", proof(k1, token, path="/payments"))]))
    assert status == 401 and 'error="use_dpop_nonce"' in resp["WWW-Authenticate"] and resp["DPoP-Nonce"]
    # A malformed certificate header from the trusted proxy: 400, never a 5xx.
    status, _, body = await call(port, "/forward_auth", traefik_check("/accounts", cert="not base64!"))
    assert status == 400, body


def test_traefik_format_for_the_proxys_front_proxy_too(pki: Pki) -> None:
    """``format: traefik`` also serves ``client_certs.front_proxy`` (Traefik in front of the proxy)."""
    from multidict import CIMultiDict

    from gateway.config.mtls import FrontProxyConfig
    from gateway.tls.front_proxy import FrontProxy

    front = FrontProxy(FrontProxyConfig(format="traefik", trusted_cidrs=("127.0.0.1/32",)))
    assert front.header == "X-Forwarded-Tls-Client-Cert"
    for escaped in (False, True):
        headers = CIMultiDictProxy(CIMultiDict({front.header: traefik_cert(pki.client_a, escaped=escaped)}))
        facts = front.certificate(headers)
        assert facts is not None and facts.peer.x5t_s256 == x5t(pki.client_a.der)


def test_traefik_format_parser() -> None:
    ders = [b"\x30\x82\x01\x00first", b"\x30\x82\x01\x00second+/"]
    plain = ",".join(base64.b64encode(d).decode() for d in ders)
    assert parse_traefik(plain) == ders
    assert parse_traefik(quote(plain, safe="")) == ders
    for bad in ("", ",", "a,,b", "-----BEGIN CERTIFICATE-----", "%ZZ", "abc def"):
        with pytest.raises(ValueError):
            parse_traefik(bad)


def test_traefik_example_dynamic_config() -> None:
    """The Traefik side of the example: forwardAuth at our /forward_auth, forwarded headers set by
    Traefik (not trusted from the client), every identity header copied back, the client's
    certificate header dropped before passTLSClientCert (which leaves a client-sent copy alone when
    there is no certificate) and the credentials dropped before the upstream."""
    dyn = yaml.safe_load((TRAEFIK_EXAMPLE / "dynamic.yml").read_text())
    gw = yaml.safe_load((TRAEFIK_EXAMPLE / "gateway.yaml").read_text())
    mw = dyn["http"]["middlewares"]
    (router,) = dyn["http"]["routers"].values()
    chain = router["middlewares"]
    fa = mw["fapi-auth"]["forwardAuth"]
    assert fa["address"] == f"http://{gw['decision']['http']['host']}:{gw['decision']['http']['port']}/forward_auth"
    assert fa["trustForwardHeader"] is False
    assert set(IDENTITY) <= set(fa["authResponseHeaders"])
    assert mw["client-cert"]["passTLSClientCert"] == {"pem": True}
    assert gw["decision"]["http"]["client_cert"] == {
        "source": "header", "header": "X-Forwarded-Tls-Client-Cert", "format": "traefik"}
    drop = mw["drop-client-cert-header"]["headers"]["customRequestHeaders"]
    assert drop["X-Forwarded-Tls-Client-Cert"] == ""
    assert chain.index("drop-client-cert-header") < chain.index("client-cert") < chain.index("fapi-auth")
    creds = mw["drop-credentials"]["headers"]["customRequestHeaders"]
    assert creds["Authorization"] == "" and creds["DPoP"] == ""
    assert chain.index("fapi-auth") < chain.index("drop-credentials")


# --- Envoy ext_authz, HTTP mode ------------------------------------------------------------------

@pytest.fixture
async def envoy_gw(as_key: AsKey) -> AsyncIterator[GatewayServer]:
    cfg = gateway_config(NGINX_EXAMPLE, as_key, origin=ORIGIN, trusted=["127.0.0.1/32"])
    cfg["decision"]["http"]["client_cert"] = {"source": "header", "header": "X-Forwarded-Client-Cert",
                                              "format": "xfcc"}
    gw = await start_gateway(cfg)
    yield gw
    await gw.stop()


def xfcc(client: ClientCert) -> str:
    import hashlib

    pem = client.pem.decode()
    return f'Hash={hashlib.sha256(client.der).hexdigest()};Cert="{quote(pem, safe="")}"'


async def test_envoy_http_mode(envoy_gw: GatewayServer, as_key: AsKey, k1: Signer, pki: Pki) -> None:
    """The check request is the original method and path under path_prefix, with the original
    Host and the allowed headers; 200 = allow with the headers to add and to remove."""
    port = http_port(envoy_gw)
    token = as_key.token(jkt=k1.jkt)
    base = [("Host", "api.bank.example"), ("x-forwarded-proto", "https"), ("x-forwarded-for", "198.51.100.4"),
            ("x-request-id", "r-1"), ("content-length", "0")]
    status, resp, body = await call(port, "/ext_authz/accounts/1?y=2", [
        *base, ("authorization", f"DPoP {token}"), ("dpop", proof(k1, token, htm="DELETE", path="/accounts/1")),
        ("x-auth-subject", "forged")], method="DELETE")
    assert status == 200, body
    assert resp["X-Auth-Subject"] == "cust-123"
    removed = resp["x-envoy-auth-headers-to-remove"].split(",")
    assert {"authorization", "dpop"} <= set(removed)
    # Set (overwriting the forged copy), so not removed: Envoy removes after it sets.
    assert "x-auth-subject" not in removed
    assert "host" not in removed and "x-forwarded-proto" not in removed
    # Certificate-bound token with the XFCC Envoy sets (SANITIZE_SET, cert: true).
    token = as_key.token(cnf={"x5t#S256": x5t(pki.client_a.der)})
    for client, want in ((pki.client_a, 200), (pki.client_b, 401)):
        status, resp, body = await call(port, "/ext_authz/accounts", [
            *base, ("authorization", f"Bearer {token}"), ("x-forwarded-client-cert", xfcc(client))])
        assert status == want, body
    # Denial relayed by Envoy: status, challenge, body.
    status, resp, body = await call(port, "/ext_authz/accounts", base)
    assert status == 401 and resp["WWW-Authenticate"].startswith("Bearer")
    assert "error=" not in resp["WWW-Authenticate"]  # RFC 6750 §3.1: no credentials, no error code


# --- what every front refuses -------------------------------------------------------------------

async def test_untrusted_caller_is_refused_not_ignored(nginx_gw: GatewayServer, as_key: AsKey, k1: Signer,
                                                       pki: Pki) -> None:
    """Spoofed X-Original-*/X-Forwarded-* and certificate headers from a peer outside
    decision.http.trusted_peers: a denial (403), although the same check from nginx's address is
    allowed. The caller is told nothing else."""
    port = http_port(nginx_gw)
    token = as_key.token(cnf={"x5t#S256": x5t(pki.client_a.der)})
    check = [("X-Original-Method", "GET"), ("X-Original-URI", "/accounts"), ("X-Forwarded-Host", "api.bank.example"),
             ("X-Forwarded-Proto", "https"), ("X-SSL-Client-Cert", quote(pki.client_a.pem.decode(), safe="")),
             ("Authorization", f"Bearer {token}")]
    status, _, body = await call(port, "/auth_request", check)
    assert status == 200, body  # from the trusted address
    for path in ("/auth_request", "/forward_auth", "/ext_authz/accounts"):
        status, resp, body = await call(port, path, check, source="127.0.0.2")
        assert status == 403, (path, body)
        assert json.loads(body)["error"] == "untrusted_caller"
        assert not any(h in resp for h in IDENTITY)
    # Counted, per front (what an operator alerts on: someone else is asking).
    metrics = nginx_gw.metrics.render().decode()
    for mode in ("auth_request", "forward_auth", "ext_authz_http"):
        assert any(f'mode="{mode}"' in line and 'reason="untrusted_caller"' in line and line.endswith(" 1.0")
                   for line in metrics.splitlines()), mode


@pytest.fixture
async def nginx_gw(as_key: AsKey) -> AsyncIterator[GatewayServer]:
    gw = await start_gateway(gateway_config(NGINX_EXAMPLE, as_key, origin=ORIGIN, trusted=["127.0.0.1/32"]))
    yield gw
    await gw.stop()


async def test_nginx_front_maps_other_refusals_to_403_with_the_real_status(nginx_gw: GatewayServer) -> None:
    port = http_port(nginx_gw)
    # No X-Original-URI: the check is incomplete (400), which auth_request could not carry.
    status, resp, _ = await call(port, "/auth_request", [("X-Original-Method", "GET"),
                                                             ("X-Forwarded-Host", "api.bank.example")])
    assert status == 403 and resp["X-Fapi-Status"] == "400"
    assert json.loads(resp["X-Fapi-Body"])["error"] == "invalid_request"
    # Host naming another server: 421, carried the same way.
    status, resp, _ = await call(port, "/auth_request", [
        ("X-Original-Method", "GET"), ("X-Original-URI", "/accounts"), ("X-Forwarded-Host", "evil.example")])
    assert status == 403 and resp["X-Fapi-Status"] == "421"


async def test_check_with_a_body_is_refused_unread(nginx_gw: GatewayServer) -> None:
    status, resp, body = await call(http_port(nginx_gw), "/auth_request", [
        ("X-Original-Method", "POST"), ("X-Original-URI", "/accounts"), ("X-Forwarded-Host", "api.bank.example")],
        method="POST", data=b"x" * 1000)
    assert status == 403 and resp["X-Fapi-Status"] == "413", body


async def test_unknown_path_and_readiness(nginx_gw: GatewayServer) -> None:
    port = http_port(nginx_gw)
    assert (await call(port, "/admin", []))[0] == 404
    status, _, body = await call(port, "/readyz", [])
    assert status == 200 and json.loads(body)["ready"] is True
    assert "Server" not in (await call(port, "/readyz", []))[1]

