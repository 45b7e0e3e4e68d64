"""gateway.verify.tokencache.TtuCache: the verified-token cache's expiry and bound (issue 20)."""

from __future__ import annotations

import pytest

from gateway.verify.tokencache import TtuCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_never_returned_at_or_after_its_expiry() -> None:
    clock = Clock()
    c: TtuCache[str, str] = TtuCache(maxsize=10, ttu=lambda _k, v, now: now + float(v), timer=clock)
    c["a"] = "5"
    assert c.get("a") == "5"
    clock.now += 4.999
    assert c.get("a") == "5"
    clock.now += 0.001
    assert c.get("a") is None and len(c) == 0


def test_an_entry_expired_at_insertion_is_not_stored_and_replaces_nothing_stale() -> None:
    clock = Clock()
    c: TtuCache[str, str] = TtuCache(maxsize=10, ttu=lambda _k, v, now: now + float(v), timer=clock)
    c["a"] = "10"
    c["a"] = "0"  # a value that is already expired drops the older entry for the same key too
    assert c.get("a") is None and len(c) == 0


def test_bounded_oldest_inserted_goes_first() -> None:
    clock = Clock()
    c: TtuCache[int, int] = TtuCache(maxsize=3, ttu=lambda _k, _v, now: now + 60, timer=clock)
    for i in range(5):
        c[i] = i
    assert len(c) == 3
    assert [c.get(i) for i in range(5)] == [None, None, 2, 3, 4]
    c[2] = 22  # re-inserted: now the newest
    c[5] = 5
    assert c.get(3) is None and c.get(2) == 22


def test_pop_and_clear() -> None:
    c: TtuCache[str, int] = TtuCache(maxsize=2, ttu=lambda _k, _v, now: now + 1, timer=Clock())
    c["x"] = 1
    assert c.pop("x") == 1 and c.pop("x", None) is None
    c["y"] = 2
    c.clear()
    assert len(c) == 0
    with pytest.raises(ValueError):
        TtuCache(maxsize=0, ttu=lambda _k, _v, now: now, timer=Clock())
