"""The soak's verdict (benchmarks/soak30.py ``analyse``) fails on what it is there to catch.

Fed with windows and samples shaped like a real run's (what the load generator and the /proc
sampler write), each check must turn to FAIL on its own fault: a 5xx, an accepted replay, a valid
request refused, a worker's RSS or FD count growing by more than 10 %, a rising p99.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from benchmarks.soak30 import analyse, hist_pct, render

ARGS = argparse.Namespace(window=10.0, drift=10.0, replay_share=0.01)
SECONDS = 600.0


def _window(t1: float, *, status: dict[str, dict[str, int]] | None = None, lat_bucket: int = 150) -> dict[str, Any]:
    kinds = status or {"dpop": {"200": 700}, "mtls": {"200": 290}, "replay": {"401": 10}}
    return {"t0_s": t1 - 10, "t1_s": t1, "sent": 1000, "hist": {str(lat_bucket): 990},
            "kinds": {k: {"status": v, "errors": 0} for k, v in kinds.items()},
            "p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0, "max_lag_ms": 1.0}


def _sample(t: float, rss_kb: tuple[int, int] = (80_000, 80_000), fds: tuple[int, int] = (60, 60)) -> dict[str, Any]:
    def proc(pid: int, rss: int, fd: int) -> dict[str, int]:
        return {"pid": pid, "rss_kb": rss, "fds": fd, "cpu_ticks": int(t * 50)}

    return {"t_s": t, "under_load": True, "machine_busy_cores": 1.5, "new_workers": [], "redis_keys": 1000,
            "workers": [proc(1, rss_kb[0], fds[0]), proc(2, rss_kb[1], fds[1])],
            "supervisor": proc(0, 30_000, 10), "loadgen": proc(3, 20_000, 70), "loadavg": "1.0"}


def _run() -> dict[str, Any]:
    return {"windows": [_window(10.0 * (i + 1)) for i in range(60)],
            "samples": [_sample(10.0 * (i + 1)) for i in range(60)], "rate": 100.0, "seconds": SECONDS,
            "workers": [1, 2]}


def _failed(res: dict[str, Any]) -> list[str]:
    return [name for name, ok in analyse(res, ARGS)["checks"].items() if not ok]


def test_a_clean_run_passes_and_renders() -> None:
    a = analyse(_run(), ARGS)
    assert a["pass"], a["checks"]
    assert a["totals"]["replays"] == 600 and a["totals"]["replays_refused_401"] == 600
    meta = {"started": 0.0, "command": "python -m benchmarks.soak30", "rate": 100.0, "load": 0.8}
    assert "Verdict: **PASS**" in render(meta, None, a)


def test_a_5xx_fails() -> None:
    res = _run()
    res["windows"][30] = _window(310.0, status={"dpop": {"200": 699, "502": 1}, "mtls": {"200": 290}})
    assert "no 5xx" in _failed(res)


def test_an_accepted_replay_fails() -> None:
    res = _run()
    res["windows"][45] = _window(460.0, status={"dpop": {"200": 700}, "mtls": {"200": 290},
                                                "replay": {"401": 9, "200": 1}})
    failed = _failed(res)
    assert "no replay accepted" in failed and "every replay refused with 401" in failed


def test_a_refused_valid_request_fails() -> None:
    res = _run()
    res["windows"][5] = _window(60.0, status={"dpop": {"200": 699, "401": 1}, "mtls": {"200": 290}})
    assert "no valid request refused" in _failed(res)


def test_rss_growth_in_one_worker_fails() -> None:
    res = _run()
    for i, s in enumerate(res["samples"]):
        s["workers"][1]["rss_kb"] = 80_000 + i * 300  # +18 MB over the run: a leak
    assert "RSS drift within ±10 %" in _failed(res)


def test_fd_growth_fails_but_a_single_spike_does_not() -> None:
    res = _run()
    spiky = copy.deepcopy(res)
    spiky["samples"][-2]["workers"][0]["fds"] = 90  # one sample catching new upstream connections
    assert _failed(spiky) == []
    for i, s in enumerate(res["samples"]):
        s["workers"][0]["fds"] = 60 + i
    assert "FD drift within ±10 %" in _failed(res)


def test_samples_after_the_load_are_not_the_end_point() -> None:
    res = _run()
    res["samples"].append({**_sample(SECONDS + 5, fds=(20, 20)), "under_load": False, "machine_busy_cores": None})
    assert _failed(res) == []


def test_a_rising_p99_fails() -> None:
    res = _run()
    for w in res["windows"][40:]:
        w["hist"] = {"250": 990}  # 10^(251/50) µs ≈ 105 ms, from ~1 ms
    assert "p99 stable (last third <= 1.5 x first third + 10 ms)" in _failed(res)


def test_histogram_percentiles() -> None:
    ws = [{"hist": {"150": 90, "200": 10}}]  # buckets of 10^(b/50) µs: 90 % at ~1 ms, 10 % at ~10 ms
    assert 1.0 <= hist_pct(ws, 0.5) < 1.05
    assert 10.0 <= hist_pct(ws, 0.99) < 10.5
