"""Redis faults through the real gateway: the DPoP replay store and the revocation deny list.

A private ``redis-server`` per test (``redis_topologies.Standalone``), stopped with SIGKILL,
paused with SIGSTOP (accepts connections, answers nothing: slower than any timeout), restarted
empty. Real DPoP proofs and access tokens, real TLS to the gateway.

Documented behaviour: replay store unavailable -> 503 ``replay_store_unavailable`` +
``gateway_replay_store_errors_total`` (fail closed; ``on_unavailable: fail_open_safe_methods``
is the opt-in), answered within connect_timeout_s + timeout_s; Redis back -> served again with
no restart; Redis restarted empty -> proofs signed before are refused (the store's epoch).
Deny list: Redis down -> the last copy is enforced; Redis restarted empty -> the denials
are kept and written back (they used to be dropped: a revoked key or token became valid again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.dpop.e2e_support import AsKey, config_body, dpop_headers, proof_for
from tests.dpop.proofs import Signer, es256
from tests.tokens.authserver import AuthServer
from tests.tokens.test_admin_revocation import body as revocation_body

from .conftest import metric, reason_count
from .redis_topologies import Node, Standalone, redis_cmd

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 0.3
BOUND_S = 2 * TIMEOUT_S + 3.0
ERRORS = 'gateway_replay_store_errors_total{store="redis"}'


@pytest.fixture
def redis() -> Iterator[Node]:
    topo = Standalone()
    try:
        yield topo.server
    finally:
        topo.close()


@pytest.fixture
def as_key(tmp_path: Path) -> AsKey:
    return AsKey(tmp_path)


@pytest.fixture
def signer() -> Signer:
    return es256()


def dpop_yaml(as_key: AsKey, upstream: Upstream, redis: Node, **replay: Any) -> str:
    settings = {"url": redis.url, "timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S, "key_prefix": "f:"}
    extra = "".join(f", {k}: {v}" for k, v in replay.items())
    return config_body(as_key, upstream.url, dpop=f"  replay: {{backend: redis, redis: {json.dumps(settings)}{extra}}}")


async def send(gw: Any, pki: Pki, headers: list[tuple[str, str]]) -> tuple[int, float]:
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, s.get(
        f"https://127.0.0.1:{gw.port}/accounts", ssl=pki.client_context(), headers=headers
    ) as r:
        await r.read()
        return r.status, time.monotonic() - start


class Client:
    """One DPoP client: a bound token and fresh proofs."""

    def __init__(self, gw: Any, pki: Pki, as_key: AsKey, signer: Signer) -> None:
        self.gw, self.pki, self.signer = gw, pki, signer
        self.token = as_key.token(jkt=signer.jkt)

    def proof(self) -> str:
        return proof_for(self.signer, self.token, iat=int(time.time()))

    async def send(self, proof: str | None = None) -> tuple[int, float]:
        return await send(self.gw, self.pki, dpop_headers(self.token, proof or self.proof()))

    async def until(self, status: int, within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while (got := (await self.send())[0]) != status:
            assert time.monotonic() < deadline, f"still {got}"
            await asyncio.sleep(0.05)


async def next_second() -> None:
    await asyncio.sleep(1.05 - time.time() % 1)


async def test_down_at_start_fails_closed_then_serves(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, signer: Signer, redis: Node,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis.kill()
    with caplog.at_level(logging.WARNING):
        gw = await gateway(dpop_yaml(as_key, upstream, redis))  # starts: requests fail closed meanwhile
    assert "not reachable at start-up" in caplog.text
    client = Client(gw, pki, as_key, signer)
    status, took = await client.send()
    assert status == 503 and took < BOUND_S
    assert reason_count(gw, status=503, reason="replay_store_unavailable") == 1 and metric(gw, ERRORS) == 1
    assert not upstream.requests
    redis.start()
    await client.until(200)  # no restart


async def test_down_mid_run_then_restarted_empty(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, signer: Signer, redis: Node,
) -> None:
    gw = await gateway(dpop_yaml(as_key, upstream, redis))
    client = Client(gw, pki, as_key, signer)
    used = client.proof()
    assert (await client.send(used))[0] == 200
    unused = client.proof()
    await next_second()
    redis.kill()
    for _ in range(3):  # every request answered, closed, in bound
        status, took = await client.send()
        assert status == 503 and took < BOUND_S
    assert metric(gw, ERRORS) == 3 and len(upstream.requests) == 1
    redis.start()  # empty: every jti is gone
    await client.until(200)
    # Neither the replayed proof nor an unused one signed before the restart gets through.
    assert (await client.send(used))[0] == 401
    assert (await client.send(unused))[0] == 401
    assert reason_count(gw, status=401, reason="dpop_predates_replay_store") == 2


async def test_slow_redis_sigstop_answers_in_bound_then_recovers(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, signer: Signer, redis: Node,
) -> None:
    gw = await gateway(dpop_yaml(as_key, upstream, redis))
    client = Client(gw, pki, as_key, signer)
    assert (await client.send())[0] == 200
    redis.pause()
    try:
        results = await asyncio.gather(*(client.send() for _ in range(20)))
    finally:
        redis.resume()
    assert {s for s, _ in results} == {503}
    assert max(t for _, t in results) < BOUND_S
    assert metric(gw, ERRORS) == 20
    await client.until(200)


async def test_flapping_never_lets_a_replay_through(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, as_key: AsKey, signer: Signer, redis: Node,
) -> None:
    gw = await gateway(dpop_yaml(as_key, upstream, redis))
    client = Client(gw, pki, as_key, signer)
    accepted: list[str] = []
    for cycle in range(4):
        proof = client.proof()
        await client.until(200)
        if (await client.send(proof))[0] == 200:
            accepted.append(proof)
        if cycle % 2:
            # The epoch is in whole seconds, like iat: a proof signed in the very second Redis
            # came back empty is not known to predate it (see benchmarks/FAULTS.md, "windows").
            await next_second()
            redis.kill()
            await asyncio.sleep(0.1)
            redis.start()
        else:
            redis.pause()
            assert (await client.send())[0] == 503
            redis.resume()
    await client.until(200)
    for proof in accepted:  # replayed after any number of outages: refused, never forwarded
        assert (await client.send(proof))[0] == 401
    assert accepted


# --- the revocation deny list kept in Redis ----------------------------------------------------

ADMIN_TOKEN = "adm-" + "x7Kq2" * 8


def revocation_yaml(auth_server: AuthServer, pki: Pki, upstream: Upstream, redis: Node) -> str:
    # The admin-revocation tests' gateway, with the deny list kept in this test's Redis.
    return revocation_body(auth_server, pki, upstream, f"""
    dpop:
      replay: {{backend: redis, redis: {{url: "{redis.url}", timeout_s: {TIMEOUT_S}, connect_timeout_s: {TIMEOUT_S}}}}}
    revocation: {{sync_interval_s: 0.05}}
    """)


async def start_admin(gateway: GatewayFactory, pki: Pki, body: str) -> Any:
    from tests.conftest import gateway_yaml

    text = gateway_yaml(pki, body).replace("admin: {host: 127.0.0.1, port: 0}",
                                           f'admin: {{host: 127.0.0.1, port: 0, token: "{ADMIN_TOKEN}"}}')
    return await gateway(text, raw=True)


async def deny(gw: Any, **what: str) -> int:
    async with aiohttp.ClientSession() as s, s.post(
        f"http://127.0.0.1:{gw.admin_port}/admin/revocation/deny", json={"issuer": "bank-as", **what},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as r:
        await r.read()
        return r.status


async def get(gw: Any, pki: Pki, token: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{gw.port}/accounts/1", ssl=pki.client_context(),
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        await r.read()
        return r.status


async def syncs(n: int = 6) -> None:
    """Let the sync loop (every 0.05 s) run a few times."""
    await asyncio.sleep(0.05 * n)


async def test_deny_list_survives_redis_restarted_empty(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, auth_server: AuthServer, redis: Node,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoked key and a revoked token stay revoked when Redis comes back without its data, and
    the denials are written back so a replica started afterwards enforces them too."""
    body = revocation_yaml(auth_server, pki, upstream, redis)
    gw = await start_admin(gateway, pki, body)
    leaked = auth_server.token("ec-1", jti="leaked-1")
    by_rsa = auth_server.token("rsa-1")
    assert await deny(gw, jti="leaked-1") == 200 and await deny(gw, kid="rsa-1") == 200
    assert await get(gw, pki, leaked) == 401 and await get(gw, pki, by_rsa) == 401
    redis.kill()
    await syncs()
    assert await get(gw, pki, leaked) == 401 and await get(gw, pki, by_rsa) == 401  # last copy kept
    with caplog.at_level(logging.WARNING):
        redis.start()  # empty
        await syncs(20)
    assert await get(gw, pki, leaked) == 401 and await get(gw, pki, by_rsa) == 401
    assert "Redis lost the shared deny list" in caplog.text
    later = await start_admin(gateway, pki, body)
    assert await get(later, pki, leaked) == 401 and await get(later, pki, by_rsa) == 401
    assert await get(later, pki, auth_server.token("ec-1")) == 200


async def test_denial_made_while_redis_down_is_written_once_it_is_back(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, auth_server: AuthServer, redis: Node,
) -> None:
    """The API answers 503 (not stored in Redis) but enforces the denial here; if nobody retries,
    the sync loop writes it to Redis when Redis answers again, instead of dropping it."""
    body = revocation_yaml(auth_server, pki, upstream, redis)
    gw = await start_admin(gateway, pki, body)
    leaked = auth_server.token("ec-1", jti="during-outage")
    assert await get(gw, pki, leaked) == 200
    redis.kill()
    assert await deny(gw, jti="during-outage") == 503
    assert await get(gw, pki, leaked) == 401
    redis.start()
    await syncs(20)
    assert await get(gw, pki, leaked) == 401
    later = await start_admin(gateway, pki, body)
    assert await get(later, pki, leaked) == 401


async def test_deny_list_uses_the_redis_password_field(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, auth_server: AuthServer,
) -> None:
    """``dpop.replay.redis.password`` (kept apart from the URL, from a Secret) authenticates the
    deny-list client too, so a denial made on one replica reaches the others."""
    topo = Standalone()
    try:
        node = topo.server
        assert redis_cmd(node.port, "CONFIG", "SET", "requirepass", "s3cret-pw-42") == b"OK"
        body = revocation_yaml(auth_server, pki, upstream, node).replace(
            f"connect_timeout_s: {TIMEOUT_S}}}", f'connect_timeout_s: {TIMEOUT_S}, password: "s3cret-pw-42"}}')
        assert "s3cret-pw-42" in body
        a = await start_admin(gateway, pki, body)
        b = await start_admin(gateway, pki, body)
        leaked = auth_server.token("ec-1", jti="leaked-pw")
        assert await get(b, pki, leaked) == 200
        assert await deny(a, jti="leaked-pw") == 200  # stored in Redis, not only in A
        await syncs(20)
        assert await get(b, pki, leaked) == 401
    finally:
        topo.close()
