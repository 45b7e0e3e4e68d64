"""The in-process A/B loop shared by ``listener_ab``, ``tracing_ab`` and ``tracing_decision_ab``:
two variants measured in alternating batches in one process, so the machine's other load hits
both alike, and the per-round difference is the figure to read."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable


async def paired_rounds(
    batch: Callable[[str, int], Awaitable[float]], first: str, second: str, *, rounds: int, n: int, unit: str
) -> dict[str, list[float]]:
    """``batch(name, n)`` -> CPU-µs per call; a warm-up batch of each, then ``rounds`` batches of
    each, the order swapped every round. Prints each variant's median and returns the rounds."""
    for name in (first, second):
        await batch(name, 300)
    res: dict[str, list[float]] = {first: [], second: []}
    for i in range(rounds):
        for name in (first, second) if i % 2 else (second, first):
            res[name].append(await batch(name, n))
    for k, v in res.items():
        print(f"{k}: median {statistics.median(v):.1f} CPU-us/{unit} (min {min(v):.1f})")
    return res
