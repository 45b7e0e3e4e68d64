"""DPoP ``jti`` replay detection (RFC 9449 §11.1): each (key, jti) is accepted once per window.

The key stored is SHA-256 over (jkt, jti), so one client's jti cannot block another's and a long
jti costs no more than a short one (§11.1 "store only a hash thereof"). Two backends:

* ``MemoryReplayStore``: one process only, bounded in entries and TTL;
* ``RedisReplayStore``: shared by every replica and worker; one atomic ``SET key 1 NX PX ttl``
  per proof (never get-then-set), pooled connections, short timeouts. Redis unreachable ->
  ``ReplayStoreUnavailableError`` (503), and the pool reconnects by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from ..config.dpop import RedisReplayConfig
from ..errors import ReplayStoreUnavailableError

__all__ = ("MemoryReplayStore", "RedisReplayStore", "ReplayStore", "replay_key")

log = logging.getLogger(__name__)


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


class MemoryReplayStore:
    """Seen keys in insertion order, with expiry. One process only (a config check enforces that).

    With one TTL per store, insertion order is expiry order, so expired entries are dropped from
    the front in amortised O(1). When full, the oldest entry is dropped even if it is still live;
    ``evicted_live`` counts those (size ``max_entries`` above peak proofs per window).
    """

    def __init__(self, *, max_entries: int = 500_000, clock: Callable[[], float] = time.monotonic) -> None:
        # OrderedDict, not dict: popping a plain dict from the front leaves holes that make
        # next(iter(d)) O(n), i.e. quadratic under load.
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._max = max_entries
        self._clock = clock
        self.evicted_live = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        # Nothing to release, and not cleared: a config reload hands this store to the new state,
        # so a proof seen just before a reload is still refused just after it.
        return None

    def first_use_sync(self, key: bytes, ttl_s: int) -> bool:
        now = self._clock()
        entries = self._entries
        expires = entries.get(key)
        if expires is not None and expires > now:
            return False
        if expires is not None:
            del entries[key]  # expired: re-insert at the back to keep expiry order
        # Drop expired entries from the front (at most a few per call once steady).
        for _ in range(8):
            if not entries:
                break
            oldest, oldest_expiry = next(iter(entries.items()))
            if oldest_expiry > now:
                break
            del entries[oldest]
        if len(entries) >= self._max:
            entries.popitem(last=False)
            self.evicted_live += 1
        entries[key] = now + ttl_s
        return True

    async def first_use(self, key: bytes, ttl_s: int) -> bool:
        return self.first_use_sync(key, ttl_s)


class RedisReplayStore:
    """Shared replay store on Redis (standalone, Cluster or Sentinel via ``redis.asyncio``)."""

    def __init__(self, cfg: RedisReplayConfig) -> None:
        self._cfg = cfg
        self._client: Any = None  # redis.asyncio.Redis | RedisCluster (untyped: optional dependency)

    def _connect(self) -> Any:
        try:
            from redis.asyncio import Redis, RedisCluster
            from redis.asyncio.retry import Retry
            from redis.asyncio.sentinel import Sentinel
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - redis is a declared dependency of this backend
            raise RuntimeError("dpop.replay.backend: redis needs the 'redis' package") from exc
        cfg = self._cfg
        common: dict[str, Any] = {
            "socket_connect_timeout": cfg.connect_timeout_s,
            "socket_timeout": cfg.timeout_s,
            # One immediate retry: a pooled connection may be dead after a Redis restart, and the
            # retry reconnects. A SET NX whose reply was lost and is retried reads as a replay:
            # that refuses a request, it never lets one through.
            "retry": Retry(NoBackoff(), 1),
        }
        if cfg.mode == "cluster":
            return RedisCluster.from_url(cfg.url, **common)
        if cfg.mode == "sentinel":
            hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in cfg.sentinels]
            sentinel = Sentinel(hosts, **common)  # type: ignore[no-untyped-call]
            return sentinel.master_for(cfg.service_name or "", max_connections=cfg.max_connections)
        return Redis.from_url(
            cfg.url, max_connections=cfg.max_connections, health_check_interval=30, **common
        )

    async def start(self) -> None:
        """Create the pool. A Redis that is down now is not fatal: requests fail closed until it is back."""
        if self._client is None:
            self._client = self._connect()
        try:
            async with asyncio.timeout(self._cfg.connect_timeout_s + self._cfg.timeout_s):
                await self._client.ping()
        except Exception as exc:  # start-up only: report and go on, requests fail closed meanwhile
            log.warning("DPoP replay store: Redis not reachable at start-up (%s)", type(exc).__name__)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def first_use(self, key: bytes, ttl_s: int) -> bool:
        if self._client is None:
            self._client = self._connect()
        name = self._cfg.key_prefix.encode() + key.hex().encode()
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


def _is_redis_error(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError)
