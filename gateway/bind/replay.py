"""DPoP ``jti`` replay detection (RFC 9449 §11.1): each (key, jti) is accepted once per window.

The key stored is SHA-256 over (jkt, jti), so one client's jti cannot block another's and a long
jti costs no more than a short one (§11.1 "store only a hash thereof"). Two backends:

* ``MemoryReplayStore``: one process only, bounded in entries and TTL;
* ``RedisReplayStore``: shared by every replica and worker; one atomic ``SET key 1 NX PX ttl``
  per proof (never get-then-set), pipelined on one connection (``redis_client``), short timeouts.
  Redis unreachable, slow or overloaded -> ``ReplayStoreUnavailableError`` (503), and the
  connection is remade by itself when Redis is back.

A store that loses its memory (a Redis restarted empty or flushed, a failover to a replica that
lagged, a restarted gateway process with the memory store) would call a replayed proof "first
use". So each store also says since when it has remembered every key: ``memory_began()``, its
epoch (Unix seconds), and the DPoP verifier refuses proofs issued before it. The memory store's
epoch is its creation. Redis keeps one epoch key per unbroken memory of the primary
(``<key_prefix>epoch:<run_id>:<master_replid>``, ``SET NX`` by whichever gateway reads it first,
no TTL): a restart brings a new ``run_id``, a promotion (failover) a new ``master_replid``, and so
a new epoch; a flush deletes the key. Standalone Redis: the epoch is re-read on every new
connection (a restart or failover always closes it) and at least every second (a flush keeps
it); cluster and sentinel: at least every second, so their failure detection
(``down-after-milliseconds``, ``cluster-node-timeout``) must be longer than that second. A
cluster's epoch follows every primary's (a failover of any shard gives a new epoch).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..config.dpop import RedisReplayConfig
from ..errors import ReplayStoreUnavailableError
from .redis_client import PipelinedRedis, RedisUnavailableError, pack_command
from .redis_py import redis_py_client

__all__ = ("REPLAY_RIDER", "MemoryReplayStore", "RedisReplayStore", "ReplayRider", "ReplayStore", "replay_key")

log = logging.getLogger(__name__)


class ReplayRider(Protocol):
    """Work that rides on the replay check's round trip (``gateway.ratelimit``: the request's rate
    limits, checked in the same Lua script as the ``SET NX``, only when it is a first use)."""

    async def first_use(self, redis: PipelinedRedis, name: bytes, ttl_ms: int) -> bool: ...


# Set by the pipeline around the binding step of one request, when its limits can ride along; read
# only by ``RedisReplayStore.first_use`` on the pipelined (standalone) connection.
REPLAY_RIDER: contextvars.ContextVar[ReplayRider | None] = contextvars.ContextVar("replay_rider", default=None)


def replay_key(jkt: str, jti: str) -> bytes:
    """128 bits of SHA-256 over (jkt, jti): collision-free in practice, small to store."""
    return hashlib.sha256(f"{jkt}\x00{jti}".encode()).digest()[:16]


class ReplayStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def first_use(self, key: bytes, ttl_s: int) -> bool:
        """Record ``key`` for ``ttl_s`` seconds: ``True`` the first time, ``False`` for a replay.

        Raises ``ReplayStoreUnavailableError`` when it cannot tell.
        """
        ...

    async def memory_began(self) -> float:
        """Since when (Unix seconds) this store has remembered every key it was given: the same
        server run as every ``first_use`` answered before this call, or a later one.

        Raises ``ReplayStoreUnavailableError`` when it cannot tell.
        """
        ...


class MemoryReplayStore:
    """Seen keys in time generations. One process only (a config check enforces that).

    Each generation holds the 64-bit fingerprints (the first 8 bytes of ``replay_key``, as ints)
    of the keys first used during ``window / 8`` seconds. A key is found in any generation still
    held; a generation is dropped whole once its newest key is older than the window, so a key is
    remembered for at least the window and at most 1/8 longer. No object per entry beyond one
    int and a slot, and expiry is one table freed at a time instead of an entry at a time.

    A generation is a ``dict`` of fingerprint -> None, not a ``set``: below 50 000 entries a set
    grows its table fourfold and keeps one 16-byte slot per position at <= 60 % load, so a
    generation of ~20 000 keys (2 000 proofs/s) cost ~150 bytes of RSS per key; a dict's compact
    layout (4-byte index, 24-byte entry) costs ~76 (issue 20's soak; tests/dpop/test_replay_memory.py).

    Bounded: beyond ``max_entries`` the oldest generation is dropped even if still live;
    ``evicted_live`` counts the keys dropped that way (size ``max_entries`` above peak proofs per
    window). A 64-bit fingerprint collides with one of n held keys with probability n / 2^64.
    """

    _GENERATIONS = 8

    def __init__(
        self,
        *,
        max_entries: int = 500_000,
        clock: Callable[[], float] = time.monotonic,
        began: float | None = None,
    ) -> None:
        # The epoch (wall clock): nothing seen before this store existed is known to it.
        self._began = time.time() if began is None else began
        self._gens: deque[tuple[int, dict[int, None]]] = deque()  # (generation number, fingerprints), oldest first
        self._size = 0
        self._max = max_entries
        self._clock = clock
        self._window = 0.0
        self._gen_s = 0.0
        self.evicted_live = 0

    def __len__(self) -> int:
        return self._size

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        # Nothing to release, and not cleared: a config reload hands this store to the new state,
        # so a proof seen just before a reload is still refused just after it.
        return None

    def first_use_sync(self, key: bytes, ttl_s: int) -> bool:
        now = self._clock()
        if ttl_s > self._window:
            self._window = float(ttl_s)
            if not self._gen_s:
                self._gen_s = max(self._window / self._GENERATIONS, 0.001)
        gen_s, window, gens = self._gen_s, self._window, self._gens
        # Drop generations whose newest possible key is older than the window.
        while gens and (gens[0][0] + 1) * gen_s + window <= now:
            self._size -= len(gens.popleft()[1])
        fp = int.from_bytes(key[:8], "little")
        for _, seen in gens:
            if fp in seen:
                return False
        number = int(now // gen_s)
        if not gens or gens[-1][0] != number:
            gens.append((number, {}))
        gens[-1][1][fp] = None
        self._size += 1
        if self._size > self._max:
            self._evict(fp)
        return True

    def _evict(self, newest_fp: int) -> None:
        gens = self._gens
        while self._size > self._max and len(gens) > 1:
            dropped = len(gens.popleft()[1])
            self._size -= dropped
            self.evicted_live += dropped
        if self._size > self._max:  # one generation alone overflows: a burst far above max_entries
            self.evicted_live += self._size - 1
            gens[-1][1].clear()
            gens[-1][1][newest_fp] = None  # the key just accepted is still refused if replayed
            self._size = 1

    async def first_use(self, key: bytes, ttl_s: int) -> bool:
        return self.first_use_sync(key, ttl_s)

    async def memory_began(self) -> float:
        return self._began


class RedisReplayStore:
    """Shared replay store on Redis.

    Standalone Redis (``redis://``, ``rediss://``, ``unix://``): ``PipelinedRedis``, one pipelined
    connection per process with hiredis parsing: a quarter of ``redis.asyncio``'s CPU per proof
    one at a time, a tenth or less when proofs arrive together (benchmarks/micro.py).
    Cluster and Sentinel: ``redis.asyncio``'s clients, which know the topology.
    """

    _EPOCH_RECHECK_S = 1.0

    def __init__(self, cfg: RedisReplayConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._clock = clock
        # The epoch last read, the connection it was read on (standalone) and until when to trust it.
        self._epoch: float | None = None
        self._epoch_connection = 0
        self._epoch_until = 0.0
        self._epoch_task: asyncio.Future[float] | None = None
        self._pipelined: PipelinedRedis | None = None
        self._client: Any = None  # redis.asyncio RedisCluster | Redis (Sentinel), untyped
        self._prefix = cfg.key_prefix.encode()
        # The packed tail of "SET <prefix+hex> 1 NX PX <ms>" for the last TTL (one TTL per config).
        self._tail_ttl = -1
        self._tail = b""

    def _connect_pipelined(self) -> PipelinedRedis:
        cfg = self._cfg
        return PipelinedRedis.from_url(
            cfg.url, connect_timeout_s=cfg.connect_timeout_s, timeout_s=cfg.timeout_s, max_in_flight=cfg.max_in_flight,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
        )

    def _connect_redis_py(self) -> Any:
        # One immediate retry: a pooled connection may be dead after a Redis restart, and the
        # retry reconnects. A SET NX whose reply was lost and is retried reads as a replay: that
        # refuses a request, it never lets one through.
        return redis_py_client(self._cfg, max_connections=self._cfg.max_connections, retry_once=True)

    def _open(self) -> None:
        if self._cfg.mode == "standalone":
            self._pipelined = self._connect_pipelined()
        else:
            self._client = self._connect_redis_py()

    async def start(self) -> None:
        """Connect. A Redis that is down now is not fatal: requests fail closed until it is back."""
        if self._pipelined is None and self._client is None:
            self._open()
        try:
            async with asyncio.timeout(self._cfg.connect_timeout_s + self._cfg.timeout_s):
                if self._pipelined is not None:
                    await self._pipelined.ping()
                else:
                    await self._client.ping()
                # Establish the epoch now (SET NX): a fresh Redis's memory begins at the first
                # gateway's start, not at the first proof it records, which would refuse every
                # proof or nonce issued in between (by this replica or another).
                await self.memory_began()
        except Exception as exc:  # start-up only: report and go on, requests fail closed meanwhile
            log.warning("DPoP replay store: Redis not reachable at start-up (%s)", type(exc).__name__)

    async def close(self) -> None:
        # A reopened client numbers its connections afresh: the epoch must be read again.
        self._epoch, self._epoch_connection, self._epoch_until = None, 0, 0.0
        pipelined, self._pipelined = self._pipelined, None
        if pipelined is not None:
            await pipelined.close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _set_command(self, key: bytes, ttl_s: int) -> bytes:
        if ttl_s != self._tail_ttl:
            ms = str(ttl_s * 1000).encode()
            self._tail = b"\r\n$1\r\n1\r\n$2\r\nNX\r\n$2\r\nPX\r\n$%d\r\n%b\r\n" % (len(ms), ms)
            self._tail_ttl = ttl_s
        name = self._prefix + key.hex().encode()
        return b"*6\r\n$3\r\nSET\r\n$%d\r\n%b%b" % (len(name), name, self._tail)

    async def first_use(self, key: bytes, ttl_s: int) -> bool:
        pipelined = self._pipelined
        if pipelined is None and self._client is None:
            self._open()
            pipelined = self._pipelined
        if pipelined is not None:
            # Atomic SET NX PX; the client bounds the wait (timeout_s per reply, connect_timeout_s
            # per connection attempt) and the number of commands waiting.
            rider = REPLAY_RIDER.get()
            try:
                if rider is not None:  # the SET NX and the request's rate limits in one script
                    return await rider.first_use(pipelined, self._prefix + key.hex().encode(), ttl_s * 1000)
                reply = await pipelined.execute(self._set_command(key, ttl_s))
            except RedisUnavailableError as exc:
                raise ReplayStoreUnavailableError("replay store unavailable") from exc
            if reply == b"OK":
                return True
            if reply is None:
                return False
            raise ReplayStoreUnavailableError("replay store unavailable: unexpected reply to SET")
        name = self._prefix + key.hex().encode()
        try:
            # Bounded overall, whatever the socket timeouts and the retry add up to.
            async with asyncio.timeout(self._cfg.connect_timeout_s + 2 * self._cfg.timeout_s):
                stored = await self._client.set(name, b"1", nx=True, px=ttl_s * 1000)
        except (TimeoutError, OSError) as exc:
            raise ReplayStoreUnavailableError("replay store unavailable") from exc
        except Exception as exc:
            if _is_redis_error(exc):
                raise ReplayStoreUnavailableError("replay store unavailable") from exc
            raise
        return bool(stored)


    # --- the store's epoch -------------------------------------------------------------------

    async def memory_began(self) -> float:
        pipelined = self._pipelined
        if pipelined is None and self._client is None:
            self._open()
            pipelined = self._pipelined
        epoch = self._epoch
        if (
            epoch is not None
            and time.monotonic() < self._epoch_until
            and (pipelined is None or pipelined.connection_number == self._epoch_connection)
        ):
            return epoch
        task = self._epoch_task
        if task is None:  # single flight: one read however many requests are waiting for it
            task = self._epoch_task = asyncio.ensure_future(self._read_epoch())
            task.add_done_callback(self._epoch_read)
        return await asyncio.shield(task)

    def _epoch_read(self, task: asyncio.Future[float]) -> None:
        if self._epoch_task is task:
            self._epoch_task = None
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter gets it through the shield

    async def _read_epoch(self) -> float:
        try:
            async with asyncio.timeout(self._cfg.connect_timeout_s + 4 * self._cfg.timeout_s):
                if self._pipelined is not None:
                    epoch, connection = await self._read_epoch_pipelined(self._pipelined)
                else:
                    epoch, connection = await self._read_epoch_redis_py(), 0
        except ReplayStoreUnavailableError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError | OSError | RedisUnavailableError) or _is_redis_error(exc):
                raise ReplayStoreUnavailableError("replay store unavailable: cannot read its epoch") from exc
            raise
        if self._epoch is not None and epoch != self._epoch:
            log.warning("DPoP replay store: Redis lost its memory (restart, failover or flush); "
                        "proofs issued before %d are refused", int(epoch))
        self._epoch, self._epoch_connection = epoch, connection
        self._epoch_until = time.monotonic() + self._EPOCH_RECHECK_S
        return epoch

    def _epoch_commands(self, history: bytes) -> tuple[bytes, bytes]:
        key = self._prefix + b"epoch:" + history
        return key, str(int(self._clock())).encode()

    async def _read_epoch_pipelined(self, pipelined: PipelinedRedis) -> tuple[float, int]:
        # INFO, then SET NX + GET, all on one connection: one server run (a restart or failover
        # in between closes the connection, and then we try again).
        for _ in range(3):
            (server, replication), first = await pipelined.execute_together(
                pack_command(b"INFO", b"server"), pack_command(b"INFO", b"replication")
            )
            history = _history(_info_field(server, b"run_id"), _info_field(replication, b"master_replid"))
            key, now = self._epoch_commands(history)
            (_, value), second = await pipelined.execute_together(
                pack_command(b"SET", key, now, b"NX"), pack_command(b"GET", key)
            )
            if first == second:
                return _epoch_value(value), second
        raise ReplayStoreUnavailableError("replay store unavailable: Redis keeps reconnecting")

    async def _read_epoch_redis_py(self) -> float:
        kw: dict[str, Any] = {}
        if self._cfg.mode == "cluster":
            # Every primary, named explicitly: redis-py sends a bare INFO to one default node, and
            # then a failover of any other shard (the one that lost the jtis) left the epoch as it was.
            from redis.asyncio import RedisCluster

            kw["target_nodes"] = RedisCluster.PRIMARIES
        server: Any = await self._client.info("server", **kw)
        replication: Any = await self._client.info("replication", **kw)
        # Cluster: one answer per primary (a dict of dicts); any primary's new history loses
        # that shard's keys, so the epoch follows the set of them.
        if isinstance(server, dict) and "run_id" not in server:
            pairs = sorted(
                (str(v.get("run_id", "")), str(replication.get(node, {}).get("master_replid", "")))
                for node, v in server.items() if isinstance(v, dict)
            )
        else:
            pairs = [(str(server.get("run_id", "")), str(replication.get("master_replid", "")))]
        histories = [_history(r.encode(), m.encode()) for r, m in pairs]
        if not histories:
            raise ReplayStoreUnavailableError("replay store unavailable: no run_id in INFO")
        history = histories[0] if len(histories) == 1 else hashlib.sha256(b",".join(histories)).hexdigest().encode()
        key, now = self._epoch_commands(history)
        await self._client.set(key, now, nx=True)
        return _epoch_value(await self._client.get(key))


def _info_field(info: Any, name: bytes) -> bytes:
    """One field of a raw ``INFO`` reply (b"" when absent)."""
    if isinstance(info, bytes):
        prefix = name + b":"
        for line in info.splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    return b""


def _history(run_id: bytes, replid: bytes) -> bytes:
    """What names one unbroken memory of a Redis primary: its ``run_id`` (new at every start) and
    its ``master_replid`` (new at every promotion: a replica made primary, by Sentinel, a cluster
    failover or REPLICAOF NO ONE, starts a new replication history). run_id alone came back when a
    former primary that had been demoted without a restart was promoted again, with its old
    epoch key still in the data: the jtis it missed meanwhile were then not covered."""
    if not (run_id and run_id.isalnum() and len(run_id) <= 64):
        raise ReplayStoreUnavailableError("replay store unavailable: no run_id in INFO")
    if replid and not (replid.isalnum() and len(replid) <= 64):
        raise ReplayStoreUnavailableError("replay store unavailable: malformed master_replid in INFO")
    # Redis < 4 has no replication id: its run_id alone, as before.
    return run_id + b":" + replid if replid else run_id


def _epoch_value(value: Any) -> float:
    try:
        return float(int(value))
    except (TypeError, ValueError):
        # Someone else's value under our key: refuse (fail closed), never guess.
        raise ReplayStoreUnavailableError("replay store unavailable: its epoch key holds no time") from None


def _is_redis_error(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError)
