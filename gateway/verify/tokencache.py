"""The verified-token cache: a dict bounded in size, each entry with its own expiry.

It replaces ``cachetools.TLRUCache`` on the per-request path (issue 20): a hit here is one dict
lookup and one clock read (~0.1 µs, against ~2 µs for ``TLRUCache.get``, which keeps an ordered
dict, a heap of item objects and a size map per entry), and an entry costs ~85 bytes less.

Semantics kept from the TLRU cache: an entry's expiry is ``ttu(key, value, now)`` at insertion and
an entry at or past it is never returned; an entry already expired at insertion is not stored.
What differs, only in which entries are kept (never in what a hit returns): when full, the OLDEST
INSERTED entry goes (FIFO), not the least recently used. A hot token evicted that way is verified
again on its next use, once per ``maxsize`` insertions at most.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ("TtuCache",)

K = TypeVar("K")
V = TypeVar("V")


class TtuCache(Generic[K, V]):
    __slots__ = ("_data", "_maxsize", "_timer", "_ttu")

    def __init__(self, *, maxsize: int, ttu: Callable[[K, V, float], float], timer: Callable[[], float]) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._data: dict[K, tuple[float, V]] = {}
        self._maxsize = maxsize
        self._ttu = ttu
        self._timer = timer

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        # A live entry (tracing's cache-hit attribute asks); read only, as ``in`` should be.
        hit = self._data.get(key)  # type: ignore[arg-type]
        return hit is not None and hit[0] > self._timer()

    def get(self, key: K) -> V | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] <= self._timer():
            del self._data[key]
            return None
        return hit[1]

    def __setitem__(self, key: K, value: V) -> None:
        now = self._timer()
        expires = self._ttu(key, value, now)
        data = self._data
        data.pop(key, None)
        if expires <= now:
            return
        while len(data) >= self._maxsize:
            del data[next(iter(data))]
        data[key] = (expires, value)

    def pop(self, key: K, default: V | None = None) -> V | None:
        hit = self._data.pop(key, None)
        return default if hit is None else hit[1]

    def clear(self) -> None:
        self._data.clear()
