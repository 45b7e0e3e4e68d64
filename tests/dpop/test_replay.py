"""jti replay store (RFC 9449 §11.1, DPOP-17): memory bounds, Redis shared across replicas, fail closed."""

from __future__ import annotations

import tracemalloc

import pytest

from gateway.bind import Binder
from gateway.bind.replay import MemoryReplayStore, RedisReplayStore, replay_key
from gateway.config.dpop import DpopConfig, RedisReplayConfig, check_workers
from gateway.errors import ReplayStoreUnavailableError

from .conftest import Clock
from .helpers import check, rejected
from .proofs import Signer


@pytest.mark.slow
def test_memory_store_bounded_after_1m_distinct_jtis() -> None:
    """Memory stays bounded: 1,000,000 distinct proofs inside one window -> at most max_entries kept."""
    now = [0.0]
    store = MemoryReplayStore(max_entries=50_000, clock=lambda: now[0])
    for i in range(1_000_000):
        now[0] = i * 75 / 1_000_000  # all within one 75 s window
        assert store.first_use_sync(replay_key("jkt", str(i)), 75)
        assert len(store) <= 50_000
    assert store.evicted_live + len(store) == 1_000_000
    # The most recent one is still remembered.
    assert not store.first_use_sync(replay_key("jkt", "999999"), 75)


def test_memory_store_remembers_a_full_window_under_steady_load() -> None:
    """Steady 1000 proofs/s for 5 windows: every jti is refused for a whole window after its use,
    nothing is evicted, and what is held stays near rate x window (at most 1/8 more)."""
    now = [0.0]
    store = MemoryReplayStore(max_entries=200_000, clock=lambda: now[0])
    for i in range(375_000):
        now[0] = i / 1000
        assert store.first_use_sync(replay_key("jkt", str(i)), 75)
        if i % 997 == 0 and i >= 74_000:
            # a jti used 74 s ago (inside the window) is still a replay
            assert not store.first_use_sync(replay_key("jkt", str(i - 74_000)), 75)
    assert store.evicted_live == 0
    assert 75_000 <= len(store) <= 75_000 * 9 // 8 + 1000


@pytest.mark.parametrize("rate", [700, 2300, 3300])
def test_memory_store_costs_under_100_bytes_per_held_key(rate: int) -> None:
    """What the in-memory store holds per key bounds a single replica's RSS at a given proof rate
    (issue 20's soak: ~170 000 keys in the window at 2 200 proofs/s). One 75 s window at ``rate``
    proofs/s; traced heap per held key, store included. Per-generation sets cost 104-141 bytes at
    these rates (a set's table grows fourfold below 50 000 entries); dicts 63-88."""
    now = [0.0]
    keys = [replay_key("jkt", str(i)) for i in range(rate * 75)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = MemoryReplayStore(max_entries=500_000, clock=lambda: now[0])
        for i, key in enumerate(keys):
            now[0] = i / rate
            store.first_use_sync(key, 75)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.evicted_live == 0 and len(store) == len(keys)
    assert held / len(store) < 100, f"{held / len(store):.0f} bytes per held key"


def test_memory_store_expires_by_ttl() -> None:
    now = [0.0]
    store = MemoryReplayStore(max_entries=1000, clock=lambda: now[0])
    for i in range(500):
        store.first_use_sync(replay_key("k", str(i)), 60)
    assert not store.first_use_sync(replay_key("k", "0"), 60)
    now[0] = 59.9
    assert not store.first_use_sync(replay_key("k", "1"), 60)  # still inside the window
    now[0] = 60 + 60 / 8 + 0.01  # remembered at most 1/8 of the window longer
    # expired entries are dropped as new ones arrive, and an expired jti is usable again
    for i in range(500, 600):
        store.first_use_sync(replay_key("k", str(i)), 60)
    assert len(store) < 500
    assert store.first_use_sync(replay_key("k", "1"), 60)
    assert store.evicted_live == 0


def redis_cfg(url: str, prefix: str, **over: object) -> DpopConfig:
    return DpopConfig.model_validate(
        {"replay": {"backend": "redis", "redis": {"url": url, "key_prefix": prefix, **over.pop("redis", {})},  # type: ignore[dict-item]
                    **over}}
    )


async def test_replay_across_two_replicas_sharing_redis(
    redis_url: str, redis_key_prefix: str, k1: Signer, clock: Clock
) -> None:
    """DPOP-17b: a proof used at replica A is refused at replica B (two Binders, two pools, one Redis)."""
    cfg = redis_cfg(redis_url, redis_key_prefix)
    a, b = Binder(cfg, clock=clock), Binder(cfg, clock=clock)
    await a.start()
    await b.start()
    try:
        proof = k1.proof()
        assert (await check(a, proof, k1.jkt)).type == "dpop"
        await rejected(b, proof, k1.jkt, reason="dpop_replay")
        await rejected(a, proof, k1.jkt, reason="dpop_replay")
        assert (await check(b, k1.proof(), k1.jkt)).type == "dpop"
    finally:
        await a.close()
        await b.close()


async def test_redis_key_is_hashed_and_expires(redis_url: str, redis_key_prefix: str) -> None:
    """SET NX PX: the key is hash(jkt, jti) under the prefix, with a TTL; never the raw jti."""
    import redis.asyncio as aioredis

    store = RedisReplayStore(RedisReplayConfig(url=redis_url, key_prefix=redis_key_prefix))
    key = replay_key("some-jkt", "the-raw-jti")
    assert await store.first_use(key, 30)
    assert not await store.first_use(key, 30)
    client = aioredis.Redis.from_url(redis_url)
    try:
        names = [n async for n in client.scan_iter(match=f"{redis_key_prefix}*")]
        assert redis_key_prefix.encode() + key.hex().encode() in names
        assert not any(b"the-raw-jti" in n for n in names)
        ttl = await client.pttl(redis_key_prefix + key.hex())
        assert 0 < ttl <= 30_000
    finally:
        await client.aclose()
        await store.close()


async def test_redis_down_fails_closed_then_recovers(own_redis: object, k1: Signer, clock: Clock) -> None:
    """Redis stopped mid-run -> 503 ReplayStoreUnavailable (nothing accepted); back -> works, no restart."""
    from tests.redis_fixture import RedisProcess

    assert isinstance(own_redis, RedisProcess)
    binder = Binder(redis_cfg(own_redis.url, "t:", redis={"timeout_s": 0.3, "connect_timeout_s": 0.3}), clock=clock)
    await binder.start()
    try:
        assert (await check(binder, k1.proof(), k1.jkt)).type == "dpop"
        own_redis.stop()
        for _ in range(2):
            with pytest.raises(ReplayStoreUnavailableError) as info:
                await check(binder, k1.proof(), k1.jkt)
            assert info.value.status == 503 and info.value.reason == "replay_store_unavailable"
        own_redis.start()
        assert (await check(binder, k1.proof(), k1.jkt)).type == "dpop"
        proof = k1.proof()
        await check(binder, proof, k1.jkt)
        await rejected(binder, proof, k1.jkt, reason="dpop_replay")
    finally:
        await binder.close()


async def test_redis_unreachable_fail_open_safe_methods(k1: Signer, clock: Clock) -> None:
    """on_unavailable: fail_open_safe_methods lets GET through and still refuses POST."""
    from tests.redis_fixture import _free_port

    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    binder = Binder(redis_cfg(url, "t:", on_unavailable="fail_open_safe_methods",
                              redis={"timeout_s": 0.2, "connect_timeout_s": 0.2}), clock=clock)
    await binder.start()
    try:
        assert (await check(binder, k1.proof(), k1.jkt)).type == "dpop"
        with pytest.raises(ReplayStoreUnavailableError):
            await check(binder, k1.proof(htm="POST"), k1.jkt, method="POST")
    finally:
        await binder.close()


def test_memory_backend_with_workers_is_a_config_error() -> None:
    cfg = DpopConfig()
    assert check_workers(cfg, 1) is None
    problem = check_workers(cfg, 4)
    assert problem is not None and "another worker would be accepted" in problem and "redis" in problem
    assert check_workers(redis_cfg("redis://127.0.0.1:6379/0", "p:"), 4) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"algorithms": ["HS256"]}, "algorithms"),
        ({"algorithms": ["none"]}, "algorithms"),
        ({"iat_future_s": 120}, "iat_future_s"),
        ({"nonce": {"secrets": ["short"]}}, "secrets"),
        ({"nonce": {"secrets": ["x" * 32], "lifetime_s": 60, "refresh_before_s": 60}}, "refresh_before_s"),
        ({"replay": {"backend": "redis", "redis": {"url": "http://x"}}}, "url"),
        ({"replay": {"backend": "redis", "redis": {"mode": "sentinel"}}}, "sentinel"),
        ({"replay": {"on_unavailable": "fail_open"}}, "on_unavailable"),
    ],
)
def test_config_validation(section: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        DpopConfig.model_validate(section)


def test_workers_with_memory_backend_refused_at_load() -> None:
    """lifecycle.workers > 1 with the memory replay store is a config error naming the reason."""
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    text = """
listen: {external_origin: "https://api.example"}
lifecycle: {workers: 2}
issuers:
  - {name: as, issuer: "https://as.example", jwks_uri: "https://as.example/jwks"}
routes:
  - id: r
    match: {path_prefix: /}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], audience: [https://x]}
"""
    with pytest.raises(ConfigError, match="another worker would be accepted"):
        parse_config(text)
    parse_config(text.replace("{workers: 2}", "{workers: 2}\ndpop: {replay: {backend: redis}}"))
