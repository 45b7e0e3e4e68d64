"""``rate_limits:`` validation (errors name the field) and hot reload (issue #18)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from gateway.server import GatewayServer
from tests.conftest import gateway_yaml
from tests.dpop.e2e_support import AsKey, Send, config_body, dpop_headers, proof_for
from tests.dpop.proofs import Signer


def _limits(burst: int) -> str:
    return f"""
rate_limits:
  backend: local
  limits:
    - {{id: tpp-burst, key: [client_id, route], rate: 1, per_s: 600, burst: {burst}}}
  default: [tpp-burst]
"""


@pytest.mark.parametrize(("section", "message"), [
    ("limits: [{id: a, key: client_id, rate: 1, quota: 5, window_s: 60}]", "rate_limits.limits[0]"),
    ("limits: [{id: a, key: client_id, quota: 5}]", "quota needs window_s"),
    ("limits: [{id: a, key: [client_id, secret], rate: 1}]", "unknown key part 'secret'"),
    ("limits: [{id: a, key: client_id, rate: 1}, {id: a, key: sub, rate: 2}]", "limits[1].id: duplicate"),
    ("default: [nope]", "default[0]: no limit with id 'nope'"),
    ("routes: {nosuch: {limits: []}}", "rate_limits.routes.nosuch: no route with that id"),
    ("limits: [{id: a, key: client_id, rate: 1, fail: maybe}]", "rate_limits.limits[0].fail"),
    ("limits: [{id: source_budget, key: client_id, rate: 1}]", "source_budget names a per-source budget"),
])
def test_bad_rate_limits_name_the_field(pki: Any, as_key: AsKey, section: str, message: str) -> None:
    text = gateway_yaml(pki, config_body(as_key, "http://127.0.0.1:1")) + f"rate_limits:\n  {section}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="gw.yaml")
    assert message in str(err.value)


def test_local_backend_refuses_several_workers(pki: Any, as_key: AsKey) -> None:
    text = gateway_yaml(pki, config_body(as_key, "http://127.0.0.1:1", dpop="  replay: {backend: redis}"))
    text += "lifecycle: {workers: 2}\n" + _limits(2)
    with pytest.raises(ConfigError, match=r"rate_limits\.backend: local counts inside one process"):
        parse_config(text, source="gw.yaml")


async def test_hot_reload_applies_new_limits_and_keeps_local_counts(
    pki: Any, as_key: AsKey, upstream: Any, send: Send, k1: Signer, tmp_path: Path,
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_yaml(pki, config_body(as_key, upstream.url)) + _limits(2))
    server = GatewayServer(load_config(str(path)), config_path=str(path))
    await server.start()
    try:
        token = as_key.token(jkt=k1.jkt)

        async def go() -> int:
            return (await send(server.port, headers=dpop_headers(token, proof_for(k1, token))))[0]

        assert [await go() for _ in range(3)] == [200, 200, 429]
        path.write_text(gateway_yaml(pki, config_body(as_key, upstream.url)) + _limits(5))
        assert await server.reload()
        # The two requests made before the reload still count: 3 more of the new burst of 5.
        assert [await go() for _ in range(4)] == [200, 200, 200, 429]
    finally:
        await server.stop()
