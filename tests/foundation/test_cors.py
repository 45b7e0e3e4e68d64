"""CORS for browser DPoP clients: preflights answered locally, DPoP-Nonce/WWW-Authenticate exposed."""

from __future__ import annotations

import aiohttp

from tests.conftest import GatewayFactory, Pki, Upstream

ORIGIN = "https://app.bank.example"


def routes(url: str, pki: Pki) -> str:
    jwks = pki.dir / "cors-empty-jwks.json"
    jwks.write_text('{"keys": []}')
    return f"""
    routes:
      - id: open
        match: {{path_prefix: /open}}
        upstream: {url}
        auth: none
        cors: {{allowed_origins: ["{ORIGIN}"]}}
      - id: api
        match: {{path_prefix: /api}}
        upstream: {url}
        auth: {{issuers: [as], audience: https://api.example, sender_constraint: dpop}}
        cors: {{allowed_origins: ["{ORIGIN}"], allowed_headers: [X-Custom]}}
    issuers:
      - name: as
        issuer: https://as.example
        jwks_file: {jwks}
    """


async def test_preflight_answered_locally(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    gw = await gateway(routes(upstream.url, pki))
    async with aiohttp.ClientSession() as s:
        r = await s.options(f"https://localhost:{gw.port}/api/x", ssl=pki.client_context(), headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, dpop"})
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"dpop", "authorization", "x-custom"} <= allowed
        r = await s.options(f"https://localhost:{gw.port}/api/x", ssl=pki.client_context(), headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    assert upstream.requests == []


async def test_401_exposes_challenge_and_nonce_headers(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    gw = await gateway(routes(upstream.url, pki))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/api/x", ssl=pki.client_context(), headers={"Origin": ORIGIN})
        assert r.status == 401
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"dpop-nonce", "www-authenticate"} <= exposed
        r = await s.get(f"https://localhost:{gw.port}/api/x", ssl=pki.client_context(),
                        headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers
        r = await s.get(f"https://localhost:{gw.port}/open/x", ssl=pki.client_context(), headers={"Origin": ORIGIN})
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Origin" in r.headers.getall("Vary")
    assert len(upstream.requests) == 1
