"""Upstreams that share a URL keep their own settings (issue #13, finding 16).

Pools used to be keyed by URL, so the second upstream with the same URL silently ran on the first
one's timeouts, CA, client certificate and pool size. They are keyed by upstream name now; an
upstream named inline by URL on a route is keyed by its full settings.
"""

from __future__ import annotations

import aiohttp

from gateway.app import build_state
from gateway.config import parse_config
from tests.conftest import GatewayFactory, Pki, Upstream


def _two_upstreams_one_url(url: str) -> str:
    return f"""
    upstreams:
      fast:
        url: {url}
        timeouts: {{connect_s: 1, read_s: 0.3}}
      patient:
        url: {url}
        timeouts: {{connect_s: 1, read_s: 5}}
        pool_size: 7
    routes:
      - id: fast
        match: {{path_prefix: /slow/fast}}
        upstream: fast
        auth: none
      - id: patient
        match: {{path_prefix: /slow/patient}}
        upstream: patient
        auth: none
      - id: inline
        match: {{path_prefix: /inline}}
        upstream: {url}
        auth: none
    """


async def test_same_url_upstreams_keep_their_own_timeouts(
    gateway: GatewayFactory, upstream: Upstream, pki: Pki
) -> None:
    """End to end: the patient upstream's 5 s read timeout is not cut to the fast one's 0.3 s,
    and the fast one's 0.3 s still fires (whichever route is configured first)."""
    gw = await gateway(_two_upstreams_one_url(upstream.url))
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"https://localhost:{gw.port}/slow/patient?s=1", ssl=pki.client_context())
        assert r.status == 200, await r.text()
        r = await s.get(f"https://localhost:{gw.port}/slow/fast?s=1", ssl=pki.client_context())
        assert r.status == 504
        assert (await r.json())["error"] == "upstream_timeout"


async def test_pools_keyed_by_name_and_inline_by_settings(upstream: Upstream) -> None:
    cfg = parse_config(_two_upstreams_one_url(upstream.url), source="t.yaml")
    state = build_state(cfg)
    try:
        rts = state.routes
        assert rts["fast"].upstream is not rts["patient"].upstream
        assert rts["fast"].upstream.config.timeouts.read_s == 0.3
        assert rts["patient"].upstream.config.timeouts.read_s == 5
        assert rts["patient"].upstream.pool._limit == 7
        # Inline by URL: its own pool with the default settings, not a named upstream's.
        inline = rts["inline"].upstream
        assert inline is not rts["fast"].upstream and inline is not rts["patient"].upstream
        assert inline.config.timeouts.read_s == 30.0
        assert len({id(up) for up in state.upstreams.values()}) == 3
    finally:
        await state.close()
