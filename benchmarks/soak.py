"""Target 6: does the gateway's memory stay flat under many distinct proofs or garbage tokens?

``run.py --soak-valid N --soak-garbage N`` calls ``soak``: the load generator sends N requests in
chunks (each a bounded loadgen run) and the server's RSS is read after every chunk.

Fairness of the comparison (first reading vs last):

- The valid soak starts with a warm-up, recorded as ``valid-warmup`` points and not counted in N:
  at least ``WARMUP_S`` seconds of load (the jti replay store holds every proof of the last
  ``iat_past_s + iat_future_s`` = 75 s, so it is only full after that long) and at least one pass
  over every client (token cache, proof-header cache). Its last reading is the ``done = 0``
  baseline: the bounded caches are at their working size, so growth after it is real growth.
- The garbage soak's baseline is the RSS right before its first request.
- The load generator signs each chunk's proofs up front with one ``iat``; a chunk is capped at
  ``CHUNK_S`` seconds so that none of them reaches the gateway older than ``iat_past_s`` (60 s),
  which would turn the rest of the chunk into 401s (``offline: benchmarks.memsoak``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from . import report
from .servers import BENCH, PATH, Candidate

OUT = BENCH / "out"
LOADGEN = OUT / "loadgen"
CHUNK_S = 40  # < dpop.iat_past_s (60 s) minus the time to sign the chunk's proofs
WARMUP_S = 90  # > the replay window (75 s)


def rss_kb(roots: list[int]) -> int:
    """VmRSS of ``roots`` and all their descendants (gateway workers), as the load generator sums it."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    pids, todo = set(roots), list(roots)
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in pids:
                pids.add(child)
                todo.append(child)
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _chunk(c: Candidate, m: Any, args: argparse.Namespace, kind: str, n: int, offset: int) -> dict[str, Any] | str:
    """One bounded load-generator run: its result, or why it failed."""
    out = OUT / "soak.json"
    out.unlink(missing_ok=True)
    argv = [
        str(LOADGEN), "-url", f"https://127.0.0.1:{c.port}{PATH}", "-c", "64", "-duration", f"{CHUNK_S}s",
        "-warmup", "0.2s", "-max", str(n), "-cert", str(m.client_cert), "-key", str(m.client_key),
        "-ca", str(m.ca), "-pids", ",".join(str(p) for p in c.pids), "-out", str(out),
        "-issuer", m.issuer,
    ]
    if kind == "valid":
        # Every proof is new (unique jti); tokens cycle through the whole client pool.
        argv += ["-clients", str(c.clients), "-auth", "dpop", "-mix", "many", "-uses", "1",
                 "-offset", str(offset % args.clients), "-span", str(args.clients)]
    else:
        argv += ["-auth", "garbage"]
    env = {**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "1")}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=CHUNK_S + 300, env=env)
    if r.returncode != 0 or not out.exists():
        return (r.stderr or r.stdout)[-300:]
    res: dict[str, Any] = json.loads(out.read_text())
    return res


def _point(kind: str, done: int, res: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "done": done, "rss_kb": res["server_rss_kb"], "rps": res["rps"],
            "cpu_us": res["server_cpu_us_per_req"], "non2xx": report.non2xx(res)}


def _show(kind: str, c: Candidate, done: int, rss: int, res: dict[str, Any] | None) -> None:
    tail = (f"  {res['rps']:6.0f} req/s  non-2xx {report.non2xx(res)}" if res else "  (baseline)")
    print(f"soak {kind:12} {c.key}: {done:>9,} requests  RSS {rss / 1024:6.1f} MB{tail}", flush=True)


def soak(c: Candidate, m: Any, args: argparse.Namespace, kind: str, total: int) -> list[dict[str, Any]]:
    """Target 6: RSS after every chunk of ``total`` distinct valid proofs or garbage tokens."""
    chunk = max(2000, total // 10)
    points: list[dict[str, Any]] = []
    offset = 0
    if kind == "valid":
        warm_s, warm_n = 0.0, 0
        res: dict[str, Any] | str = {}
        while warm_s < WARMUP_S or warm_n < args.clients:
            res = _chunk(c, m, args, kind, chunk, offset)
            if isinstance(res, str):
                return [*points, {"kind": kind, "failed": res}]
            warm_s += res["elapsed_s"]
            warm_n += res["requests"]
            offset += res["requests"]
            points.append(_point("valid-warmup", warm_n, res))
            _show("valid-warmup", c, warm_n, res["server_rss_kb"], res)
            if res["requests"] == 0:
                return points
        # The baseline is the reading after the last warm-up chunk (its rate columns too).
        points.append({**points[-1], "kind": kind, "done": 0})
    else:
        # No load at this reading: the rate columns (which report.py prints) are zero.
        points.append({"kind": kind, "done": 0, "rss_kb": rss_kb(c.pids), "rps": 0.0, "cpu_us": 0.0, "non2xx": 0})
    _show(kind, c, 0, points[-1]["rss_kb"], None)
    done = 0
    while done < total:
        res = _chunk(c, m, args, kind, min(chunk, total - done), offset)
        if isinstance(res, str):
            points.append({"kind": kind, "failed": res})
            break
        done += res["requests"]
        offset += res["requests"]
        points.append(_point(kind, done, res))
        _show(kind, c, done, res["server_rss_kb"], res)
        if res["requests"] == 0:
            break
    return points
