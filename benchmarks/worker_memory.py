"""Memory per worker with ``--workers N`` (issue #20, second round): RSS and PSS of each worker.

    .venv/bin/python -m benchmarks.worker_memory [--workers 2] [--tree PATH] [--requests 2000]

Starts ``python -m gateway run --workers N`` from ``--tree`` (default: this checkout; pass an
exported older commit to compare) on the DPoP route of benchmarks/gateway/dpop-redis.yaml (Redis
replay store, which several workers need; the AS keys from a file), waits until it is up, then
reads ``/proc/<worker>/smaps_rollup`` of every worker: idle after start, then after
``--requests`` DPoP requests spread over the workers (new connections, each with a fresh proof).
PSS counts a page shared by k processes as 1/k: it is the figure that shows sharing between
workers; RSS counts every page a worker maps.
"""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .material import Material, dpop_proof, make_material
from .servers import free_port, python

ROOT = Path(__file__).resolve().parent.parent


def _config(m: Material, port: int, admin: int, upstream: int, out: Path) -> str:
    text = (ROOT / "benchmarks" / "gateway" / "dpop-redis.yaml").read_text()
    env = {
        "${BENCH_PORT}": str(port), "${BENCH_ADMIN_PORT}": str(admin),
        "${BENCH_UPSTREAM}": f"http://127.0.0.1:{upstream}", "${BENCH_CERT}": str(m.server_cert),
        "${BENCH_KEY}": str(m.server_key), "${BENCH_CA}": str(m.ca),
        "${BENCH_ISSUER}": m.issuer, "${BENCH_AUDIENCE}": "https://api.bench.example",
    }
    text = text.replace("jwks_uri: ${BENCH_JWKS_URI}", f"jwks_file: {out / 'jwks.json'}")
    text = text.replace("allow_insecure_http: true", "")
    for k, v in env.items():
        text = text.replace(k, v)
    return text


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _rollup(pid: int) -> dict[str, float]:
    got: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        got[key] = int(value.split()[0]) / 1024
    return got


def _show(label: str, pids: list[int]) -> None:
    for pid in pids:
        r = _rollup(pid)
        threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
        print(f"{label} worker {pid}: RSS {r['Rss']:.1f} MB, PSS {r['Pss']:.1f} MB, "
              f"private {r['Private_Clean'] + r['Private_Dirty']:.1f} MB, "
              f"shared {r['Shared_Clean'] + r['Shared_Dirty']:.1f} MB, threads {threads}")


def _get(port: int, m: Material, token: str, proof: str, ctx: ssl.SSLContext) -> int:
    req = urllib.request.Request(f"https://127.0.0.1:{port}/api/x",
                                 headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="worker-mem-") as tmp:
        out = Path(tmp)
        m = make_material(out, "https://as.bench.example", 1)
        port, admin, up = free_port(), free_port(), free_port()
        cfg = out / "gw.yaml"
        cfg.write_text(_config(m, port, admin, up, out))
        # Any HTTP answer will do (a 404 from a static server): the request crosses the whole path.
        upstream = subprocess.Popen([python(), "-m", "http.server", "-b", "127.0.0.1", str(up)], cwd=tmp,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = dict(os.environ, PYTHONPATH=str(args.tree))
        proc = subprocess.Popen([python(), "-m", "gateway", "run", "-c", str(cfg), "--workers", str(args.workers),
                                 "--log-level", "WARNING"], cwd=args.tree, env=env,
                                stdout=subprocess.DEVNULL)  # the access log
        try:
            end = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > end or proc.poll() is not None:
                        sys.exit("gateway did not come up")
                    time.sleep(0.3)
            time.sleep(3)
            # multiprocessing's resource tracker (spawn only) is a child too, not a worker.
            workers = sorted(p for p in _children(proc.pid)
                             if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes())
            _show("idle", workers)
            r = _rollup(proc.pid)
            threads = len(list(Path(f"/proc/{proc.pid}/task").iterdir()))
            print(f"supervisor {proc.pid}: RSS {r['Rss']:.1f} MB, PSS {r['Pss']:.1f} MB, threads {threads}")
            if args.requests:
                ctx = ssl.create_default_context(cafile=str(m.ca))
                ctx.load_cert_chain(str(m.client_cert), str(m.client_key))
                codes: dict[int, int] = {}
                for _ in range(args.requests):
                    proof = dpop_proof(m.hot_key, "GET", f"https://127.0.0.1:{port}/api/x", m.hot_dpop_token)
                    c = _get(port, m, m.hot_dpop_token, proof, ctx)
                    codes[c] = codes.get(c, 0) + 1
                time.sleep(1)
                print(f"{args.requests} DPoP requests, statuses {codes}")
                _show("after", workers)
        finally:
            proc.terminate()
            proc.wait(30)
            upstream.terminate()
            upstream.wait(10)


if __name__ == "__main__":
    main()
