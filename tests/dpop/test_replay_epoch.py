"""A replay store that lost its memory never accepts a proof it might have seen (issue #13 finding 12).

Each store knows since when it has remembered every jti ("memory began", its epoch): a Redis
store keeps it in Redis (one key per Redis server run, set NX by whichever gateway notices
first), the in-memory store has its creation time. A proof whose ``iat`` (or, with a valid
server nonce, the nonce's time) predates the epoch is refused: it may have been used against the
memory that is gone. Real redis-servers started by the tests, restarted empty and flushed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.bind import Binder
from gateway.config.dpop import DpopConfig
from gateway.errors import UseDpopNonceError
from tests.redis_fixture import RedisProcess

from .helpers import check, rejected
from .proofs import Signer

PREDATES = "dpop_predates_replay_store"


def redis_cfg(url: str, prefix: str = "ep:", **over: Any) -> DpopConfig:
    return DpopConfig.model_validate({"replay": {"backend": "redis", "redis": {"url": url, "key_prefix": prefix}},
                                      **over})


def restart(redis: RedisProcess) -> None:
    """Stop and start again, empty (the test's servers have no persistence)."""
    redis.stop()
    redis.start()


async def let_the_client_notice() -> None:
    """Give the event loop a moment to see the old connection closed (else the first command
    after the restart fails with 503 instead of reconnecting)."""
    await asyncio.sleep(0.1)


async def next_second() -> None:
    """Epochs are whole seconds (like most clients' iat): make sure the next one is a new second."""
    await asyncio.sleep(1.05 - time.time() % 1)


async def test_redis_restarted_empty_refuses_a_proof_used_before(own_redis: RedisProcess, k1: Signer) -> None:
    binder = Binder(redis_cfg(own_redis.url))
    await binder.start()
    try:
        used = k1.proof()
        assert (await check(binder, used, k1.jkt)).type == "dpop"
        unused_old = k1.proof()  # signed before the restart, never sent: just as unknowable
        await next_second()
        restart(own_redis)  # every jti is gone
        await let_the_client_notice()
        # Before the fix the empty store said "first use" and the replay passed.
        await rejected(binder, used, k1.jkt, reason=PREDATES)
        await rejected(binder, unused_old, k1.jkt, reason=PREDATES)
        fresh = k1.proof()
        assert (await check(binder, fresh, k1.jkt)).type == "dpop"
        await rejected(binder, fresh, k1.jkt, reason="dpop_replay")
    finally:
        await binder.close()


async def test_redis_flushed_without_restart(own_redis: RedisProcess, k1: Signer) -> None:
    """FLUSHALL keeps the connection: the epoch is re-read at least every second."""
    import redis.asyncio as aioredis

    binder = Binder(redis_cfg(own_redis.url))
    await binder.start()
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        used = k1.proof()
        assert (await check(binder, used, k1.jkt)).type == "dpop"
        await next_second()
        await admin.flushall()
        await asyncio.sleep(1.1)
        await rejected(binder, used, k1.jkt, reason=PREDATES)
        assert (await check(binder, k1.proof(), k1.jkt)).type == "dpop"
    finally:
        await admin.aclose()
        await binder.close()


async def test_epoch_is_the_stores_not_the_gateways(own_redis: RedisProcess, k1: Signer) -> None:
    """A gateway (re)started against a Redis that kept its memory accepts proofs signed before it
    started: only the store losing its memory moves the epoch. Replicas agree on it (SET NX)."""
    a = Binder(redis_cfg(own_redis.url))
    await a.start()
    b: Binder | None = None
    try:
        assert (await check(a, k1.proof(), k1.jkt)).type == "dpop"
        await next_second()
        signed_before_b = k1.proof()
        await next_second()
        b = Binder(redis_cfg(own_redis.url))
        await b.start()
        assert (await check(b, signed_before_b, k1.jkt)).type == "dpop"
        await rejected(a, signed_before_b, k1.jkt, reason="dpop_replay")
        assert await a.replay.memory_began() == await b.replay.memory_began()
    finally:
        await a.close()
        if b is not None:
            await b.close()


async def test_redis_epoch_unreadable_fails_closed(own_redis: RedisProcess, k1: Signer) -> None:
    from gateway.errors import ReplayStoreUnavailableError

    binder = Binder(redis_cfg(own_redis.url))
    await binder.start()
    try:
        assert (await check(binder, k1.proof(), k1.jkt)).type == "dpop"
        own_redis.stop()
        with pytest.raises(ReplayStoreUnavailableError):
            await check(binder, k1.proof(), k1.jkt)
    finally:
        await binder.close()


async def test_memory_store_restarted_refuses_older_proofs(k1: Signer) -> None:
    """The in-memory store's memory begins when the process does: a restarted gateway refuses a
    proof signed before it started (it may have been used on the process before), and accepts
    fresh ones at once."""
    before = Binder(DpopConfig())
    used = k1.proof()
    assert (await check(before, used, k1.jkt)).type == "dpop"
    await next_second()
    after = Binder(DpopConfig())  # the restarted process: a new, empty store
    await rejected(after, used, k1.jkt, reason=PREDATES)
    assert (await check(after, k1.proof(), k1.jkt)).type == "dpop"


async def test_nonce_predating_the_store_gets_a_fresh_nonce(own_redis: RedisProcess, k1: Signer) -> None:
    """With server nonces, freshness comes from the nonce (our clock): a nonce issued before the
    store's memory began is answered with use_dpop_nonce and a new nonce, with which the client
    recovers at once."""
    cfg = redis_cfg(own_redis.url, nonce={"secrets": ["n" * 40]})
    binder = Binder(cfg)
    await binder.start()
    try:
        exc = await rejected(binder, k1.proof(), k1.jkt, error=UseDpopNonceError, require_nonce=True)
        old_nonce = exc.nonce  # type: ignore[attr-defined]
        used = k1.proof(nonce=old_nonce)
        assert (await check(binder, used, k1.jkt, require_nonce=True)).type == "dpop"
        await next_second()
        restart(own_redis)
        await let_the_client_notice()
        # A new proof (fresh iat) with the old nonce: the nonce still decides freshness.
        exc = await rejected(binder, k1.proof(nonce=old_nonce), k1.jkt, error=UseDpopNonceError,
                             reason=PREDATES, require_nonce=True)
        await rejected(binder, used, k1.jkt, error=UseDpopNonceError, reason=PREDATES, require_nonce=True)
        new_nonce = exc.nonce  # type: ignore[attr-defined]
        assert (await check(binder, k1.proof(nonce=new_nonce), k1.jkt, require_nonce=True)).type == "dpop"
    finally:
        await binder.close()


async def test_epoch_is_set_when_the_store_starts_not_at_its_first_proof(own_redis: RedisProcess, k1: Signer) -> None:
    """A fresh Redis's epoch is the first gateway's start, not the first proof it accepts: a
    proof signed after the gateway started (a nonce issued by a replica, a client's own iat)
    but before any proof was recorded must pass. (Found flaky in CI: the nonce from replica A,
    issued a second before replica B recorded the first proof, was refused as predating.)"""
    a = Binder(redis_cfg(own_redis.url, prefix="ep-start:"))
    await a.start()
    try:
        await next_second()
        signed_after_start = k1.proof()
        await next_second()
        assert (await check(a, signed_after_start, k1.jkt)).type == "dpop"
    finally:
        await a.close()
