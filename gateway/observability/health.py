"""Readiness inputs that need I/O, probed in the background so that ``/readyz`` never blocks.

``/readyz`` is true only when the config is loaded, the listeners are up, the pod is not
draining, every stage that reports readiness (``ready``: e.g. the token verifier has its keys) is
ready, and, where the DPoP replay store is Redis, Redis answers a PING. The Redis probe uses its own
small connection built from the same config, so it never competes with request traffic for the
replay store's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..bind.redis_py import redis_py_client
from ..config.dpop import RedisReplayConfig
from ..tasks import stop_tasks

__all__ = ("RedisProbe", "stage_ready")

log = logging.getLogger(__name__)


def stage_ready(stage: object) -> bool:
    """A stage's own readiness: its ``ready`` attribute (bool or method) when it has one, else True."""
    ready = getattr(stage, "ready", None)
    if ready is None:
        return True
    return bool(ready() if callable(ready) else ready)


class RedisProbe:
    """PINGs Redis every ``interval_s``; ``ok`` is the last answer (False until the first one)."""

    def __init__(self, cfg: RedisReplayConfig, *, interval_s: float = 5.0) -> None:
        self._cfg = cfg
        self._interval_s = interval_s
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self.ok = False

    def _connect(self) -> Any:
        return redis_py_client(self._cfg, max_connections=2)  # the replay store's credentials

    async def check(self) -> bool:
        try:
            if self._client is None:
                self._client = self._connect()
            async with asyncio.timeout(self._cfg.connect_timeout_s + self._cfg.timeout_s + 0.5):
                await self._client.ping()
        except Exception as exc:  # any failure means "not ready"; the reason type only, no URL
            if self.ok:
                log.warning("readiness: Redis replay store not reachable (%s)", type(exc).__name__)
            self.ok = False
        else:
            self.ok = True
        return self.ok

    async def _loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._loop(), name="gateway-redis-probe")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()
