"""Background tasks owned by a component (JWKS refresh, CRL and file watchers, probes)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ("stop_tasks",)


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each running task and wait until it has finished; ``None`` entries are skipped."""
    running = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
