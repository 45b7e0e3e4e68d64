"""What a client may not say to the upstream (issue #13 findings 4, 5, 6, 7; checklist PRX-05,
AUTHZ-04, MTLS-13, OPS: RFC 9700 §4.9 / §4.13).

A recording upstream sees every header that crossed; each spoofed header carries a marker value so
a leak is found whatever name it arrived under.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.foundation.test_hardening import raw_exchange, status_of

# Identity and forwarding headers that proxies, clouds and frameworks set for their upstreams.
IDENTITY = [
    # user / principal
    "X-Auth-Subject", "X-Auth-User", "X-Auth-Request-User", "X-Auth-Request-Email",
    "X-Authenticated-User", "X-Authenticated-Userid", "X-User", "X-User-Id", "X-Userinfo",
    "X-Username", "X-Remote-User", "X-Remote-Group", "X-Remote-Extra-Scopes", "Remote-User",
    "Remote-Groups", "X-Jwt-Claims", "X-Jwt-Assertion", "X-Jwt-Payload", "X-Consumer-Id",
    "X-Consumer-Username", "X-Credential-Identifier", "X-Forwarded-User", "X-Forwarded-Email",
    "X-Forwarded-Access-Token", "X-Webauth-User", "X-Pomerium-Jwt-Assertion", "Gap-Auth",
    # clouds
    "X-Amzn-Oidc-Data", "X-Amzn-Oidc-Identity", "X-Amzn-Oidc-Accesstoken", "X-Amzn-Mtls-Clientcert",
    "X-MS-CLIENT-PRINCIPAL", "X-MS-CLIENT-PRINCIPAL-ID", "X-MS-CLIENT-PRINCIPAL-NAME",
    "X-MS-TOKEN-AAD-ACCESS-TOKEN", "X-Goog-Authenticated-User-Email", "X-Goog-Authenticated-User-Id",
    "X-Goog-Iap-Jwt-Assertion", "X-Appengine-User-Email", "X-Endpoint-API-UserInfo",
    "X-Apigateway-Api-Userinfo", "Cf-Access-Authenticated-User-Email", "Cf-Access-Jwt-Assertion",
    "X-Azure-ClientIP", "X-Azure-FDID",
    # client addresses and forwarding
    "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "Forwarded",
    "X-Real-IP", "True-Client-IP", "X-Client-IP", "X-Cluster-Client-IP", "CF-Connecting-IP",
    "Fastly-Client-IP", "X-Original-Forwarded-For", "X-Envoy-External-Address", "X-Envoy-Internal",
    # client certificates
    "Client-Cert", "Client-Cert-Chain", "X-Client-Cert", "X-SSL-Client-Cert", "X-SSL-Client-Verify",
    "X-SSL-Client-S-DN", "SSL-Client-Cert", "X-ARR-ClientCert", "X-Forwarded-Client-Cert",
    "X-Forwarded-Tls-Client-Cert",
]
# Headers that make an upstream (or a framework in front of it) act on another method or path.
OVERRIDE = [
    "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-Method",
    "X-Original-URL", "X-Rewrite-URL", "X-Original-URI",
]


def variants(names: list[str]) -> list[str]:
    """Each name as sent, with underscores (Django/WSGI/ASGI read ``X_Auth_Subject`` as the dashed
    header) and in odd case."""
    out: list[str] = []
    for name in names:
        out += [name, name.replace("-", "_"), name.swapcase()]
    return out


def spoofed(names: list[str]) -> list[tuple[str, str]]:
    return [(name, f"spoofed-{i}") for i, name in enumerate(names)]


def leaked(upstream: Upstream) -> list[tuple[str, str]]:
    return [(k, v) for k, v in upstream.last.headers if "spoofed" in v]


def route(upstream_url: str, extra: str = "", proxy: str = "") -> str:
    return f"""
    {proxy}
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: {upstream_url}
        auth: none{extra}
    """


def test_table_matches_by_normalised_name() -> None:
    from gateway.proxy.names import is_identity_header, is_override_header, normalise

    for name in variants(IDENTITY):
        assert is_identity_header(normalise(name)), name
    for name in variants(OVERRIDE):
        assert is_override_header(normalise(name)), name
    for name in ("Content-Type", "Accept", "User-Agent", "X-User-Agent", "X-Request-Id", "Idempotency-Key",
                 "x-fapi-customer-ip-address", "x-fapi-auth-date", "X-Amzn-Trace-Id", "traceparent",
                 "X-Jws-Signature", "Cf-Ray", "X-Client-Version"):
        assert not is_identity_header(normalise(name)), name
        assert not is_override_header(normalise(name)), name


async def test_spoofed_identity_headers_never_reach_the_upstream(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """Finding 5: every variant (dashed, underscore, odd case) of every well-known identity header
    is removed, matched by normalised name (``underscore_headers: forward`` lets the underscore
    forms through the first gate, so the name match itself is what is tested)."""
    names = variants(IDENTITY)
    assert len(names) > 83
    gw = await gateway(route(upstream.url, proxy="proxy: {underscore_headers: forward}"))
    sent = spoofed(names)
    async with aiohttp.ClientSession() as s:
        for i in range(0, len(sent), 90):  # aiohttp's server takes at most 128 header lines
            r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(),
                            headers=[*sent[i:i + 90], ("X-Kept", "kept"), ("X_Kept_Too", "kept")])
            assert r.status == 200, await r.text()
            assert leaked(upstream) == []
    assert upstream.last.header("X-Kept") == "kept"
    assert upstream.last.header("X_Kept_Too") == "kept"
    assert upstream.last.header("X-Forwarded-For") == "127.0.0.1"


async def test_spoofed_identity_headers_stripped_under_the_default_config(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """The same, with the defaults: dashed and odd-case forms are stripped (underscore forms are
    refused before that, next test)."""
    sent = spoofed([n for n in variants(IDENTITY) if "_" not in n])
    gw = await gateway(route(upstream.url))
    async with aiohttp.ClientSession() as s:
        for i in range(0, len(sent), 90):
            r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(), headers=sent[i:i + 90])
            assert r.status == 200, await r.text()
            assert leaked(upstream) == []


async def test_underscore_header_names_are_refused_by_default(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    gw = await gateway(route(upstream.url))
    async with aiohttp.ClientSession() as s:
        for name in ("X_Auth_Subject", "X_Forwarded_For", "Client_Cert", "X_Harmless"):
            r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(), headers={name: "spoofed"})
            assert r.status == 400, name
            body = await r.json()
            assert body["error"] == "underscore_header_name"
            assert "spoofed" not in str(body)
    assert upstream.requests == []


async def test_underscore_header_names_can_be_dropped_instead(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """``drop`` is nginx's default (``underscores_in_headers off``): the request passes without them."""
    gw = await gateway(route(upstream.url, proxy="proxy: {underscore_headers: drop}"))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(),
                        headers=[("X_Harmless", "spoofed-1"), ("X-Kept", "kept")])
        assert r.status == 200
    assert leaked(upstream) == []
    assert upstream.last.header("X-Kept") == "kept"


async def test_override_headers_stripped_unless_the_route_opts_in(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """Finding 6: the gateway authorised this method and path; an upstream honouring
    X-HTTP-Method-Override or X-Original-URL would act on another one."""
    names = [n for n in variants(OVERRIDE) if "_" not in n]
    gw = await gateway(route(upstream.url))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(), headers=spoofed(names))
        assert r.status == 200
    assert leaked(upstream) == []

    gw = await gateway(route(upstream.url, "\n        forward_override_headers: true"))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(),
                        headers=[("X-HTTP-Method-Override", "spoofed-POST"), ("X-Original-URL", "spoofed-/admin")])
        assert r.status == 200
    assert upstream.last.header("X-HTTP-Method-Override") == "spoofed-POST"
    assert upstream.last.header("X-Original-URL") == "spoofed-/admin"


async def test_credentials_not_forwarded_unless_the_route_opts_in(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """Finding 4 (RFC 9700 §4.9): an upstream's logs and APM must not collect live tokens/proofs."""
    creds = [("Authorization", "Bearer spoofed-token"), ("DPoP", "spoofed-proof")]
    gw = await gateway(route(upstream.url))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(), headers=creds)
        assert r.status == 200
    assert upstream.last.header("Authorization") is None
    assert upstream.last.header("DPoP") is None

    gw = await gateway(route(upstream.url, "\n        forward_credentials: true"))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(), headers=creds)
        assert r.status == 200
    assert upstream.last.header("Authorization") == "Bearer spoofed-token"
    assert upstream.last.header("DPoP") == "spoofed-proof"


def test_forward_credentials_defaults_to_false() -> None:
    from gateway.config.schema import RouteConfig

    r = RouteConfig.model_validate({"id": "r", "match": {"path_prefix": "/"}, "upstream": "http://u", "auth": "none"})
    assert r.forward_credentials is False
    assert r.forward_override_headers is False


async def test_upstream_dpop_nonce_never_reaches_the_client(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """Finding 7: only the gateway issues DPoP nonces for the resources it protects (RFC 9449 §9)."""
    upstream.response_headers += [("DPoP-Nonce", "upstream-nonce"), ("dpop_nonce", "upstream-nonce"),
                                  ("X-Kept", "yes")]
    gw = await gateway(route(upstream.url))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context())
        assert r.status == 200
        assert "upstream-nonce" not in str(list(r.headers.items()))
        assert r.headers["X-Kept"] == "yes"


@pytest.mark.parametrize("name", ["X_Auth_Subject", "Client_Cert"])
async def test_underscore_refusal_on_the_raw_wire(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, name: str
) -> None:
    gw = await gateway(route(upstream.url))
    raw = f"GET /x HTTP/1.1\r\nHost: localhost\r\n{name}: admin\r\nConnection: close\r\n\r\n".encode()
    assert status_of(await raw_exchange(gw.port, pki.client_context(), raw)) == 400
    assert upstream.requests == []


# The probe, with a real token: fixtures of the token tests (real AS, real signatures).
from tests.tokens.conftest import AUD, auth_server, clock, signing_keys  # noqa: E402, F401


async def test_method_override_with_an_accounts_only_token_does_not_reach_the_upstream(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, auth_server: object  # noqa: F811
) -> None:
    """Finding 6 end to end: a GET authorised with an ``accounts`` token carrying
    ``X-HTTP-Method-Override: POST`` (POST needs ``payments``) reaches the upstream as a plain GET."""
    import time

    from tests.dpop.proofs import ath, es256
    from tests.tokens.authserver import AuthServer

    assert isinstance(auth_server, AuthServer)
    gw = await gateway(f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: {auth_server.url}/jwks
        ca: {pki.ca_pem}
    routes:
      - id: payments
        match: {{path_prefix: /payments, methods: [GET, HEAD, POST]}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, method_scopes: {{GET: [accounts], POST: [payments]}}}}
    """)
    signer = es256()
    token = auth_server.token("ec-1", scope="accounts", cnf={"jkt": signer.jkt})
    url = f"https://localhost:{gw.port}/payments/1"
    overrides = [("X-HTTP-Method-Override", "POST"), ("X-HTTP-Method", "POST"), ("X-Method-Override", "POST"),
                 ("X-Original-URL", "/payments/transfer"), ("X-Rewrite-URL", "/payments/transfer")]
    async with aiohttp.ClientSession() as s:
        proof = signer.proof(htm="GET", htu=url, ath=ath(token), iat=int(time.time()))
        r = await s.get(url, ssl=pki.client_context(),
                        headers=[("Authorization", f"DPoP {token}"), ("DPoP", proof), *overrides])
        assert r.status == 200, await r.text()
    rec = upstream.last
    assert rec.method == "GET"
    for name, _ in overrides:
        assert rec.header(name) is None, name
    assert rec.header("Authorization") is None and rec.header("DPoP") is None


def test_weaker_settings_are_logged_at_load(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.config import parse_config
    from gateway.proxy.headers import HeaderPolicy
    from tests.conftest import gateway_yaml

    cfg = parse_config(gateway_yaml(pki, route("http://127.0.0.1:1", "\n        forward_credentials: true"
                                               "\n        forward_override_headers: true",
                                               proxy="proxy: {underscore_headers: forward}")), source="t.yaml")
    with caplog.at_level("WARNING", logger="gateway"):
        HeaderPolicy.for_route(cfg, cfg.routes[0], strip=(), pseudonym="p")
    text = caplog.text
    assert "forward_credentials" in text and "clear text" in text
    assert "forward_override_headers" in text and "underscore_headers: forward" in text
