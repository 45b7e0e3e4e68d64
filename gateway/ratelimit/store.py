"""Where limit state lives: Redis (one Lua script per check, shared by every replica) or this process.

Why our own script and not the ``limits`` library (PyPI, async Redis storage): ``limits`` checks
one limit per round trip (``hit`` per rate-limit item, a moving or fixed window; no GCRA in its
async storage), cannot check "all of these limits or none" atomically, and runs on its own Redis
client, so it could not share a write with the DPoP replay store's ``SET NX`` (issue #18: no extra
round trip on a DPoP route). Here every limit a request is subject to is checked in ONE
``EVALSHA`` (all or nothing: a request refused by one limit consumes none of the others), sent on
the replay store's pipelined connection (``bind.redis_client``), with the server's clock
(``TIME``), so replicas with skewed clocks still agree.

Keys are ``<prefix>{<tag>}:<limit id>:<g|w>``: the tag is a hash of the key's parts, so the limits of
one request that share a key (a per-second burst and a daily quota on ``client_id``) share a
cluster slot and one script call; in cluster mode, limits with different keys go as one call per tag.

Algorithms (times in microseconds inside the script):

* GCRA (``rate``/``per_s``/``burst``): the key holds the theoretical arrival time (TAT). A
  request is allowed when ``max(TAT, now) + T - now <= burst * T`` (``T`` = ``per_s / rate``);
  then TAT advances by ``T``. O(1) state, smooth, no window edges.
* Fixed window (``quota``/``window_s``): the key holds (window start, count); windows are aligned
  on the Unix epoch (UTC days for 86400).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import LRUCache

from ..bind.redis_client import PipelinedRedis, RedisUnavailableError, pack_command
from ..config.dpop import RedisReplayConfig
from ..config.ratelimit import LimitConfig

__all__ = (
    "LIMIT_SCRIPT", "REPLAY_AND_LIMIT_SCRIPT", "Check", "LimitStore", "LimitStoreUnavailableError",
    "LocalLimitStore", "Outcome", "RedisLimitStore", "limit_args", "outcomes", "packed_tail",
    "replay_and_limit_command",
    "storage_key",
)


class LimitStoreUnavailableError(Exception):
    """The store gave no answer (Redis unreachable, slow, or an error reply)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One limit applied to one request: the limit and the storage key of its bucket."""

    limit: LimitConfig
    key: bytes
    tag: bytes


@dataclass(slots=True)  # not frozen: made on every limited request, and a frozen init costs more
class Outcome:
    limit: LimitConfig
    allowed: bool
    remaining: int
    retry_after_s: float  # 0 when allowed
    reset_s: float  # until the bucket is full (GCRA) or the window ends


def storage_key(prefix: bytes, limit: LimitConfig, parts: Sequence[str]) -> tuple[bytes, bytes]:
    """(key, tag) for ``limit`` and the values of its key parts."""
    raw = "\x00".join(f"{name}={value}" for name, value in zip(limit.key, parts, strict=True))
    tag = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:20].encode()
    # The algorithm is part of the name: a limit reloaded as the other kind starts afresh instead
    # of meeting a value of the wrong type (a window's hash lives up to a day).
    kind = b":w" if limit.quota is not None else b":g"
    return prefix + b"{" + tag + b"}:" + limit.id.encode() + kind, tag


def limit_args(limit: LimitConfig) -> tuple[bytes, bytes, bytes]:
    """The script's three arguments for ``limit``: kind, and two integers (microseconds or counts)."""
    if limit.quota is not None:
        return b"w", str(limit.quota).encode(), str(int(limit.window_s or 1) * 1_000_000).encode()
    interval = max(1, round(limit.per_s * 1_000_000 / float(limit.rate or 1)))
    return b"g", str(interval).encode(), str(interval * limit.capacity).encode()


# The limits, after k0 other keys and a0 - 1 other arguments: KEYS, one per limit; ARGV[a0]: "c"
# consume / "p" peek; then kind, a, b per limit. Returns 4 integers per limit: allowed (1/0),
# remaining, retry-after (us), reset (us).
_LIMITS_BODY = b"""
local peek = ARGV[a0] == 'p'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, put, ok = {}, {}, true
for i = 1, #KEYS - k0 do
  local key = KEYS[k0 + i]
  local kind, a, b = ARGV[a0 + 3 * i - 2], tonumber(ARGV[a0 + 3 * i - 1]), tonumber(ARGV[a0 + 3 * i])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local ahead = tat + a - now
    if ahead > b then
      ok = false
      out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = ahead - b; out[#out + 1] = tat - now
    else
      put[i] = {tat + a, ahead}
      out[#out + 1] = 1; out[#out + 1] = math.floor((b - ahead) / a); out[#out + 1] = 0; out[#out + 1] = ahead
    end
  else
    local start = now - (now % b)
    local w = redis.call('HMGET', key, 'w', 'c')
    local used = 0
    if tonumber(w[1]) == start then used = tonumber(w[2]) end
    local reset = start + b - now
    if used + 1 > a then
      ok = false
      out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = reset; out[#out + 1] = reset
    else
      put[i] = {start, reset, used + 1}
      out[#out + 1] = 1; out[#out + 1] = a - used - 1; out[#out + 1] = 0; out[#out + 1] = reset
    end
  end
end
if ok and not peek then
  for i, v in pairs(put) do
    if v[3] == nil then
      redis.call('SET', KEYS[k0 + i], string.format('%d', v[1]), 'PX', math.ceil(v[2] / 1000) + 1000)
    else
      redis.call('HSET', KEYS[k0 + i], 'w', string.format('%d', v[1]), 'c', v[3])
      redis.call('PEXPIRE', KEYS[k0 + i], math.ceil(v[2] / 1000) + 1000)
    end
  end
end
return out
"""
LIMIT_SCRIPT = b"local k0, a0 = 0, 1\n" + _LIMITS_BODY
# A DPoP request: KEYS[1] is the proof's replay key, ARGV[1] its TTL (ms). A replay (the key
# exists) returns nil and consumes no limit; a first use records it, then checks the limits.
REPLAY_AND_LIMIT_SCRIPT = (
    b"if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return false end\n"
    b"local k0, a0 = 1, 2\n" + _LIMITS_BODY
)
LIMIT_SHA = hashlib.sha1(LIMIT_SCRIPT).hexdigest().encode()  # noqa: S324 - Redis names scripts by SHA-1
REPLAY_AND_LIMIT_SHA = hashlib.sha1(REPLAY_AND_LIMIT_SCRIPT).hexdigest().encode()  # noqa: S324


# The fixed parts of the replay-and-limit command, packed once per shape (it is on the hot path).
_PACKED: dict[tuple[Any, ...], bytes] = {}


def _packed_head(n_keys: int, sha: bool) -> bytes:
    head = _PACKED.get(("head", n_keys, sha))
    if head is None:
        script = REPLAY_AND_LIMIT_SHA if sha else REPLAY_AND_LIMIT_SCRIPT
        n_args = 3 + n_keys + 2 + 3 * (n_keys - 1)
        head = b"*%d\r\n" % n_args + pack_command(b"EVALSHA" if sha else b"EVAL", script, b"%d" % n_keys)[
            len(b"*3\r\n"):]
        _PACKED[("head", n_keys, sha)] = head
    return head


def packed_tail(ttl_ms: int, limits: Sequence[LimitConfig]) -> bytes:
    """The arguments after the keys: the replay TTL, "consume", and each limit's parameters."""
    args = [b"%d" % ttl_ms, b"c"]
    for lim in limits:
        args.extend(limit_args(lim))
    return pack_command(*args)[len(b"*%d\r\n" % len(args)):]


def replay_and_limit_command(
    name: bytes, ttl_ms: int, checks: Sequence[Check], *, sha: bool = True, tail: bytes | None = None
) -> bytes:
    """The DPoP ``SET NX`` of ``name`` and the limits of ``checks``, as one EVALSHA (or EVAL).
    ``tail``: ``packed_tail`` of these limits, when the caller keeps it."""
    parts = [_packed_head(len(checks) + 1, sha), b"$%d\r\n%b\r\n" % (len(name), name)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(c.key), c.key) for c in checks)
    parts.append(tail if tail is not None else packed_tail(ttl_ms, [c.limit for c in checks]))
    return b"".join(parts)


def outcomes(checks: Sequence[Check], reply: Any) -> list[Outcome]:
    return _outcomes(checks, reply)


def _outcomes(checks: Sequence[Check], reply: Any) -> list[Outcome]:
    if not isinstance(reply, list) or len(reply) != 4 * len(checks):
        raise LimitStoreUnavailableError("unexpected reply from the limit script")
    out = []
    for n, check in enumerate(checks):
        allowed, remaining, retry_us, reset_us = reply[4 * n: 4 * n + 4]  # integers (hiredis)
        out.append(Outcome(check.limit, allowed == 1, max(0, remaining), retry_us / 1e6, max(0, reset_us) / 1e6))
    return out


class LimitStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, checks: Sequence[Check], *, peek: bool = False) -> list[Outcome]:
        """Check every limit; consume one unit of each only if all allow (and not ``peek``).

        Raises ``LimitStoreUnavailableError`` when it cannot tell."""
        ...


class RedisLimitStore:
    """Limits in Redis. Standalone: the pipelined client (one connection per process, commands
    issued together leave together). Cluster / Sentinel: redis-py, one script call per key tag."""

    def __init__(self, cfg: RedisReplayConfig, *, pipelined: PipelinedRedis | None = None) -> None:
        self._cfg = cfg
        self.prefix = cfg.key_prefix.encode()
        self._pipelined = pipelined
        self._owns = pipelined is None
        self._client: Any = None
        self._script: Any = None  # redis-py's Script (cluster / sentinel): EVALSHA, EVAL on NOSCRIPT

    @property
    def pipelined(self) -> PipelinedRedis | None:
        return self._pipelined

    def _open(self) -> None:
        cfg = self._cfg
        if cfg.mode == "standalone":
            self._pipelined = PipelinedRedis.from_url(
                cfg.url, connect_timeout_s=cfg.connect_timeout_s, timeout_s=cfg.timeout_s,
                max_in_flight=cfg.max_in_flight,
                password=cfg.password.get_secret_value() if cfg.password is not None else None,
            )
        else:
            from ..bind.redis_py import redis_py_client

            self._client = redis_py_client(cfg, max_connections=cfg.max_connections, retry_once=False)

    async def start(self) -> None:
        if self._pipelined is None and self._client is None:
            self._open()

    async def close(self) -> None:
        pipelined, self._pipelined = self._pipelined, None
        if pipelined is not None and self._owns:
            await pipelined.close()
        client, self._client = self._client, None
        self._script = None
        if client is not None:
            await client.aclose()

    @staticmethod
    def command(checks: Sequence[Check], *, peek: bool = False, sha: bool = True) -> bytes:
        args: list[bytes] = [b"EVALSHA" if sha else b"EVAL", LIMIT_SHA if sha else LIMIT_SCRIPT,
                             str(len(checks)).encode()]
        args.extend(c.key for c in checks)
        args.append(b"p" if peek else b"c")
        for c in checks:
            args.extend(limit_args(c.limit))
        return pack_command(*args)

    async def apply(self, checks: Sequence[Check], *, peek: bool = False) -> list[Outcome]:
        if not checks:
            return []
        if self._pipelined is None and self._client is None:
            self._open()
        pipelined = self._pipelined
        if pipelined is not None:
            try:
                try:
                    reply = await pipelined.execute(self.command(checks, peek=peek))
                except RedisUnavailableError as exc:
                    if "NOSCRIPT" not in str(exc):
                        raise
                    # First use on this Redis (or after a restart / SCRIPT FLUSH): EVAL loads it.
                    reply = await pipelined.execute(self.command(checks, peek=peek, sha=False))
            except RedisUnavailableError as exc:
                raise LimitStoreUnavailableError(str(exc)) from exc
            return _outcomes(checks, reply)
        return await self._apply_redis_py(checks, peek)

    async def _apply_redis_py(self, checks: Sequence[Check], peek: bool) -> list[Outcome]:
        import asyncio

        from redis.exceptions import RedisError

        groups: dict[bytes, list[Check]] = {}
        for c in checks:
            groups.setdefault(c.tag, []).append(c)
        script = self._script
        if script is None:
            script = self._script = self._client.register_script(LIMIT_SCRIPT)

        async def one(group: list[Check]) -> Any:
            args: list[bytes] = [b"p" if peek else b"c"]
            for c in group:
                args.extend(limit_args(c.limit))
            return await script(keys=[c.key for c in group], args=args)

        try:
            async with asyncio.timeout(self._cfg.connect_timeout_s + 2 * self._cfg.timeout_s):
                replies = await asyncio.gather(*(one(g) for g in groups.values()))
        except (TimeoutError, OSError, RedisError) as exc:
            raise LimitStoreUnavailableError(type(exc).__name__) from exc
        by_key: dict[bytes, Outcome] = {}
        for group, reply in zip(groups.values(), replies, strict=True):
            for outcome, c in zip(_outcomes(group, reply), group, strict=True):
                by_key[c.key] = outcome
        # Across tags the calls are not one transaction: a refusal by one group after another
        # consumed is possible in cluster mode (documented); the tightest still wins.
        return [by_key[c.key] for c in checks]


class LocalLimitStore:
    """The same algorithms in this process (single-replica setups, or tests). Bounded: the least
    recently used keys are forgotten beyond ``max_keys`` (a forgotten bucket starts full)."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.prefix = b"local:"
        self._clock = clock
        # key -> GCRA TAT (float seconds) or (window start, count)
        self._state: LRUCache[bytes, Any] = LRUCache(maxsize=max_keys)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None  # kept across reloads by the state that inherits it

    async def apply(self, checks: Sequence[Check], *, peek: bool = False) -> list[Outcome]:
        return self.apply_sync(checks, peek=peek)

    def apply_sync(self, checks: Sequence[Check], *, peek: bool = False) -> list[Outcome]:
        now = self._clock()
        out: list[Outcome] = []
        put: list[tuple[bytes, Any]] = []
        for c in checks:
            limit = c.limit
            if limit.quota is not None:
                window = float(limit.window_s or 1)
                start = now - math.fmod(now, window)
                seen = self._state.get(c.key)
                used = seen[1] if isinstance(seen, tuple) and seen[0] == start else 0
                reset = start + window - now
                if used + 1 > limit.quota:
                    out.append(Outcome(limit, False, 0, reset, reset))
                else:
                    put.append((c.key, (start, used + 1)))
                    out.append(Outcome(limit, True, limit.quota - used - 1, 0.0, reset))
            else:
                interval = limit.per_s / float(limit.rate or 1)
                tolerance = interval * limit.capacity
                seen = self._state.get(c.key)
                tat = max(seen if isinstance(seen, float) else now, now)
                ahead = tat + interval - now
                if ahead > tolerance + 1e-9:
                    out.append(Outcome(limit, False, 0, ahead - tolerance, tat - now))
                else:
                    put.append((c.key, tat + interval))
                    out.append(Outcome(limit, True, int((tolerance - ahead) / interval + 1e-9), 0.0, ahead))
        if not peek and all(o.allowed for o in out):
            for key, value in put:
                self._state[key] = value
        return out
