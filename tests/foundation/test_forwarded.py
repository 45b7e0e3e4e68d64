"""RFC 7239 ``Forwarded`` and ``X-Forwarded-*`` built by the gateway: no value, however hostile, can
add a parameter or an element (issue #13 finding 3; checklist PRX-05).

The builder is tested with hostile values against a strict RFC 7239 parser written here from the
grammar, then once end to end with a forged ``Host`` a client could send.
"""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.foundation.test_hardening import raw_exchange, status_of

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\t \x21-\x7e\x80-\U0010ffff])*"'
_PAIR = re.compile(rf"({_TOKEN})=({_TOKEN}|{_QUOTED})")


def parse_forwarded(header: str) -> list[dict[str, str]]:
    """RFC 7239 §4: ``forwarded-element *( OWS "," OWS forwarded-element )``; strict, raises on junk."""
    elements: list[dict[str, str]] = []
    pos, n = 0, len(header)
    current: dict[str, str] = {}
    while True:
        m = _PAIR.match(header, pos)
        assert m is not None, f"not a forwarded-pair at {pos}: {header[pos:]!r}"
        name, raw = m.group(1).lower(), m.group(2)
        value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        assert name not in current, f"duplicate parameter {name}"
        current[name] = value
        pos = m.end()
        if pos == n:
            elements.append(current)
            return elements
        if header[pos] == ";":
            pos += 1
            continue
        sep = re.compile(r"[ \t]*,[ \t]*").match(header, pos)
        assert sep is not None, f"junk at {pos}: {header[pos:]!r}"
        elements.append(current)
        current = {}
        pos = sep.end()


HOSTILE = [
    'localhost:18700", for=10.6.6.6;host="evil.example',
    'a"b',
    "a\\b",
    'a\\"b',
    "\\",
    '"',
    'x;for=1.2.3.4',
    "x,for=1.2.3.4",
    "x, for=1.2.3.4;host=evil",
    "a=b",
    "with space",
    "tab\there",
    "",
    "é-unicode-ñ",
    '"quoted"',
    '\\"',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_forwarded_value_round_trips_as_one_value(value: str) -> None:
    from gateway.proxy.headers import forwarded_value

    header = f"host={forwarded_value(value)}"
    assert parse_forwarded(header) == [{"host": value}]


@pytest.mark.parametrize("value", HOSTILE)
def test_forwarded_element_never_gains_parameters_or_elements(value: str) -> None:
    from gateway.proxy.headers import forwarded_element

    header = forwarded_element(for_=value, proto=value, host=value, by=value)
    assert parse_forwarded(header) == [{"for": value, "proto": value, "host": value, "by": value}]


def test_plain_values_are_tokens_and_ipv6_is_bracketed_and_quoted() -> None:
    from gateway.proxy.headers import forwarded_element, forwarded_node, forwarded_value

    assert forwarded_value("api.bank.example") == "api.bank.example"
    assert forwarded_value("localhost:8443") == '"localhost:8443"'  # ":" is not a tchar
    assert forwarded_node("192.0.2.1") == "192.0.2.1"
    assert forwarded_node("2001:db8::1") == "[2001:db8::1]"
    assert forwarded_node("::ffff:192.0.2.1") == "[::ffff:192.0.2.1]"
    assert forwarded_node("") == "unknown"  # RFC 7239 §6.2: the peer is not known
    assert forwarded_node("not-an-ip") == "unknown"
    assert forwarded_element(for_="192.0.2.1", proto="https", host="api.bank.example") == (
        "for=192.0.2.1;proto=https;host=api.bank.example"
    )
    element = forwarded_element(for_=forwarded_node("::1"), proto="https", host="[::1]:8443")
    assert element == 'for="[::1]";proto=https;host="[::1]:8443"'
    assert parse_forwarded(element) == [{"for": "[::1]", "proto": "https", "host": "[::1]:8443"}]


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b", "a\x7fb", "a\x01b"])
def test_unrepresentable_characters_are_refused(value: str) -> None:
    from gateway.proxy.headers import forwarded_value

    with pytest.raises(ValueError):
        forwarded_value(value)


async def test_forged_host_cannot_add_a_forwarded_hop(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """The issue's probe: ``Host: localhost:PORT", for=10.6.6.6;host="evil.example``. Either the
    Host is refused, or the upstream gets exactly one element naming the real peer."""
    gw = await gateway(f"""
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: {upstream.url}
        auth: none
    """)
    forged = f'localhost:{gw.port}", for=10.6.6.6;host="evil.example'
    raw = f"GET /x HTTP/1.1\r\nHost: {forged}\r\nConnection: close\r\n\r\n".encode()
    response = await raw_exchange(gw.port, pki.client_context(), raw)
    status = status_of(response)
    if status == 200:
        rec = upstream.last
        (element,) = parse_forwarded(rec.header("Forwarded") or "")
        assert element["for"] == "127.0.0.1"
        assert "10.6.6.6" not in (rec.header("X-Forwarded-For") or "")
    else:
        assert 400 <= status < 500, response[:200]
        assert upstream.requests == []
    # A well-formed Host still passes, and the element parses.
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context())
        assert r.status == 200
    (element,) = parse_forwarded(upstream.last.header("Forwarded") or "")
    assert element == {"for": "127.0.0.1", "proto": "https", "host": f"localhost:{gw.port}"}


async def test_forged_host_with_external_origin_reaches_the_builder_and_is_refused(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """With ``external_origin`` set the Host is not matched against the certificate, so the forged
    value reaches the header builder: refused (400), nothing forwarded, no forged hop."""
    from tests.conftest import gateway_yaml

    text = gateway_yaml(pki, f"""
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: {upstream.url}
        auth: none
    """).replace("admin:", "  external_origin: https://api.bank.example\nadmin:", 1)
    gw = await gateway(text, raw=True)
    for forged in (f'localhost:{gw.port}", for=10.6.6.6;host="evil.example', "a.example, evil.example",
                   "a.example;for=10.6.6.6"):
        raw = f"GET /x HTTP/1.1\r\nHost: {forged}\r\nConnection: close\r\n\r\n".encode()
        response = await raw_exchange(gw.port, pki.client_context(), raw)
        if status_of(response) == 200:
            (element,) = parse_forwarded(upstream.last.header("Forwarded") or "")
            assert element["for"] == "127.0.0.1"
        else:
            assert status_of(response) == 400, response[:200]
    assert all("10.6.6.6" not in (r.header("Forwarded") or "") for r in upstream.requests)
    assert all("evil" not in (r.header("X-Forwarded-Host") or "") for r in upstream.requests)


def test_policy_refuses_a_host_that_is_not_an_authority() -> None:
    """Defence in depth behind Host validation: X-Forwarded-Host is a comma list for many readers."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.errors import HeaderRefusedError
    from gateway.proxy.headers import HeaderPolicy

    policy = HeaderPolicy()
    incoming = CIMultiDictProxy(CIMultiDict[str]())
    for host in ("a.example, evil.example", 'a"b', "a b", "a;b", "", "a.example:99999x"):
        with pytest.raises(HeaderRefusedError):
            policy.upstream_request_headers(incoming, client_ip="127.0.0.1", proto="https", host=host,
                                            fapi_id="f")
    for host in ("api.bank.example", "api.bank.example:8443", "127.0.0.1:1", "[::1]:8443", "[2001:db8::1]"):
        out = policy.upstream_request_headers(incoming, client_ip="::1", proto="https", host=host, fapi_id="f")
        assert out["X-Forwarded-Host"] == host
        assert parse_forwarded(out["Forwarded"]) == [{"for": "[::1]", "proto": "https", "host": host}]
