"""Admission to introspection calls: bounded slots, a bounded queue with a deadline, a per-source
budget (issue #13, finding 15; checklist INTR-11).

Without these, garbage tokens each cost an AS call, and a slow AS made every uncached request
wait without limit behind them. Now, per issuer:

* at most ``max_concurrent_calls`` calls are in flight;
* at most ``max_queued_calls`` wait for a slot, each at most ``queue_timeout_s``;
* at most ``max_concurrent_per_source`` calls are in flight or waiting for one source;

and anything beyond is refused at once with ``IntrospectionBusyError`` (503 + ``Retry-After``),
before the AS is asked. Cached answers never pass through here, so a flood does not slow them.

A fast AS answers a flood quickly, so concurrency alone does not bound the calls it costs:
``ScanGuard`` counts the inactive answers each source caused, and a source with
``max_inactive_per_source`` of them in ``inactive_window_s`` gets no further AS call until the
window ends (token scanning, INTR-11). General request rate limits are the rate limiter's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import deque
from collections.abc import AsyncIterator, Callable

from cachetools import TLRUCache

from ..errors import IntrospectionBusyError
from ..model import AuthRequest

__all__ = ("CallGate", "ScanGuard", "request_source")


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def request_source(req: AuthRequest, trusted_proxies: Networks = ()) -> str | None:
    """Who a request counts against: its client certificate if it has one (the TLS identity, the
    same behind a NAT or a front proxy), else its address. IPv6 counts by /64, since one host
    usually holds a whole /64. Behind a trusted front proxy the address is the last one that proxy
    added to X-Forwarded-For (not the proxy's own, which every client would share). None when no
    client can be told apart: then only the issuer-wide bounds apply."""
    if req.peer_cert is not None:
        return "x5t:" + req.peer_cert.x5t_s256
    remote = req.remote
    if not remote:
        return None
    if trusted_proxies and _within(remote, trusted_proxies):
        remote = _forwarded_client(req, trusted_proxies)
        if remote is None:
            return None
    if ":" not in remote:
        return "ip:" + remote  # IPv4 (every request pays for this line: no parsing)
    try:
        addr = ipaddress.IPv6Address(remote)
    except ValueError:
        return "ip:" + remote[:64]
    if addr.ipv4_mapped is not None:
        return "ip:" + str(addr.ipv4_mapped)
    return "ip:" + str(ipaddress.IPv6Network((addr, 64), strict=False))


def _within(address: str, networks: Networks) -> bool:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def _forwarded_client(req: AuthRequest, trusted_proxies: Networks) -> str | None:
    """The rightmost X-Forwarded-For entry that is not itself a trusted proxy (entries to its left
    were written by the client and prove nothing)."""
    hops = [h.strip() for value in req.headers.getall("X-Forwarded-For", []) for h in value.split(",")]
    for hop in reversed(hops[-16:]):
        try:
            addr = ipaddress.ip_address(hop)
        except ValueError:
            return None
        if not any(addr in net for net in trusted_proxies):
            return str(addr)
    return None


def _busy(description: str, reason: str) -> IntrospectionBusyError:
    return IntrospectionBusyError(description, reason=reason)


class CallGate:
    """Slots for one issuer's introspection calls. Event-loop only (no locking)."""

    def __init__(self, *, slots: int, max_queued: int, queue_timeout_s: float, per_source: int) -> None:
        self._slots = slots
        self._max_queued = max_queued
        self._timeout_s = queue_timeout_s
        self._per_source_limit = per_source
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Only sources with a call under way: at most slots + max_queued entries.
        self._per_source: dict[str, int] = {}

    def reserve(self, source: str | None) -> None:
        """Count a new call against ``source``, or refuse it at once if the source has used its budget."""
        if source is None:
            return
        held = self._per_source.get(source, 0)
        if held >= self._per_source_limit:
            raise _busy("too many token checks from this client at once; retry shortly",
                        "introspection_source_busy")
        self._per_source[source] = held + 1

    def unreserve(self, source: str | None) -> None:
        if source is None:
            return
        held = self._per_source.get(source, 0) - 1
        if held > 0:
            self._per_source[source] = held
        else:
            self._per_source.pop(source, None)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._in_use < self._slots and not self._waiters:
            self._in_use += 1
            return
        if len(self._waiters) >= self._max_queued:
            raise _busy("the token issuer is busy; retry shortly", "introspection_busy")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self._timeout_s):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self._release()  # handed a slot just as we gave up: pass it on
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                raise _busy("the token issuer is busy; retry shortly", "introspection_queue_timeout") from None
            raise

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes straight to the next waiter
                return
        self._in_use -= 1


# Sources remembered at once; beyond, the oldest windows are forgotten (memory stays bounded).
_SCAN_SOURCES = 10_000


class ScanGuard:
    """Inactive answers per source in a fixed window; at the limit the source is throttled."""

    def __init__(self, *, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        # source -> (inactive answers, end of its window); an entry expires with its window.
        self._windows: TLRUCache[str, tuple[int, float]] = TLRUCache(
            maxsize=_SCAN_SOURCES, ttu=lambda _k, v, _now: v[1], timer=clock
        )

    def check(self, source: str | None) -> None:
        if source is None:
            return
        seen = self._windows.get(source)
        if seen is not None and seen[0] >= self._limit:
            raise _busy("too many unknown tokens from this client; retry later", "introspection_source_throttled")

    def inactive(self, source: str | None) -> None:
        if source is None:
            return
        seen = self._windows.get(source)
        if seen is None:
            self._windows[source] = (1, self._clock() + self._window_s)
        else:
            self._windows[source] = (seen[0] + 1, seen[1])
