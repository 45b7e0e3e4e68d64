"""Plain proxying over real mTLS: forwarded headers, hop-by-hop removal, streaming, upstream errors.

Checklist: PRX-01..05 (hop-by-hop, Connection-nominated, Via, forwarding headers), FAPI-01.
"""

from __future__ import annotations

import asyncio
import re
import resource
import uuid

import aiohttp
import pytest
from yarl import URL

from gateway.proxy.headers import default_pseudonym
from tests.conftest import GatewayFactory, Pki, Upstream, gateway_yaml


def open_route(upstream_url: str, extra: str = "") -> str:
    return f"""
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: {upstream_url}
        auth: none{extra}
    """


async def test_valid_client_cert_is_proxied_with_forwarded_headers(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """PRX-01/02/03/05: hop-by-hop and Connection-nominated headers never reach the upstream."""
    gw = await gateway(open_route(upstream.url), client_auth="required")
    ctx = pki.client_context(pki.client_a)
    async with aiohttp.ClientSession() as s:
        r = await s.get(
            URL(f"https://localhost:{gw.port}/a%20b/c?x=1&y=%2F", encoded=True),
            ssl=ctx,
            headers=[
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("X-Secret-Hop", "must-not-pass"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("X-Forwarded-For", "6.6.6.6"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("X-Forwarded-User", "admin"),
                ("X-Repeat", "one"),
                ("X-Repeat", "two"),
            ],
        )
        assert r.status == 200, await r.text()
        fapi_id = r.headers["x-fapi-interaction-id"]
        uuid.UUID(fapi_id)
    rec = upstream.last
    assert rec.raw_path == "/a%20b/c?x=1&y=%2F"  # exact raw path and query, not re-encoded
    for h in ("X-Secret-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "X-Real-IP", "X-Forwarded-User"):
        assert rec.header(h) is None, h
    assert rec.header("Connection") in (None, "keep-alive")
    assert rec.header("X-Forwarded-For") == "127.0.0.1"
    assert rec.header("X-Forwarded-Proto") == "https"
    assert rec.header("X-Forwarded-Host") == f"localhost:{gw.port}"
    assert rec.header("Forwarded") == f'for=127.0.0.1;proto=https;host="localhost:{gw.port}"'
    assert rec.header("Via") == f"1.1 {default_pseudonym(gw.cfg)}"
    assert rec.header("x-fapi-interaction-id") == fapi_id
    assert rec.all("X-Repeat") == ["one", "two"]


async def test_client_interaction_id_is_echoed_and_invalid_one_replaced(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    gw = await gateway(open_route(upstream.url))
    mine = str(uuid.uuid4())
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(),
                        headers={"x-fapi-interaction-id": mine})
        assert r.headers["x-fapi-interaction-id"] == mine
        assert upstream.last.header("x-fapi-interaction-id") == mine
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context(),
                        headers={"x-fapi-interaction-id": "not a uuid\u00e9"})
        assert r.headers["x-fapi-interaction-id"] != "not a uuid"
        uuid.UUID(r.headers["x-fapi-interaction-id"])


async def test_hop_by_hop_response_headers_removed(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    upstream.response_headers += [("Connection", "X-Up-Hop"), ("X-Up-Hop", "secret"),
                                  ("Keep-Alive", "timeout=1"), ("X-Kept", "yes")]
    gw = await gateway(open_route(upstream.url))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context())
        assert r.status == 200
        assert "X-Up-Hop" not in r.headers
        assert r.headers.get("X-Kept") == "yes"
        assert r.headers["Via"].endswith(f"1.1 {default_pseudonym(gw.cfg)}")
        assert "Date" in r.headers


async def test_no_route_404_and_method_405(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    gw = await gateway(f"""
    routes:
      - id: acc
        match: {{path_prefix: /accounts, methods: [GET]}}
        upstream: {upstream.url}
        auth: none
    """)
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/payments", ssl=pki.client_context())
        assert r.status == 404
        assert (await r.json())["error"] == "no_route"
        r = await s.get(f"https://localhost:{gw.port}/accountsX", ssl=pki.client_context())
        assert r.status == 404
        r = await s.post(f"https://localhost:{gw.port}/accounts/1", ssl=pki.client_context())
        assert r.status == 405
    assert upstream.requests == []


@pytest.mark.parametrize("path", ["/open/../secret", "/open/%2e%2e/secret", "/open%2fsecret", "/open/./x"])
async def test_dot_segments_refused_before_routing(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki, path: str
) -> None:
    """A path an upstream could decode differently must not slip past the route matcher."""
    gw = await gateway(open_route(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=pki.client_context(),
                                                   server_hostname="localhost")
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status = (await reader.readline()).decode()
    writer.close()
    assert " 400 " in status, status
    assert upstream.requests == []


async def test_upstream_down_502(gateway: GatewayFactory, pki: Pki, unused_tcp_port: int) -> None:
    gw = await gateway(open_route(f"http://127.0.0.1:{unused_tcp_port}"))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/x", ssl=pki.client_context())
        assert r.status == 502
        body = await r.json()
        assert body["error"] == "upstream_unavailable"
        assert "127.0.0.1" not in await r.text()  # no internal detail


async def test_slow_upstream_504(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    gw = await gateway(f"""
    upstreams:
      slow:
        url: {upstream.url}
        timeouts: {{connect_s: 1, read_s: 0.3}}
    routes:
      - id: open
        match: {{path_prefix: /}}
        upstream: slow
        auth: none
    """)
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/slow?s=3", ssl=pki.client_context())
        assert r.status == 504
        assert (await r.json())["error"] == "upstream_timeout"


async def test_body_over_route_limit_413(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> None:
    gw = await gateway(open_route(upstream.url, "\n        max_body_bytes: 1000"))
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"https://localhost:{gw.port}/x", data=b"x" * 5000, ssl=pki.client_context())
        assert r.status == 413
        assert upstream.requests == []

        async def gen():  # chunked: no Content-Length, the limit bites while streaming
            for _ in range(10):
                yield b"y" * 500

        r = await s.post(f"https://localhost:{gw.port}/x", data=gen(), ssl=pki.client_context())
        assert r.status in (413, 502), r.status


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_large_upload_and_download_stream_in_bounded_memory(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """256 MiB each way through the gateway (same process): peak RSS grows far less than that."""
    size = 256 * 1024 * 1024
    gw = await gateway(open_route(upstream.url, f"\n        max_body_bytes: {size * 2}"))
    before = _rss_mb()
    block = b"z" * (1024 * 1024)

    async def gen():
        for _ in range(size // len(block)):
            yield block

    async with aiohttp.ClientSession() as s:
        r = await s.post(f"https://localhost:{gw.port}/upload", data=gen(), ssl=pki.client_context())
        assert r.status == 200
        assert (await r.json())["body_bytes"] == size
        r = await s.get(f"https://localhost:{gw.port}/download?n={size}", ssl=pki.client_context())
        got = 0
        async for chunk in r.content.iter_chunked(1024 * 1024):
            got += len(chunk)
        assert got == size
    grown = _rss_mb() - before
    assert grown < 100, f"peak RSS grew by {grown:.0f} MB while streaming {size >> 20} MiB each way"


async def test_host_must_name_this_server_without_external_origin(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """PRX-10 / DPOP-14: with no external_origin and no allowed_hosts, Host must be one of the server
    certificate's names (421 otherwise) and agree with the SNI name where one was sent."""
    text = re.sub(r"\n *allowed_hosts:.*", "", gateway_yaml(pki, open_route(upstream.url)))
    gw = await gateway(text, raw=True)
    async with aiohttp.ClientSession() as s:
        for base, host, expected in (
            ("localhost", "localhost", 200),
            ("localhost", f"localhost:{gw.port}", 200),
            ("127.0.0.1", f"127.0.0.1:{gw.port}", 200),  # an IP literal: no SNI sent
            ("localhost", f"127.0.0.1:{gw.port}", 421),  # SNI localhost, Host another name
            ("localhost", "evil.example", 421),
            ("127.0.0.1", f"evil.example:{gw.port}", 421),
        ):
            r = await s.get(f"https://{base}:{gw.port}/x", ssl=pki.client_context(), headers={"Host": host})
            assert r.status == expected, (base, host)
    assert len(upstream.requests) == 3


async def test_external_origin_names_the_only_accepted_host(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """With an external origin, Host must be its host (or on listen.allowed_hosts): another name is
    421, the origin's port or the listener's is fine, any other port is 400 (issue #13)."""
    text = re.sub(r"\n *allowed_hosts:.*", "", gateway_yaml(pki, open_route(upstream.url))).replace(
        "admin:", "  external_origin: https://api.bank.example\nadmin:", 1)
    gw = await gateway(text, raw=True)
    async with aiohttp.ClientSession() as s:
        for host, expected in (("other.example", 421), ("localhost", 421), ("api.bank.example", 200),
                               ("api.bank.example:443", 200), (f"api.bank.example:{gw.port}", 200),
                               ("api.bank.example:8443", 400)):
            r = await s.get(f"https://127.0.0.1:{gw.port}/x", ssl=pki.client_context(), headers={"Host": host})
            assert r.status == expected, host
    assert [r.header("X-Forwarded-Host") for r in upstream.requests] == [
        "api.bank.example", "api.bank.example:443", f"api.bank.example:{gw.port}"]


def test_generated_interaction_ids_are_random_v4_uuids() -> None:
    from gateway.proxy.headers import new_interaction_id

    ids = {new_interaction_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
