"""Target 6: does the gateway's memory stay flat under many distinct proofs or garbage tokens?

``run.py --soak-valid N --soak-garbage N`` calls ``soak``: the load generator sends N requests in
chunks (each a bounded loadgen run) and the server's RSS is read after every chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from typing import Any

from . import report
from .servers import BENCH, PATH, Candidate

OUT = BENCH / "out"
LOADGEN = OUT / "loadgen"


def soak(c: Candidate, m: Any, args: argparse.Namespace, kind: str, total: int) -> list[dict[str, Any]]:
    """Target 6: RSS after every chunk of ``total`` distinct valid proofs or garbage tokens."""
    chunk = max(2000, total // 10)
    points: list[dict[str, Any]] = []
    done = 0
    while done < total:
        out = OUT / "soak.json"
        out.unlink(missing_ok=True)
        n = min(chunk, total - done)
        argv = [
            str(LOADGEN), "-url", f"https://127.0.0.1:{c.port}{PATH}", "-c", "64", "-duration", "900s",
            "-warmup", "0.2s", "-max", str(n), "-cert", str(m.client_cert), "-key", str(m.client_key),
            "-ca", str(m.ca), "-pids", ",".join(str(p) for p in c.pids), "-out", str(out),
            "-issuer", m.issuer,
        ]
        if kind == "valid":
            # Every proof is new (unique jti); tokens cycle through the whole client pool.
            argv += ["-clients", str(c.clients), "-auth", "dpop", "-mix", "many", "-uses", "1",
                     "-offset", str(done % args.clients), "-span", str(args.clients)]
        else:
            argv += ["-auth", "garbage"]
        env = {**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "1")}
        r = subprocess.run(argv, capture_output=True, text=True, timeout=1000, env=env)
        if r.returncode != 0 or not out.exists():
            points.append({"kind": kind, "failed": (r.stderr or r.stdout)[-300:]})
            break
        res = json.loads(out.read_text())
        done += res["requests"]
        points.append({"kind": kind, "done": done, "rss_kb": res["server_rss_kb"], "rps": res["rps"],
                       "cpu_us": res["server_cpu_us_per_req"], "non2xx": report.non2xx(res)})
        print(f"soak {kind:7} {c.key}: {done:>9,} requests  RSS {res['server_rss_kb'] / 1024:6.1f} MB  "
              f"{res['rps']:6.0f} req/s  non-2xx {report.non2xx(res)}", flush=True)
        if res["requests"] == 0:
            break
    return points
