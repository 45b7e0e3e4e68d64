"""Fixtures for the dependency-fault suite: the token tests' real TLS authorization server, and
helpers to call the real gateway and read its metrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Pki
from tests.tokens.conftest import auth_server, clock, signing_keys

__all__ = ("access_logged", "auth_server", "call", "clock", "metric", "reason_count", "signing_keys", "timed_call")


async def call(gw: Any, pki: Pki, path: str, headers: dict[str, str] | None = None, *,
               method: str = "GET", data: bytes | None = None, timeout_s: float = 10.0) -> tuple[int, Any, bytes]:
    """One request through the gateway over TLS: status, headers, body."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, s.request(
        method, f"https://localhost:{gw.port}{path}", ssl=pki.client_context(), headers=headers or {}, data=data
    ) as r:
        return r.status, r.headers, await r.read()


async def timed_call(gw: Any, pki: Pki, path: str, headers: dict[str, str] | None = None,
                     **kw: Any) -> tuple[int, Any, bytes, float]:
    start = time.monotonic()
    status, hdrs, body = await call(gw, pki, path, headers, **kw)
    return status, hdrs, body, time.monotonic() - start


def reason_count(gw: Any, *, status: int, reason: str, route: str | None = None) -> float:
    """gateway_requests_total summed over the lines with this status and reason (and route)."""
    total = 0.0
    for line in gw.metrics.render().decode().splitlines():
        if not line.startswith("gateway_requests_total{"):
            continue
        if f'status="{status}"' in line and f'reason="{reason}"' in line and (
            route is None or f'route="{route}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric(gw: Any, prefix: str) -> float:
    """The sum of every sample whose line starts with ``prefix`` (name and labels)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in gw.metrics.render().decode().splitlines()
               if line.startswith(prefix))


async def access_logged(path: Path, reason: str, *, within_s: float = 5.0) -> dict[str, Any]:
    """The access-log record (JSON lines, written by a background thread) with this reason."""
    deadline = time.monotonic() + within_s
    while True:
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("reason") == reason:
                    return dict(rec)
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log record with reason {reason!r} in {path}")
        await asyncio.sleep(0.05)
