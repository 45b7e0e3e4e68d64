"""The Redis replay store's pipelined client (gateway/bind/redis_client.py) against real redis-servers.

Concurrent SET NX on distinct and on shared keys, Redis paused, stopped mid-pipeline and restarted,
the in-flight bound, cancelled callers, error replies, and the URL settings (password, ACL user, db,
client_name, rediss:// with a private CA and a client certificate, unix://).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.bind.redis_client import PipelinedRedis, RedisEndpoint, RedisUnavailableError, pack_command
from gateway.bind.replay import RedisReplayStore, replay_key
from gateway.config.dpop import RedisReplayConfig
from gateway.errors import ReplayStoreUnavailableError
from tests.redis_fixture import RedisProcess, _free_port


def causes(exc: object) -> str:
    """The reprs along an exception's ``__cause__`` chain."""
    out = []
    while isinstance(exc, BaseException):
        out.append(repr(exc))
        exc = exc.__cause__
    return " <- ".join(out)


def store_for(url: str, prefix: str = "t:", **over: Any) -> RedisReplayStore:
    return RedisReplayStore(RedisReplayConfig(url=url, key_prefix=prefix, **over))


@pytest.fixture
async def admin(own_redis: RedisProcess) -> AsyncIterator[Any]:
    """A redis-py client to steer the test's own Redis (pause it, read keys back)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def test_concurrent_distinct_keys_all_first(redis_url: str, redis_key_prefix: str) -> None:
    """1000 proofs at once (more than one write, more than one reply read): each one is new."""
    store = store_for(redis_url, redis_key_prefix + "pipe:")
    try:
        keys = [os.urandom(16) for _ in range(1000)]
        assert await asyncio.gather(*(store.first_use(k, 30) for k in keys)) == [True] * 1000
        assert await asyncio.gather(*(store.first_use(k, 30) for k in keys[:64])) == [False] * 64
    finally:
        await store.close()


async def test_concurrent_same_key_exactly_one_first(redis_url: str, redis_key_prefix: str) -> None:
    """The same jti sent 50 times at once, for 20 jtis, interleaved, via two stores: one True per key."""
    a, b = store_for(redis_url, redis_key_prefix + "same:"), store_for(redis_url, redis_key_prefix + "same:")
    try:
        keys = [replay_key("jkt", f"jti-{i}") for i in range(20)]
        calls = [(k, s) for k in keys for s in (a, b) for _ in range(25)]
        random.Random(8).shuffle(calls)
        results = await asyncio.gather(*(s.first_use(k, 30) for k, s in calls))
        wins: dict[bytes, int] = {}
        for (k, _), first in zip(calls, results, strict=True):
            wins[k] = wins.get(k, 0) + first
        assert wins == dict.fromkeys(keys, 1)
    finally:
        await a.close()
        await b.close()


async def test_sequential_and_ttl(redis_url: str, redis_key_prefix: str) -> None:
    import redis.asyncio as aioredis

    store = store_for(redis_url, redis_key_prefix + "seq:")
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = os.urandom(16)
        assert await store.first_use(key, 7)
        assert not await store.first_use(key, 7)
        assert 0 < await client.pttl(f"{redis_key_prefix}seq:{key.hex()}") <= 7000
        assert await store.first_use(os.urandom(16), 9)  # a second TTL: its own packed command tail
    finally:
        await client.aclose()
        await store.close()


async def test_paused_redis_times_out_then_recovers(own_redis: RedisProcess, admin: Any) -> None:
    """Redis holds every write: all waiting proofs fail closed after timeout_s; afterwards it works again."""
    store = store_for(own_redis.url, timeout_s=0.2)
    try:
        assert await store.first_use(os.urandom(16), 30)
        await admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        results = await asyncio.gather(*(store.first_use(os.urandom(16), 30) for _ in range(100)),
                                       return_exceptions=True)
        assert all(isinstance(r, ReplayStoreUnavailableError) for r in results)
        assert "timeout" in causes(results[0])
        await admin.execute_command("CLIENT", "UNPAUSE")
        key = os.urandom(16)
        assert await store.first_use(key, 30)  # a new connection; the timed-out one was dropped
        assert not await store.first_use(key, 30)
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await store.close()


async def test_redis_stopped_mid_pipeline_fails_closed_then_reconnects(
    own_redis: RedisProcess, admin: Any
) -> None:
    """Commands sent and unanswered when Redis goes away fail at once (not after the timeout)."""
    store = store_for(own_redis.url, timeout_s=60)
    try:
        assert await store.first_use(os.urandom(16), 30)
        await admin.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        calls = [asyncio.ensure_future(store.first_use(os.urandom(16), 30)) for _ in range(200)]
        await asyncio.sleep(0.05)  # written, waiting for replies
        assert not any(c.done() for c in calls)
        own_redis.stop()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert all(isinstance(r, ReplayStoreUnavailableError) for r in results)
        assert "connection" in causes(results[0]) and "timeout" not in causes(results[0])
        with pytest.raises(ReplayStoreUnavailableError):  # down: reconnecting fails closed too
            await store.first_use(os.urandom(16), 30)
        own_redis.start()
        key = os.urandom(16)
        assert await store.first_use(key, 30)
        assert not await store.first_use(key, 30)
    finally:
        await store.close()


async def test_in_flight_bound(own_redis: RedisProcess, admin: Any) -> None:
    """max_in_flight commands wait; the next ones fail closed at once instead of queueing."""
    store = store_for(own_redis.url, max_in_flight=10, timeout_s=30)
    try:
        assert await store.first_use(os.urandom(16), 30)  # connected
        await admin.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        calls = [asyncio.ensure_future(store.first_use(os.urandom(16), 30)) for _ in range(25)]
        await asyncio.sleep(0.05)
        refused = [c for c in calls if c.done()]
        assert len(refused) == 15
        assert all(isinstance(c.exception(), ReplayStoreUnavailableError) for c in refused)
        assert "in flight" in causes(refused[0].exception())
        await admin.execute_command("CLIENT", "UNPAUSE")
        assert await asyncio.gather(*(c for c in calls if c not in refused)) == [True] * 10
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await store.close()


async def test_cancelled_callers_keep_replies_in_order(own_redis: RedisProcess, admin: Any) -> None:
    """A caller cancelled while its SET is on the wire: its reply is dropped, the others' still match."""
    store = store_for(own_redis.url, timeout_s=30)
    try:
        assert await store.first_use(os.urandom(16), 30)
        await admin.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        keys = [os.urandom(16) for _ in range(6)]
        calls = [asyncio.ensure_future(store.first_use(k, 30)) for k in keys]
        await asyncio.sleep(0.05)
        calls[1].cancel()
        calls[4].cancel()
        await admin.execute_command("CLIENT", "UNPAUSE")
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r for i, r in enumerate(results) if i not in (1, 4)] == [True] * 4
        # The cancelled SETs still ran: those jtis are now used.
        assert await asyncio.gather(*(store.first_use(k, 30) for k in keys)) == [False] * 6
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await store.close()


async def test_error_reply_fails_that_command_only(own_redis: RedisProcess, admin: Any) -> None:
    """-OOM for a SET -> 503 for that proof; the connection stays usable."""
    store = store_for(own_redis.url)
    try:
        assert await store.first_use(os.urandom(16), 30)
        await admin.config_set("maxmemory", "1")
        with pytest.raises(ReplayStoreUnavailableError) as info:
            await store.first_use(os.urandom(16), 30)
        assert "OOM" in causes(info.value)
        await admin.config_set("maxmemory", "0")
        clients_before = (await admin.info("clients"))["connected_clients"]
        assert await store.first_use(os.urandom(16), 30)
        assert (await admin.info("clients"))["connected_clients"] == clients_before
    finally:
        await admin.config_set("maxmemory", "0")
        await store.close()


async def test_password_acl_user_db_and_client_name(own_redis: RedisProcess, admin: Any) -> None:
    """URL settings are read as redis-py reads them: AUTH (password or user), SELECT, CLIENT SETNAME."""
    port = own_redis.port
    await admin.execute_command("ACL", "SETUSER", "gw", "on", ">gw-s3cret-pw", "~t:*", "+set", "+ping",
                                "+select", "+client|setname")
    await admin.config_set("requirepass", "s3cret-pw")
    await admin.execute_command("AUTH", "s3cret-pw")
    key = os.urandom(16)
    store = store_for(f"redis://:s3cret-pw@127.0.0.1:{port}/3?client_name=gw-replay")
    acl = store_for(f"redis://gw:gw-s3cret-pw@127.0.0.1:{port}/4")
    wrong = store_for(f"redis://:not-the-pw@127.0.0.1:{port}/0")
    try:
        assert await store.first_use(key, 30)
        assert not await store.first_use(key, 30)
        assert await admin.execute_command("SELECT", "3")
        assert await admin.exists(f"t:{key.hex()}")
        assert b"name=gw-replay" in await admin.execute_command("CLIENT", "LIST")
        assert await acl.first_use(key, 30)  # db 4: another keyspace
        with pytest.raises(ReplayStoreUnavailableError) as info:
            await wrong.first_use(key, 30)
        chain = causes(info.value)
        assert "WRONGPASS" in chain and "not-the-pw" not in chain
        assert "pw" not in repr(RedisEndpoint.from_url(
            f"redis://gw:gw-s3cret-pw@127.0.0.1:{port}/4", connect_timeout_s=1, timeout_s=1))
    finally:
        for s in (store, acl, wrong):
            await s.close()
        await admin.config_set("requirepass", "")


async def test_client_level_ping_and_close() -> None:
    """A closed client refuses commands; nothing listening -> RedisUnavailableError, not a hang."""
    client = PipelinedRedis(RedisEndpoint(port=_free_port(), connect_timeout_s=0.3, timeout_s=0.3), max_in_flight=8)
    with pytest.raises(RedisUnavailableError, match="cannot connect"):
        await client.ping()
    await client.close()
    with pytest.raises(RedisUnavailableError, match="closed"):
        await client.execute(pack_command(b"PING"))


# --- rediss:// and unix:// need a redis-server started with other options ---


class _Server:
    def __init__(self, args: list[str], ready: Any) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not on PATH")
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.skip("redis-server with these options did not start (built without TLS?)")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def tls_redis(pki: Any) -> Iterator[int]:
    port = _free_port()
    server = _Server(["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(pki.server_cert),
                      "--tls-key-file", str(pki.server_key), "--tls-ca-cert-file", str(pki.ca_pem),
                      "--tls-auth-clients", "yes"], lambda: _listening(port))
    yield port
    server.close()


async def test_rediss_with_private_ca_and_client_certificate(tls_redis: int, pki: Any) -> None:
    """rediss:// keeps redis-py's ssl_* query options: CA file, client cert, hostname check."""
    base = f"rediss://127.0.0.1:{tls_redis}/0"
    good = store_for(f"{base}?ssl_ca_certs={pki.ca_pem}&ssl_certfile={pki.client_a.cert}"
                     f"&ssl_keyfile={pki.client_a.key}")
    untrusted = store_for(f"{base}?ssl_certfile={pki.client_a.cert}&ssl_keyfile={pki.client_a.key}",
                          connect_timeout_s=2)  # system CAs only: the private CA is not trusted
    no_client_cert = store_for(f"{base}?ssl_ca_certs={pki.ca_pem}", connect_timeout_s=2)
    try:
        keys = [os.urandom(16) for _ in range(100)]
        assert await asyncio.gather(*(good.first_use(k, 30) for k in keys)) == [True] * 100
        assert not await good.first_use(keys[0], 30)
        with pytest.raises(ReplayStoreUnavailableError) as info:
            await untrusted.first_use(os.urandom(16), 30)
        assert "SSLCertVerificationError" in causes(info.value)
        with pytest.raises(ReplayStoreUnavailableError):
            await no_client_cert.first_use(os.urandom(16), 30)
    finally:
        for s in (good, untrusted, no_client_cert):
            await s.close()


async def test_unix_socket() -> None:
    path = Path(tempfile.mkdtemp(prefix="gw-sock-")) / "redis.sock"
    server = _Server(["--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700"], path.exists)
    store = store_for(f"unix://{path}?db=2")
    try:
        await store.start()
        key = os.urandom(16)
        assert await store.first_use(key, 30)
        assert not await store.first_use(key, 30)
    finally:
        await store.close()
        server.close()
        shutil.rmtree(path.parent, ignore_errors=True)


async def test_readonly_replica_drops_the_connection(own_redis: RedisProcess, admin: Any) -> None:
    """-READONLY (a failover left us on a replica): 503, and the next command uses a new connection."""

    async def our_client_ids() -> list[bytes]:
        lines = (await admin.execute_command("CLIENT", "LIST")).split(b"\n")
        return [line.split(b" ", 1)[0] for line in lines if b"name=gw-ro" in line]

    store = store_for(own_redis.url + "?client_name=gw-ro")
    try:
        assert await store.first_use(os.urandom(16), 30)
        before = await our_client_ids()
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(_free_port()))  # a master that is not there
        with pytest.raises(ReplayStoreUnavailableError) as info:
            await store.first_use(os.urandom(16), 30)
        assert "READONLY" in causes(info.value)
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        assert await store.first_use(os.urandom(16), 30)
        after = await our_client_ids()
        assert len(before) == len(after) == 1 and before != after
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await store.close()


def test_set_command_is_plain_resp() -> None:
    """The hand-packed SET equals the generic packing (and the key is the hex of the hash)."""
    store = store_for("redis://127.0.0.1:6379/0", prefix="p:")
    key = bytes(range(16))
    for ttl in (75, 310, 75):
        assert store._set_command(key, ttl) == pack_command(
            b"SET", b"p:" + key.hex().encode(), b"1", b"NX", b"PX", str(ttl * 1000).encode())
