"""``gateway explain`` answers as the live gateway does (issue #19 §1), on the refusal cases the
suites already have: the DPoP checks (tests/dpop/test_e2e.py's table, downgrade, nonce), the token
checks (tests/tokens/test_e2e.py: expired, audience, issuer, alg none, scope, no credentials, query
token, two headers; with the suite's live AS, so also --online and offline), and certificate
binding (tests/mtls/test_e2e.py: right, other and no certificate; unbound token on an mtls route).

Each case is sent to a real gateway over TLS, then the same request (as a raw HTTP capture) is
explained against the same config; status, WWW-Authenticate, the body's error and DPoP-Nonce
presence must be equal. Not in the table: a replayed proof (explain never sees the live replay
store; its proofs are judged as first seen, which ``test_explain.py`` asserts).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import aiohttp
import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.explain import explain, parse_capture
from gateway.model import sha256_b64url
from tests.conftest import GatewayFactory, Pki, Upstream, gateway_yaml
from tests.dpop.e2e_support import AsKey, config_body, dpop_headers, proof_for
from tests.dpop.proofs import Signer, ath, es256
from tests.dpop.test_e2e import CASE_NAMES, _cases
from tests.mtls.test_e2e import Issuer
from tests.mtls.test_e2e import config as mtls_config
from tests.tokens.authserver import AuthServer, raw_jws
from tests.tokens.test_e2e import body as tokens_body

pytestmark = pytest.mark.timeout(120)

Answer = tuple[int | None, str | None, str | None, bool]
Headers = list[tuple[str, str]]


def _norm(www: str | None) -> str | None:
    # Freshness descriptions carry whole seconds ("3600 s in the past"): a second may tick between
    # the live request and its explanation.
    return re.sub(r"\d+ s\b", "N s", www) if www is not None else None


async def live(port: int, pki: Pki, method: str, path: str, headers: Headers, cert: Any = None) -> Answer:
    conn = aiohttp.TCPConnector(ssl=pki.client_context(cert))
    async with aiohttp.ClientSession(connector=conn) as s, s.request(
        method, f"https://localhost:{port}{path}", headers=headers
    ) as r:
        text = await r.text()
        error = json.loads(text).get("error") if text.startswith("{") else None
        return r.status, _norm(r.headers.get("WWW-Authenticate")), error, "DPoP-Nonce" in r.headers


async def explained(cfg: GatewayConfig, port: int, method: str, path: str, headers: Headers,
                    cert_pem: bytes | None = None, online: bool = False,
                    remote: str | None = "127.0.0.1") -> tuple[Answer, Any]:
    raw = f"{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    exp = await explain(cfg, parse_capture(raw + "\r\n"), cert_pem=cert_pem, port=port, online=online,
                        remote=remote)
    return (exp.status, _norm(exp.headers.get("WWW-Authenticate")), exp.body.get("error"),
            "DPoP-Nonce" in exp.headers), exp


async def start(gateway: GatewayFactory, pki: Pki, body: str) -> tuple[Any, GatewayConfig]:
    text = gateway_yaml(pki, body)
    return await gateway(text, raw=True), parse_config(text, source="test.yaml")


async def assert_parity(gw: Any, cfg: GatewayConfig, pki: Pki, method: str, path: str, headers: Headers,
                        *, cert: Any = None, online: bool = False) -> Any:
    got_live = await live(gw.port, pki, method, path, headers, cert)
    got, exp = await explained(cfg, gw.port, method, path, headers, cert.pem if cert else None, online)
    assert got == got_live, (path, headers[:1], exp.steps)
    return exp


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_dpop_checks(gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, k1: Signer,
                           k2: Signer, case: str) -> None:
    gw, cfg = await start(gateway, pki, config_body(as_key, upstream.url))
    token = as_key.token(jkt=k1.jkt)
    headers, error, _word = _cases(k1, k2, token, as_key.token())[case]
    exp = await assert_parity(gw, cfg, pki, "GET", "/accounts", headers)
    assert exp.verdict == "refuse" and exp.body["error"] == error and not upstream.requests


async def test_dpop_downgrade_nonce_and_a_valid_request(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, k1: Signer
) -> None:
    dpop = '  nonce: {secrets: ["' + "n" * 40 + '"]}'
    gw, cfg = await start(gateway, pki, config_body(as_key, upstream.url, dpop=dpop, nonce_route=True))
    token = as_key.token(jkt=k1.jkt)
    for extra in ((), (proof_for(k1, token),)):  # DPOP-20: a bound token under Bearer
        await assert_parity(gw, cfg, pki, "GET", "/accounts", dpop_headers(token, *extra, scheme="Bearer"))
    exp = await assert_parity(gw, cfg, pki, "GET", "/accounts", dpop_headers(token, proof_for(k1, token)))
    assert exp.body["error"] == "use_dpop_nonce" and "DPoP-Nonce" in exp.headers
    await assert_parity(gw, cfg, pki, "GET", "/nothing-here", [])  # no route: 404
    await assert_parity(gw, cfg, pki, "GET", "/accounts", [])  # no credentials: a bare challenge


async def test_tokens_online_and_offline(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, auth_server: AuthServer
) -> None:
    gw, cfg = await start(gateway, pki, tokens_body(auth_server, pki, upstream))
    bearer = [("Authorization", "Bearer {}")]

    def h(tok: str) -> Headers:
        return [(k, v.format(tok)) for k, v in bearer]

    for claims in ({"exp": int(time.time()) - 3600}, {"aud": "https://other-rs.example"},
                   {"iss": "https://evil.example"}):
        tok = auth_server.token("ec-1", **claims)
        await assert_parity(gw, cfg, pki, "GET", "/plain", h(tok), online=True)
    none = raw_jws({"alg": "none", "typ": "at+jwt", "kid": "ec-1"}, auth_server.claims())
    await assert_parity(gw, cfg, pki, "GET", "/plain", h(none), online=True)
    signer = es256()
    tok = auth_server.token("ec-1", scope="accounts", cnf={"jkt": signer.jkt})
    proof = signer.proof(htm="POST", htu=f"https://localhost:{gw.port}/payments", ath=ath(tok), iat=int(time.time()))
    exp = await assert_parity(gw, cfg, pki, "POST", "/payments", [("Authorization", f"DPoP {tok}"), ("DPoP", proof)],
                              online=True)
    assert exp.status == 403 and 'scope="payments"' in exp.headers["WWW-Authenticate"]
    await assert_parity(gw, cfg, pki, "GET", "/accounts", [])
    await assert_parity(gw, cfg, pki, "GET", f"/plain?access_token={tok}", [])
    await assert_parity(gw, cfg, pki, "GET", "/plain", [("Authorization", f"Bearer {tok}"),
                                                         ("Authorization", f"DPoP {tok}")])

    # Offline (the default), keys from jwks_uri cannot be had: undetermined, never a made-up verdict.
    good = auth_server.token("ec-1")
    _, exp = await explained(cfg, gw.port, "GET", "/plain", h(good))
    assert exp.verdict == "undetermined" and exp.status is None
    assert any(s.name == "token" and s.status == "undetermined" and "--online" in s.summary for s in exp.steps)
    # ... but what is decided before the token is still decided offline.
    assert (await explained(cfg, gw.port, "GET", "/accounts", []))[0] == await live(gw.port, pki, "GET", "/accounts",
                                                                                   [])
    # Online: the same token is allowed, as live.
    _, exp = await explained(cfg, gw.port, "GET", "/plain", h(good), online=True)
    assert exp.verdict == "allow" and (await live(gw.port, pki, "GET", "/plain", h(good)))[0] == 200

    # Opaque tokens (introspection, tests/tokens/test_e2e.py): inactive -> 401; active and bound to
    # client-a's certificate -> allowed with it, refused without it.
    opaque = "opaque-explain-cccccccccccccccccccc"
    exp = await assert_parity(gw, cfg, pki, "GET", "/accounts", [("Authorization", f"Bearer {opaque}")],
                              online=True)
    assert exp.status == 401
    auth_server.tokens[opaque] = {"active": True, "aud": "https://api.bank.example", "scope": "accounts",
                                  "sub": "cust-9", "client_id": "tpp-1", "exp": int(time.time()) + 300,
                                  "cnf": {"x5t#S256": sha256_b64url(pki.client_a.der)}}
    other = "opaque-explain-dddddddddddddddddddd"
    auth_server.tokens[other] = dict(auth_server.tokens[opaque])
    exp = await assert_parity(gw, cfg, pki, "GET", "/accounts", [("Authorization", f"Bearer {other}")],
                              online=True)
    assert exp.reason == "binding_mismatch"
    _, exp = await explained(cfg, gw.port, "GET", "/accounts", [("Authorization", f"Bearer {opaque}")],
                             pki.client_a.pem, online=True)
    assert exp.verdict == "allow", exp.steps
    _, exp = await explained(cfg, gw.port, "GET", "/accounts", [("Authorization", f"Bearer {opaque}")])
    assert exp.verdict == "undetermined"  # offline: introspection is the network


async def test_certificate_binding(gateway: GatewayFactory, pki: Pki, upstream: Upstream, tmp_path: Any) -> None:
    issuer = Issuer(tmp_path)
    gw, cfg = await start(gateway, pki, mtls_config(issuer, upstream))
    auth = [("Authorization", f"Bearer {issuer.token(sha256_b64url(pki.client_a.der))}")]
    for cert in (pki.client_b, None):
        for path in ("/accounts/1", "/any/1"):
            exp = await assert_parity(gw, cfg, pki, "GET", path, auth, cert=cert)
            assert exp.reason == "binding_mismatch"
    binding = next(s for s in exp.steps if s.name == "binding")
    assert ("client certificate x5t#S256", "(none presented: --cert PEM)", "MISMATCH") in binding.facts
    await assert_parity(gw, cfg, pki, "GET", "/accounts/1", [("Authorization", f"Bearer {issuer.token(None)}")],
                        cert=pki.client_a)
    _, exp = await explained(cfg, gw.port, "GET", "/accounts/1", auth, pki.client_a.pem)
    assert exp.verdict == "allow"
    # --at: the certificate is judged by that time's dates too (trustme's are valid from 2000-01-01).
    earlier = await explain(cfg, parse_capture(f"GET /accounts/1 HTTP/1.1\r\nHost: localhost:{gw.port}\r\n"
                                             f"Authorization: {auth[0][1]}\r\n\r\n"),
                          cert_pem=pki.client_a.pem, port=gw.port, at=946684800.0 - 86400)
    assert earlier.reason == "client_cert_not_yet_valid", earlier.steps
    facts = {w: (v, c) for w, v, c in next(s for s in exp.steps if s.name == "binding").facts}
    assert "client-a" in facts["client certificate"][0] and facts["  valid"][1] == "ok"
    assert facts["client certificate x5t#S256"] == (sha256_b64url(pki.client_a.der), "ok")
    _, exp = await explained(cfg, gw.port, "GET", "/accounts/1", auth, pki.foreign_client.pem)
    facts = {w: (v, c) for w, v, c in next(s for s in exp.steps if s.name == "binding").facts}
    assert "not a CA in listen.tls.client_ca" in facts["  issuer"][0]


async def test_revoked_and_self_signed_certificates(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, tmp_path: Any
) -> None:
    """tests/mtls/test_e2e.py: a revoked client certificate (CRL) -> 401; a registered self-signed one."""
    from cryptography import x509

    from tests.mtls.conftest import make_crl, make_self_signed

    issuer = Issuer(tmp_path)
    crl = tmp_path / "ca.crl"
    crl.write_bytes(make_crl(pki.ca, [x509.load_der_x509_certificate(pki.client_a.der).serial_number]))
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    client_s = make_self_signed("self-signed-tpp")
    (anchors / "tpp.pem").write_bytes(client_s.cert_pem)
    gw, cfg = await start(gateway, pki, mtls_config(
        issuer, upstream, f"client_certs: {{crl_files: [{crl}], self_signed: {{directory: {anchors}}}}}"))
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    exp = await assert_parity(gw, cfg, pki, "GET", "/accounts/1", [("Authorization", f"Bearer {token_a}")],
                              cert=pki.client_a)
    assert exp.reason == "client_cert_revoked", exp.steps
    # A registered self-signed certificate and its bound token: allowed by both.
    token_s = issuer.token(sha256_b64url(client_s.der))
    ctx = pki.client_context()
    client_s.configure_cert(ctx, tmp_path)
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{gw.port}/accounts/1", ssl=ctx, headers={"Authorization": f"Bearer {token_s}"}
    ) as r:
        assert r.status == 200
    _, exp = await explained(cfg, gw.port, "GET", "/accounts/1", [("Authorization", f"Bearer {token_s}")],
                             client_s.cert_pem)
    assert exp.verdict == "allow", exp.steps


async def test_certificate_from_a_trusted_front_proxy(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, tmp_path: Any
) -> None:
    """tests/mtls/test_e2e.py: XFCC from the front proxy (trusted by its own certificate, client B)."""
    from urllib.parse import quote

    issuer = Issuer(tmp_path)
    proxy_x5t = sha256_b64url(pki.client_b.der)
    gw, cfg = await start(gateway, pki, mtls_config(issuer, upstream, f"""
    client_certs:
      front_proxy: {{format: xfcc, trusted_identities: [{{x5t_s256: "{proxy_x5t}"}}]}}
    """))
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    xfcc = f'Cert="{quote(pki.client_a.pem.decode(), safe="")}"'
    good = [("Authorization", f"Bearer {token_a}"), ("X-Forwarded-Client-Cert", xfcc)]
    assert (await live(gw.port, pki, "GET", "/accounts/1", good, pki.client_b))[0] == 200
    _, exp = await explained(cfg, gw.port, "GET", "/accounts/1", good, pki.client_b.pem)
    assert exp.verdict == "allow", exp.steps
    binding = {w: v for w, v, _ in next(s for s in exp.steps if s.name == "binding").facts}
    assert "client-a" in binding["client certificate"]  # the forwarded one, not the proxy's
    # From anyone else the header is ignored; a malformed one from the proxy is a 400.
    other = [("Authorization", f"Bearer {issuer.token(sha256_b64url(pki.client_b.der))}"),
             ("X-Forwarded-Client-Cert", f'Cert="{quote(pki.client_b.pem.decode(), safe="")}"')]
    await assert_parity(gw, cfg, pki, "GET", "/accounts/1", other, cert=pki.client_a)
    await assert_parity(gw, cfg, pki, "GET", "/accounts/1",
                        [("Authorization", f"Bearer {token_a}"), ("X-Forwarded-Client-Cert", 'Cert="%ZZ"')],
                        cert=pki.client_b)
