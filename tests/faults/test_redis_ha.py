"""The DPoP replay store on a real Redis Sentinel failover and a real Redis Cluster.

Topologies come from ``redis_topologies`` (Debian's redis-server / redis-sentinel on free ports,
killed with SIGKILL). The store under test is the gateway's own ``RedisReplayStore`` (redis-py's
Sentinel / Cluster clients) behind the real DPoP ``Binder``, with real signed proofs.

What a failover may lose: Redis replicates asynchronously, so a jti acknowledged by the old
master just before it died may never reach the replica. The replay-store epoch covers that: the
promoted server has another ``run_id``, hence a new epoch, and a proof issued before it is
refused (``dpop_predates_replay_store``), whether or not its jti survived. The tests show both
halves: a replicated jti is still a replay after the failover, and an unused proof signed before
the failover is refused all the same.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.bind import Binder
from gateway.config.dpop import DpopConfig
from gateway.errors import ReplayStoreUnavailableError
from tests.dpop.helpers import check, rejected
from tests.dpop.proofs import Signer, es256

from .redis_topologies import Cluster, SentinelSet, redis_cmd

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

TIMEOUT_S = 0.3
# The bound on one answer while Redis is failing: the store's own bound plus scheduling slack.
BOUND_S = TIMEOUT_S + 2 * TIMEOUT_S + 2.0


def cfg(redis: dict[str, Any]) -> DpopConfig:
    redis = {"key_prefix": f"faults:{uuid.uuid4().hex[:8]}:", "connect_timeout_s": TIMEOUT_S,
             "timeout_s": TIMEOUT_S, **redis}
    return DpopConfig.model_validate({"replay": {"backend": "redis", "redis": redis}})


async def fails_closed_in_bound(binder: Binder, signer: Signer) -> None:
    start = time.monotonic()
    with pytest.raises(ReplayStoreUnavailableError):
        await check(binder, signer.proof(), signer.jkt)
    assert time.monotonic() - start < BOUND_S


async def eventually(attempt: Callable[[], Awaitable[Any]], *, within_s: float = 15.0) -> Any:
    """Retry while the store says unavailable (each try is itself bounded): recovery, no restart."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await attempt()
        except ReplayStoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def next_second() -> None:
    await asyncio.sleep(1.05 - time.time() % 1)


async def test_sentinel_failover_store_follows_the_new_master() -> None:
    topo = await asyncio.to_thread(SentinelSet)
    binder = Binder(cfg({"mode": "sentinel", "sentinels": topo.sentinel_addrs, "service_name": SentinelSet.SERVICE}))
    try:
        await binder.start()
        signer = es256()
        used = signer.proof()
        assert (await check(binder, used, signer.jkt)).type == "dpop"
        # WAIT: the jti is on the replica too (without it, it may be lost with the master: see above).
        assert redis_cmd(topo.master.port, "WAIT", "1", "2000") == 1
        unused_old = signer.proof()
        await next_second()

        topo.kill_master()
        # Master gone, no failover yet: answered, within the bound, closed.
        await fails_closed_in_bound(binder, signer)
        new_port = await asyncio.to_thread(topo.wait_failover)
        assert new_port == topo.replica.port

        # The replicated jti is still a replay on the promoted replica.
        await eventually(lambda: rejected(binder, used, signer.jkt, reason="dpop_replay"))
        # A proof signed before the failover is refused even though its jti was never stored:
        # the promoted server's epoch is newer (the lost-write window is closed).
        await rejected(binder, unused_old, signer.jkt, reason="dpop_predates_replay_store")
        # And new proofs go through: recovered without a restart.
        assert (await check(binder, signer.proof(), signer.jkt)).type == "dpop"
        fresh = signer.proof()
        assert (await check(binder, fresh, signer.jkt)).type == "dpop"
        await rejected(binder, fresh, signer.jkt, reason="dpop_replay")
    finally:
        await binder.close()
        await asyncio.to_thread(topo.close)


def _keys_per_master(topo: Cluster, prefix: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for n in topo.nodes:
        if n.running and b"role:master" in redis_cmd(n.port, "INFO", "replication"):  # type: ignore[operator]
            keys = redis_cmd(n.port, "KEYS", prefix + "*")
            assert isinstance(keys, list)
            out[n.port] = len(keys)
    return out


async def test_cluster_keys_across_slots_moved_and_failover() -> None:
    topo = await asyncio.to_thread(Cluster)
    config = cfg({"mode": "cluster", "url": topo.url})
    prefix = config.replay.redis.key_prefix
    binder = Binder(config)
    try:
        await binder.start()
        signer = es256()
        proofs = [signer.proof() for _ in range(30)]
        for p in proofs:
            assert (await check(binder, p, signer.jkt)).type == "dpop"
        spread = _keys_per_master(topo, prefix)
        # 30 hashed keys over 3 masters: every master holds some (the client follows the slots).
        assert len(spread) == 3 and all(v > 0 for v in spread.values()), spread
        for p in proofs[:10]:
            await rejected(binder, p, signer.jkt, reason="dpop_replay")

        # MOVED: a manual (lossless) failover makes a replica the owner of one master's slots;
        # the client still has the old map, gets -MOVED and follows it.
        victim_key = f"{prefix}x"
        old = topo.master_of(victim_key)
        replica = next(
            n for n in topo.nodes
            if n.running and f"master_port:{old.port}".encode() in redis_cmd(n.port, "INFO", "replication")  # type: ignore[operator]
        )
        assert redis_cmd(replica.port, "CLUSTER", "FAILOVER") == b"OK"
        await asyncio.to_thread(lambda: _wait_role(replica.port, b"role:master"))
        for p in proofs:
            await eventually(functools.partial(rejected, binder, p, signer.jkt, reason="dpop_replay"))

        # SIGKILL a master: requests for its slots fail closed in the bound until a replica is
        # promoted, then everything works again without a restart.
        dead = topo.master_of(victim_key)
        for n in topo.nodes:  # every jti on the replicas before the kill (see the module docstring)
            if n.running and b"role:master" in redis_cmd(n.port, "INFO", "replication"):  # type: ignore[operator]
                redis_cmd(n.port, "WAIT", "1", "2000")
        unused_old = signer.proof()
        await next_second()
        dead.kill()
        await asyncio.to_thread(topo.wait_failover, dead, victim_key)
        for p in proofs:
            await eventually(functools.partial(rejected, binder, p, signer.jkt, reason="dpop_replay"))
        await rejected(binder, unused_old, signer.jkt, reason="dpop_predates_replay_store")
        for _ in range(10):
            assert (await eventually(lambda: check(binder, signer.proof(), signer.jkt))).type == "dpop"
    finally:
        await binder.close()
        await asyncio.to_thread(topo.close)


def _wait_role(port: int, role: bytes, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if role in redis_cmd(port, "INFO", "replication"):  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"port {port} did not become {role!r}")


async def test_sentinel_switch_back_to_a_demoted_master_gets_a_new_epoch() -> None:
    """A master that is demoted without a restart (paused, failed over, back as a replica) and later
    promoted again keeps its run_id: the epoch must still move (its replication id does), or the
    jtis of proofs used on the other master and lost with it would be accepted."""
    topo = await asyncio.to_thread(SentinelSet)
    binder = Binder(cfg({"mode": "sentinel", "sentinels": topo.sentinel_addrs, "service_name": SentinelSet.SERVICE}))
    first, second = topo.master, topo.replica
    try:
        await binder.start()
        signer = es256()
        assert (await check(binder, signer.proof(), signer.jkt)).type == "dpop"
        first.pause()  # alive but silent: after the failover it rejoins as a replica, same run_id
        await asyncio.to_thread(topo.wait_failover)
        first.resume()
        # What the sentinels would do on their next INFO round (up to 10 s later): demote it.
        assert redis_cmd(first.port, "REPLICAOF", "127.0.0.1", str(second.port)) == b"OK"
        await asyncio.to_thread(lambda: _wait_role(first.port, b"master_link_status:up", 20))
        assert (await eventually(lambda: check(binder, signer.proof(), signer.jkt))).type == "dpop"
        signed_on_second = signer.proof()  # may be used on `second` and lost with it
        await next_second()
        await asyncio.sleep(1.0)  # past the epoch recheck (see the module docstring of replay.py)

        second.kill()
        topo.master = second  # wait_failover waits for the sentinels to name another master
        topo.replica = first
        assert await asyncio.to_thread(topo.wait_failover) == first.port
        await eventually(lambda: rejected(binder, signed_on_second, signer.jkt, reason="dpop_predates_replay_store"))
        assert (await eventually(lambda: check(binder, signer.proof(), signer.jkt))).type == "dpop"
    finally:
        await binder.close()
        await asyncio.to_thread(topo.close)
