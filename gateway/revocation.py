"""The kill switch behind the admin API (issue #13): deny a signing key or a token, flush an issuer.

One ``Revocation`` per gateway state (built with the verifier, in ``gateway.app``). The runtime
denials (``SharedDenials``) outlive config reloads; the config's ``revocation.deny`` list is the
state's own. Where ``dpop.replay.backend`` is ``redis`` the runtime denials and flush requests
live in Redis, so every worker and replica applies them: each process polls a version counter
every ``revocation.sync_interval_s`` and reloads the (bounded) hashes when it moved. Without
Redis they are per process, and the config file is the durable, fleet-wide way.

Redis layout under ``revocation.redis_key_prefix`` (P): ``P kids`` hash ``issuer\\nkid -> when``,
``P jtis`` hash ``issuer\\njti -> until``, ``P flush`` hash ``issuer -> counter``, ``P version``.
Plain commands, no MULTI: works on a cluster as well (keys may sit in different slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .bind.redis_py import redis_py_client
from .config import GatewayConfig
from .config.dpop import RedisReplayConfig
from .tasks import stop_tasks
from .verify import AccessTokenVerifier
from .verify.denylist import Denials, DenyList, SharedDenials

__all__ = ("DenyListFullError", "Kind", "Revocation", "RevocationStoreError", "UnknownIssuerError", "build_denylist")

log = logging.getLogger("gateway.revocation")

Kind = Literal["kid", "jti"]


class UnknownIssuerError(Exception):
    """No issuer of that name in the running configuration."""


class DenyListFullError(Exception):
    """``max_denied_jtis`` / ``max_denied_kids`` reached (nothing is evicted to make room)."""


class RevocationStoreError(Exception):
    """Redis did not take the change (it is applied in this process only)."""


def build_denylist(cfg: GatewayConfig, previous: object | None, *, clock: Callable[[], float] = time.time) -> DenyList:
    """The deny list for a new state: the file's entries plus the runtime denials carried over."""
    old = getattr(previous, "revocation", None)
    shared = old.denylist.shared if isinstance(old, Revocation) else SharedDenials()
    return DenyList(cfg.revocation.deny, shared=shared, clock=clock)


def _field(issuer: str, value: str) -> bytes:
    return f"{issuer}\n{value}".encode()


def _split(raw: bytes) -> tuple[str, str] | None:
    issuer, sep, value = raw.decode("utf-8", "replace").partition("\n")
    return (issuer, value) if sep else None


def _redis_client(cfg: RedisReplayConfig) -> Any:
    return redis_py_client(cfg, max_connections=4)  # the replay store's Redis and credentials


@dataclass(frozen=True, slots=True)
class Outcome:
    store: Literal["memory", "redis"]
    detail: dict[str, Any]


class Revocation:
    """Admin operations on one state's verifier and deny list; Redis sync when configured."""

    def __init__(self, cfg: GatewayConfig, tokens: AccessTokenVerifier, *, clock: Callable[[], float] = time.time):
        self._cfg = cfg.revocation
        self.tokens = tokens
        self.denylist = tokens.denylist
        self._clock = clock
        replay = cfg.dpop.replay
        self._redis_cfg = replay.redis if replay.backend == "redis" else None
        self.store: Literal["memory", "redis"] = "redis" if self._redis_cfg else "memory"
        self._redis: Any = None
        self._task: asyncio.Task[None] | None = None
        self._seen_version: bytes | None = None
        self._synced = False  # a first successful read only records the flush counters
        # Per state, not shared: a retiring state's sync loop must not consume a flush meant for
        # the current state's caches.
        self._flushes: dict[str, int] = {}
        prefix = self._cfg.redis_key_prefix
        self._k_kids, self._k_jtis = f"{prefix}kids", f"{prefix}jtis"
        self._k_flush, self._k_version = f"{prefix}flush", f"{prefix}version"
        self._k_generation = f"{prefix}generation"

    @property
    def max_jti_ttl_s(self) -> float:
        return self._cfg.max_jti_ttl_s

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._redis_cfg is None:
            return
        self._redis = _redis_client(self._redis_cfg)
        # Denials made before this process started apply from its first request on.
        await self._sync()
        self._task = asyncio.create_task(self._loop(), name="gateway-revocation-sync")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        if self._redis is not None:
            client, self._redis = self._redis, None
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.sync_interval_s)
            await self._sync()

    def _timeout(self) -> asyncio.Timeout:
        assert self._redis_cfg is not None
        return asyncio.timeout(self._redis_cfg.connect_timeout_s + self._redis_cfg.timeout_s + 0.5)

    async def _sync(self) -> None:
        """Reload the shared denials if another process changed them (a failure keeps the last copy).

        Redis may lose the list (restarted without persistence, flushed, failed over to a replica
        that lagged): its ``generation`` key (a random value set by the first writer) is then gone
        or new. A denial is a kill switch, so losing it must not quietly re-allow tokens: this
        process keeps what it knew, merges it with what Redis has and writes it back. Likewise
        the denials Redis did not take while it was down are written once it answers again.
        """
        initial = not self._synced
        shared = self.denylist.shared
        try:
            async with self._timeout():
                version = await self._redis.get(self._k_version)
                generation = await self._redis.get(self._k_generation)
                lost = shared.store_generation is not None and generation != shared.store_generation
                pending = bool(shared.unpublished.kids or shared.unpublished.jtis)
                if version == self._seen_version and not initial and not lost and not pending:
                    return
                kids = await self._redis.hgetall(self._k_kids)
                jtis = await self._redis.hgetall(self._k_jtis)
                flush = await self._redis.hgetall(self._k_flush)
        except Exception as exc:  # keep enforcing the last known denials; the type only, no URL
            log.warning("revocation: cannot read the shared deny list from Redis (%s); keeping the last copy",
                        type(exc).__name__)
            return
        now = self._clock()
        kid_set = {k for k in (_split(f) for f in kids) if k is not None}
        jti_map: dict[tuple[str, str], float | None] = {}
        for f, until in jtis.items():
            key = _split(f)
            with contextlib.suppress(ValueError):
                if key is not None and float(until) > now:
                    jti_map[key] = float(until)
        # What Redis lacks and must get (again): everything we knew if it lost the list, else
        # the denials it refused earlier.
        keep = shared.current if lost else shared.unpublished
        missing_kids = keep.kids - kid_set
        missing_jtis = {k: u for k, u in keep.jtis.items() if k not in jti_map and (u is None or u > now)}
        if lost:
            log.warning("revocation: Redis lost the shared deny list (restart, flush or failover); "
                        "writing back the %d denials this process knows", len(missing_kids) + len(missing_jtis))
        if missing_kids or missing_jtis or generation is None:
            try:
                generation = await self._republish(missing_kids, missing_jtis, now)
            except Exception as exc:
                log.warning("revocation: cannot write the deny list back to Redis (%s); keeping the last copy",
                            type(exc).__name__)
                return
            version = None  # read again next time: our write moved it
        shared.unpublished = Denials()
        shared.store_generation = generation
        self._seen_version = version
        self._synced = True
        shared.replace(Denials(frozenset(kid_set | missing_kids), {**jti_map, **missing_jtis}))
        for raw, count in flush.items():
            issuer = raw.decode("utf-8", "replace")
            try:
                n = int(count)
            except ValueError:
                continue
            previous = self._flushes.get(issuer)
            self._flushes[issuer] = n
            # At start-up only the counters are recorded: there is nothing cached to drop yet.
            if not initial and (previous is None or n > previous) and issuer in self.tokens.issuers:
                log.info("revocation: issuer %s flushed by another process", issuer)
                await self.tokens.flush(issuer)

    async def _republish(self, kids: frozenset[tuple[str, str]] | set[tuple[str, str]],
                         jtis: dict[tuple[str, str], float | None], now: float) -> bytes:
        """Write denials Redis lacks; the generation (made here if there is none yet)."""
        async with self._timeout():
            for issuer, kid in kids:
                await self._redis.hset(self._k_kids, _field(issuer, kid), repr(now))
            for (issuer, jti), until in jtis.items():
                # A config-less runtime jti always has an expiry; None stays as long as allowed.
                until_ = until if until is not None else now + self._cfg.max_jti_ttl_s
                await self._redis.hset(self._k_jtis, _field(issuer, jti), repr(until_))
            generation = await self._generation()
            if kids or jtis:
                await self._redis.incr(self._k_version)
        return generation

    async def _generation(self) -> bytes:
        await self._redis.set(self._k_generation, secrets.token_hex(16), nx=True)
        value: bytes = await self._redis.get(self._k_generation)
        return value

    # -- operations (the admin API) -----------------------------------------------------------

    def _issuer(self, name: str) -> None:
        if name not in self.tokens.issuers:
            raise UnknownIssuerError(name)

    async def flush(self, issuer: str) -> Outcome:
        """Drop the issuer's cached verifications and introspection answers, refetch its JWKS."""
        self._issuer(issuer)
        if self._redis is not None:
            async def publish() -> None:
                n = await self._redis.hincrby(self._k_flush, issuer, 1)
                self._flushes[issuer] = int(n)  # ours: the sync loop need not repeat it
                await self._redis.incr(self._k_version)
            await self._publish(publish)
        loaded = await self.tokens.flush(issuer)
        return Outcome(self.store, {"jwks_loaded": loaded})

    async def deny(self, issuer: str, kind: Kind, value: str, ttl_s: float | None = None) -> Outcome:
        self._issuer(issuer)
        shared = self.denylist.shared
        now = self._clock()
        current = shared.current
        key = (issuer, value)
        if kind == "kid":
            if key not in current.kids and len(current.kids) >= self._cfg.max_denied_kids:
                raise DenyListFullError("kid")
            updated = Denials(current.kids | {key}, current.jtis)
            detail: dict[str, Any] = {}
        else:
            until = now + (ttl_s if ttl_s is not None else self._cfg.default_jti_ttl_s)
            jtis = {k: u for k, u in current.jtis.items() if u is None or u > now}  # expired ones go first
            if key not in jtis and len(jtis) >= self._cfg.max_denied_jtis:
                raise DenyListFullError("jti")
            jtis[key] = until
            updated = Denials(current.kids, jtis)
            detail = {"until": until}
        if self._redis is None:
            shared.replace(updated)
            return Outcome(self.store, detail)

        async def make_room() -> None:
            hash_key, limit = (self._k_kids, self._cfg.max_denied_kids) if kind == "kid" else (
                self._k_jtis, self._cfg.max_denied_jtis)
            if kind == "jti":
                await self._purge_expired_jtis(now)
            if await self._redis.hlen(hash_key) >= limit and not (
                await self._redis.hexists(hash_key, _field(issuer, value))
            ):
                raise DenyListFullError(kind)

        async def publish() -> None:
            if kind == "kid":
                await self._redis.hset(self._k_kids, _field(issuer, value), repr(now))
            else:
                await self._redis.hset(self._k_jtis, _field(issuer, value), repr(detail["until"]))
            await self._redis.incr(self._k_version)
            shared.store_generation = shared.store_generation or await self._generation()

        def unpublished() -> None:
            # Redis failed: this process enforces it at once all the same, and the sync loop
            # writes it to Redis when it answers again (a lost retry must not lose the denial).
            shared.replace(updated)
            pending = shared.unpublished
            if kind == "kid":
                shared.unpublished = Denials(pending.kids | {key}, pending.jtis)
            else:
                shared.unpublished = Denials(pending.kids, {**pending.jtis, key: detail["until"]})

        try:
            await self._publish(make_room)
        except RevocationStoreError:
            unpublished()
            raise
        shared.replace(updated)
        try:
            await self._publish(publish)
        except RevocationStoreError:
            unpublished()
            raise
        return Outcome(self.store, detail)

    async def allow(self, issuer: str, kind: Kind, value: str) -> Outcome:
        """Withdraw a runtime denial (a mistake); the file's entries are withdrawn in the file."""
        self._issuer(issuer)
        shared = self.denylist.shared
        current = shared.current
        key = (issuer, value)
        if kind == "kid":
            updated = Denials(current.kids - {key}, current.jtis)
        else:
            updated = Denials(current.kids, {k: u for k, u in current.jtis.items() if k != key})
        if self._redis is not None:
            async def publish() -> None:
                await self._redis.hdel(self._k_kids if kind == "kid" else self._k_jtis, _field(issuer, value))
                await self._redis.incr(self._k_version)
            await self._publish(publish)
        shared.replace(updated)
        still = (key in self.denylist.config.kids) if kind == "kid" else (key in self.denylist.config.jtis)
        return Outcome(self.store, {"still_denied_by_config": still})

    async def _purge_expired_jtis(self, now: float) -> None:
        entries = await self._redis.hgetall(self._k_jtis)
        expired = []
        for f, until in entries.items():
            try:
                if float(until) <= now:
                    expired.append(f)
            except ValueError:
                expired.append(f)
        if expired:
            await self._redis.hdel(self._k_jtis, *expired)

    async def _publish(self, write: Callable[[], Any]) -> None:
        try:
            async with self._timeout():
                await write()
        except DenyListFullError:
            raise
        except Exception as exc:
            log.error("revocation: Redis did not take the change (%s); applied in this process only",
                      type(exc).__name__)
            raise RevocationStoreError(type(exc).__name__) from None

    def listing(self, limit: int = 10_000) -> dict[str, Any]:
        """The denials in force (at most ``limit`` jtis listed; ``jtis_total`` counts them all)."""
        now = self._clock()
        config, runtime = self.denylist.config, self.denylist.shared.current
        kids = [{"issuer": i, "kid": k, "source": "config"} for i, k in sorted(config.kids)]
        kids += [{"issuer": i, "kid": k, "source": "admin"} for i, k in sorted(runtime.kids)]
        jtis = [
            {"issuer": i, "jti": j, "until": u, "source": source}
            for source, layer in (("config", config), ("admin", runtime))
            for (i, j), u in sorted(layer.jtis.items())
            if u is None or u > now
        ]
        return {"store": self.store, "kids": kids, "jtis": jtis[:limit], "jtis_total": len(jtis)}
