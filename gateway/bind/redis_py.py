"""redis-py clients for the Redis the replay store is configured with (``dpop.replay.redis``).

The replay store (Sentinel and Cluster modes), the readiness probe and the revocation deny list
all talk to that Redis with the same settings and credentials; this is the one place that turns
the config into a client. Standalone Redis on the hot path uses ``PipelinedRedis`` instead.
"""

from __future__ import annotations

from typing import Any

from ..config.dpop import RedisReplayConfig

__all__ = ("redis_py_client",)


def redis_py_client(cfg: RedisReplayConfig, *, max_connections: int, retry_once: bool = False) -> Any:
    """A ``redis.asyncio`` client for ``cfg``'s mode (standalone, Sentinel master, Cluster).

    ``max_connections`` bounds the pool (standalone and Sentinel; a Cluster client keeps one pool
    per node). ``retry_once``: one immediate retry, for a pooled connection found dead after a
    Redis restart."""
    try:
        from redis.asyncio import Redis, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.asyncio.sentinel import Sentinel
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - redis is a declared dependency of this backend
        raise RuntimeError("dpop.replay.backend: redis needs the 'redis' package") from exc
    timeouts: dict[str, Any] = {"socket_connect_timeout": cfg.connect_timeout_s, "socket_timeout": cfg.timeout_s}
    common = dict(timeouts)
    if retry_once:
        common["retry"] = Retry(NoBackoff(), 1)
    if cfg.password is not None:  # a password in the URL wins, as redis-py does
        common["password"] = cfg.password.get_secret_value()
    if cfg.mode == "cluster":
        return RedisCluster.from_url(cfg.url, **common)
    if cfg.mode == "sentinel":
        hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in cfg.sentinels]
        sentinel_kwargs = dict(timeouts)
        if cfg.sentinel_password is not None:
            sentinel_kwargs["password"] = cfg.sentinel_password.get_secret_value()
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **common)
        return sentinel.master_for(cfg.service_name or "", max_connections=max_connections)
    return Redis.from_url(cfg.url, max_connections=max_connections, **common)
