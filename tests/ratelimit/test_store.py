"""The limit script against a real Redis, and the local store with the same semantics (issue #18)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.config.dpop import RedisReplayConfig
from gateway.config.ratelimit import LimitConfig
from gateway.ratelimit.store import Check, LocalLimitStore, RedisLimitStore, storage_key


def burst(rate: int = 10, burst: int = 3, per_s: float = 1.0, lid: str = "burst") -> LimitConfig:
    return LimitConfig(id=lid, key=("client_id",), rate=rate, burst=burst, per_s=per_s)


def daily(quota: int = 5, lid: str = "daily") -> LimitConfig:
    return LimitConfig(id=lid, key=("client_id",), quota=quota, window_s=86400)


def checks(prefix: bytes, client: str, *limits: LimitConfig) -> list[Check]:
    out = []
    for lim in limits:
        key, tag = storage_key(prefix, lim, (client,))
        out.append(Check(lim, key, tag))
    return out


@pytest.fixture
async def redis_store(redis_url: str, redis_key_prefix: str) -> AsyncIterator[RedisLimitStore]:
    prefix = f"{redis_key_prefix}rl:{uuid.uuid4().hex[:6]}:"
    store = RedisLimitStore(RedisReplayConfig(url=redis_url, key_prefix=prefix))
    await store.start()
    yield store
    await store.close()


async def test_gcra_allows_the_burst_then_refuses_with_retry_after(redis_store: RedisLimitStore) -> None:
    # 1 request per 100 s, burst 3: three pass at once, the fourth waits ~100 s.
    lim = burst(rate=1, burst=3, per_s=100)
    c = checks(redis_store.prefix, "tpp-1", lim)
    got = [(await redis_store.apply(c))[0] for _ in range(4)]
    assert [o.allowed for o in got] == [True, True, True, False]
    assert [o.remaining for o in got[:3]] == [2, 1, 0]
    assert 95 < got[3].retry_after_s <= 100
    # Another client's bucket is its own.
    assert (await redis_store.apply(checks(redis_store.prefix, "tpp-2", lim)))[0].allowed


async def test_fixed_window_quota_and_all_or_nothing(redis_store: RedisLimitStore) -> None:
    b, d = burst(rate=1, burst=2, per_s=100), daily(quota=3)
    c = checks(redis_store.prefix, "tpp-1", b, d)
    first, second, third = [await redis_store.apply(c) for _ in range(3)]
    assert [o.allowed for o in first] == [True, True] and [o.allowed for o in second] == [True, True]
    # The burst refuses the third: the daily quota is not consumed by a refused request.
    assert [o.allowed for o in third] == [False, True]
    peek = await redis_store.apply(checks(redis_store.prefix, "tpp-1", d), peek=True)
    assert peek[0].remaining == 0  # 2 used of 3: one more would leave 0
    assert 0 < peek[0].reset_s <= 86400


async def test_daily_quota_refuses_until_the_window_ends(redis_store: RedisLimitStore) -> None:
    d = daily(quota=2)
    c = checks(redis_store.prefix, "tpp-9", d)
    got = [(await redis_store.apply(c))[0] for _ in range(3)]
    assert [o.allowed for o in got] == [True, True, False]
    assert got[2].retry_after_s == pytest.approx(got[2].reset_s) and 0 < got[2].retry_after_s <= 86400


async def test_local_store_has_the_same_semantics() -> None:
    now = [1_000_000.0]
    store = LocalLimitStore(clock=lambda: now[0])
    b, d = burst(rate=1, burst=2, per_s=10), daily(quota=3)
    c = checks(store.prefix, "tpp-1", b, d)
    assert [o.allowed for o in await store.apply(c)] == [True, True]
    assert [o.allowed for o in await store.apply(c)] == [True, True]
    refused = await store.apply(c)
    assert [o.allowed for o in refused] == [False, True]
    assert refused[0].retry_after_s == pytest.approx(10.0)
    now[0] += 10.0  # one emission interval later: one more passes
    assert [o.allowed for o in await store.apply(c)] == [True, True]
    now[0] += 20.0
    assert [o.allowed for o in await store.apply(c)] == [True, False]  # the daily quota (3) is used up


@pytest.mark.slow
async def test_cluster_one_script_per_key_tag() -> None:
    """Redis Cluster (3 masters): the limits of one key share a slot (hash tag) and one script;
    limits on different keys go as one script each, on whichever node serves their slot."""
    from tests.faults.redis_topologies import Cluster

    with Cluster(replicas=False) as cluster:
        store = RedisLimitStore(RedisReplayConfig(url=cluster.url, mode="cluster", key_prefix="rl:"))
        await store.start()
        try:
            b, d = burst(rate=1, burst=2, per_s=100), daily(quota=3)
            per_sub = LimitConfig(id="per-sub", key=("sub",), rate=1, burst=1, per_s=100)
            c = [*checks(store.prefix, "tpp-1", b, d), *checks(store.prefix, "cust-9", per_sub)]
            assert c[0].tag == c[1].tag != c[2].tag
            first = await store.apply(c)
            assert [o.allowed for o in first] == [True, True, True]
            second = await store.apply(c[:2])
            assert [o.allowed for o in second] == [True, True]
            third = await store.apply(c[:2])
            assert [o.allowed for o in third] == [False, True]  # the burst refuses, the quota is kept
            assert [o.allowed for o in await store.apply(c[2:])] == [False]
        finally:
            await store.close()


async def test_a_limit_reloaded_as_the_other_kind_starts_afresh(redis_store: RedisLimitStore) -> None:
    """Same id, GCRA then fixed window (a reload): not a WRONGTYPE error for a day, a new bucket."""
    as_rate = burst(rate=1, burst=1, per_s=100, lid="same")
    as_quota = daily(quota=2, lid="same")
    assert [o.allowed for o in await redis_store.apply(checks(redis_store.prefix, "tpp-1", as_quota))] == [True]
    assert [o.allowed for o in await redis_store.apply(checks(redis_store.prefix, "tpp-1", as_rate))] == [True]
    assert [o.allowed for o in await redis_store.apply(checks(redis_store.prefix, "tpp-1", as_quota))] == [True]
