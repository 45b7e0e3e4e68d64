"""``dpop.replay.redis.password``: the Redis password apart from the URL, so that a deployment can
keep it in a Secret (the Helm chart's ``redis.passwordSecret``) while the URL sits in the
ConfigMap. A real redis-server with ``requirepass``."""

from __future__ import annotations

import os

import pytest

from gateway.bind.replay import RedisReplayStore
from gateway.config import parse_config
from gateway.config.dpop import RedisReplayConfig
from gateway.errors import ReplayStoreUnavailableError
from tests.redis_fixture import RedisProcess


async def test_password_field_authenticates(own_redis: RedisProcess) -> None:
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.config_set("requirepass", "s3cret-pw")
    await admin.aclose()
    good = RedisReplayStore(RedisReplayConfig(url=own_redis.url, password="s3cret-pw"))
    bad = RedisReplayStore(RedisReplayConfig(url=own_redis.url, password="wrong"))
    none = RedisReplayStore(RedisReplayConfig(url=own_redis.url))
    try:
        key = os.urandom(16)
        assert await good.first_use(key, 30)
        assert not await good.first_use(key, 30)
        await good.memory_began()
        # /readyz's Redis probe uses the same credentials.
        from gateway.observability.health import RedisProbe

        probe = RedisProbe(RedisReplayConfig(url=own_redis.url, password="s3cret-pw"))
        assert await probe.check()
        await probe.close()
        for store in (bad, none):
            with pytest.raises(ReplayStoreUnavailableError):
                await store.first_use(os.urandom(16), 30)
    finally:
        for store in (good, bad, none):
            await store.close()


def test_password_comes_from_the_environment_and_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD", "pw-from-secret")
    cfg = parse_config("""
dpop:
  replay: {backend: redis, redis: {url: "redis://redis:6379/0", password: "${GATEWAY_REDIS_PASSWORD}"}}
routes:
  - {id: r, match: {path_prefix: /}, upstream: "http://127.0.0.1:9", auth: none}
""")
    redis = cfg.dpop.replay.redis
    assert redis.password is not None and redis.password.get_secret_value() == "pw-from-secret"
    assert "pw-from-secret" not in repr(cfg) and "pw-from-secret" not in str(redis)
