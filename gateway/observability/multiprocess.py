"""Metrics across worker processes: any worker's ``/metrics`` answers for all of them.

With ``--workers N`` the admin port is shared (SO_REUSEPORT), so a scrape reaches one worker
chosen by the kernel. Each worker therefore writes a snapshot of its own exposition to a
directory shared with its siblings (``GATEWAY_METRICS_DIR``, set by the supervisor) every
``interval_s``, and answers a scrape with its live numbers merged with its siblings' latest
snapshots: counters and histograms are summed, gauges summed too except ``*_timestamp_seconds``,
``*_info``, ``process_start_time_seconds`` and ``process_max_fds`` (the largest wins: a build,
a certificate's expiry or a limit is the same in every worker, not N times it). A sibling's
numbers are at most ``interval_s`` old; the request path is never involved. Snapshots are
written atomically (write, then rename). A worker that exits cleanly removes its snapshot; one
that crashed keeps it (its counts are not lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..tasks import stop_tasks

__all__ = ("ENV_DIR", "SharedMetrics", "merge_expositions")

log = logging.getLogger(__name__)

ENV_DIR = "GATEWAY_METRICS_DIR"
_SUFFIX = ".prom"
# Per-process gauges that are the same kind of value in every worker: not to be added up.
_MAX_GAUGES = frozenset(("process_start_time_seconds", "process_max_fds", "gateway_build_info"))


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge_expositions(texts: list[str]) -> bytes:
    """Sum several Prometheus text expositions of the same metric set into one."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                values[fam.name] = {}
            timestamps = fam.type == "gauge" and (
                fam.name.endswith(("_timestamp_seconds", "_info")) or fam.name in _MAX_GAUGES
            )
            slot = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if timestamps or s.name.endswith("_created"):
                    slot[key] = max(slot.get(key, s.value), s.value)
                else:
                    slot[key] = slot.get(key, 0.0) + s.value
    for name, fam in families.items():
        for (sample, labels), value in values[name].items():
            fam.add_sample(sample, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)


class SharedMetrics:
    """One worker's side: ``start()`` the snapshot writer, ``render()`` for the admin endpoint."""

    def __init__(self, directory: str, render_own: Callable[[], bytes], *, interval_s: float = 1.0) -> None:
        self._dir = Path(directory)
        self._own = render_own
        self._interval_s = interval_s
        self._file = self._dir / f"{os.getpid()}{_SUFFIX}"
        self._task: asyncio.Task[None] | None = None

    def _write(self) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_bytes(self._own())
        tmp.replace(self._file)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._write)
            except OSError as exc:  # a full or read-only disk costs metrics, never requests
                log.warning("metrics snapshot not written: %s", exc.strerror)
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._loop(), name="gateway-metrics-snapshot")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        with contextlib.suppress(OSError):
            self._file.unlink()

    def render(self) -> bytes:
        texts = [self._own().decode()]
        with contextlib.suppress(OSError):
            for path in self._dir.glob(f"*{_SUFFIX}"):
                if path != self._file:
                    with contextlib.suppress(OSError):
                        texts.append(path.read_text())
        return merge_expositions(texts)
