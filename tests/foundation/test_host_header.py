"""The Host header (and a trusted proxy's X-Forwarded-Host/Proto) is validated before anything
uses it: routing, the DPoP ``htu``, ``X-Forwarded-Host`` and ``Forwarded`` (issue #13, findings 2
and 3; checklist PRX-10, DPOP-14). Real TLS listener, recording upstream, raw request bytes."""

from __future__ import annotations

import pytest

from tests.conftest import GatewayFactory, Pki, Upstream, gateway_yaml

from .rawhttp import raw_request


def open_route(upstream_url: str) -> str:
    return f"""
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: {upstream_url}
        auth: none
    """


async def test_forwarded_hop_injected_through_host_never_reaches_upstream(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """Finding 3 (RFC 7239 §4): a Host carrying a quote and ``;for=`` is refused, nothing forwarded."""
    gw = await gateway(open_route(upstream.url))
    host = f'localhost:{gw.port}", for=10.6.6.6;host="evil.example'
    status, _ = await raw_request(gw.port, pki.client_context(), "/x", host=host)
    assert status == 400
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost:{port}/x/other?", 400),  # path in Host: would become part of the htu
        ("localhost:{port}?", 400),  # query in Host
        ("localhost:{port}#f", 400),
        ("user@localhost:{port}", 400),  # userinfo
        ("localhost:1", 400),  # not the listener's port
        ("localhost:{port}0", 400),
        ("localhost:99999", 400),
        ("localhost:-1", 400),
        ("localhost: {port}", 400),
        ("localhost:{port}, evil.example", 400),
        ("local host", 400),
        ("localhost%2e:{port}", 400),
        ("[::1", 400),
        ("", 400),
        ("evil.example:{port}", 421),  # well-formed, but not a name of this server
        ("evil.example", 421),
    ],
)
async def test_bad_host_refused_before_routing(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, host: str, expected: int
) -> None:
    """PRX-10: Host is an RFC 3986 authority (host [":" port]) naming this listener, or 400/421."""
    gw = await gateway(open_route(upstream.url))
    status, body = await raw_request(gw.port, pki.client_context(), "/x", host=host.format(port=gw.port))
    assert status == expected, body[:300]
    assert upstream.requests == []


@pytest.mark.parametrize("host", ["localhost:{port}", "LOCALHOST:{port}", "127.0.0.1:{port}", "localhost"])
async def test_good_host_passes_and_is_what_the_upstream_sees(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, host: str
) -> None:
    gw = await gateway(open_route(upstream.url))
    sent = host.format(port=gw.port)
    sni = "localhost" if "localhost" in sent.lower() else "127.0.0.1"
    status, body = await raw_request(gw.port, pki.client_context(), "/x", host=sent, sni=sni)
    assert status == 200, body[:300]
    assert upstream.last.header("X-Forwarded-Host") == sent.lower()
    # RFC 7239: a token where the value is one, else a quoted-string.
    forwarded = upstream.last.header("Forwarded") or ""
    assert f'host="{sent.lower()}"' in forwarded or forwarded.endswith(f"host={sent.lower()}"), forwarded


async def test_sni_and_host_must_agree(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    """PRX-10d: a Host naming another server than the TLS SNI is misdirected (421)."""
    gw = await gateway(open_route(upstream.url))
    status, _ = await raw_request(gw.port, pki.client_context(), "/x", host=f"127.0.0.1:{gw.port}",
                                  sni="localhost")
    assert status == 421
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("X-Forwarded-Host", 'api.bank.example", for=10.6.6.6;host="evil')], 400),
        ([("X-Forwarded-Host", "api.bank.example/accounts/other?")], 400),
        ([("X-Forwarded-Host", "api.bank.example:1")], 400),
        ([("X-Forwarded-Host", "evil.example")], 421),
        ([("X-Forwarded-Proto", "gopher")], 400),
        ([("X-Forwarded-Proto", 'https";for=1.2.3.4')], 400),
        ([("X-Forwarded-Host", "api.bank.example"), ("X-Forwarded-Proto", "https")], 200),
    ],
)
async def test_forwarded_host_from_trusted_proxy_is_validated_too(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, headers: list[tuple[str, str]], expected: int
) -> None:
    """X-Forwarded-Host/Proto from a trusted proxy pass the same validation as Host."""
    text = gateway_yaml(pki, open_route(upstream.url)).replace(
        "admin:", "  external_origin: https://api.bank.example\n  trusted_proxies: [127.0.0.1/32]\nadmin:", 1)
    gw = await gateway(text, raw=True)
    status, out = await raw_request(gw.port, pki.client_context(), "/x", host="api.bank.example",
                                    headers=headers)
    assert status == expected, out[:300]
    if expected == 200:
        assert upstream.last.header("X-Forwarded-Host") == "api.bank.example"
        assert upstream.last.header("X-Forwarded-Proto") == "https"
    else:
        assert upstream.requests == []


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_request_without_host_refused(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, version: str
) -> None:
    """RFC 9112 §3.2: no Host -> 400 (HTTP/1.0 too: nothing else names the server)."""
    gw = await gateway(open_route(upstream.url))
    status, _ = await raw_request(gw.port, pki.client_context(), "/x", version=version, send_host=False)
    assert status == 400
    assert upstream.requests == []
