"""The soak: ``python -m benchmarks.soak30 --minutes 30`` (issue #14); results in benchmarks/SOAK.md.

Real parts only, all on 127.0.0.1, all stopped at the end:

- the interop suite's authorization server (node-oidc-provider, ``tests/interop``), its access
  tokens living ``--minutes`` + 20 min so no token expires during the run;
- ``--dpop-clients`` distinct DPoP keys, each with its own DPoP-bound JWT (PS256) from that AS, and
  ``--mtls-clients`` distinct client certificates registered at it (``tls_client_auth``), each with
  its own certificate-bound JWT;
- ``gateway run --workers 2`` (benchmarks/gateway/soak.yaml) with ``dpop.replay.backend: redis`` in
  its own redis-server, in front of nginx;
- the Go load generator's soak mode (``benchmarks/loadgen/soak.go``): open-loop, a fresh proof
  signed per DPoP request, a trickle (``--replay-share``) of replayed proofs the gateway has
  already accepted once.

Phases: a step load to saturation with the same mix (capacity = the best achieved rate), then the
soak at ``--load`` (0.8) of it, sampling every ``--window`` seconds the RSS and open file
descriptors of each worker (``/proc``), the replay store's size, the machine's load, and from the
load generator the rate, status counts per kind and latency percentiles.

Verdict (exit 0 only if all hold): no 5xx, no transport errors, no valid request refused, every
replay refused, no replay accepted, RSS and FD count of each worker within ± ``--drift`` (10 %)
between the first sample after warm-up and the last, p99 stable (median p99 of the last third of
periods <= 1.5 x that of the first third + 10 ms), achieved rate >= 95 % of the target.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import fcntl
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .servers import (
    _NGINX_HEAD,
    BENCH,
    BODY,
    ROOT,
    Proc,
    free_port,
    python,
    start,
    start_nginx,
    stop_all,
    wait_port,
)

OUT = BENCH / "out" / "soak30"
LOADGEN = BENCH / "out" / "loadgen"
DPOP_PATH, MTLS_PATH = "/dpop/accounts", "/mtls/accounts"
SCOPE = "accounts:read"
LOADGENS: list[subprocess.Popen[bytes]] = []


# --- the parts --------------------------------------------------------------------------------

def build_loadgen() -> None:
    from .run import build_loadgen as build

    why = build()
    if why:
        raise SystemExit(f"cannot build the load generator: {why}")


def start_redis(work: Path) -> tuple[Proc, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not installed (apt-get install redis-server)")
    port = free_port()
    proc = start("redis-soak", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(work)], OUT / "redis.log")
    why = wait_port(port, proc)
    if why:
        raise SystemExit(f"redis-server did not start: {why}")
    return proc, port


def start_upstream() -> int:
    port = free_port()

    def conf(prefix: Path) -> str:
        return (_NGINX_HEAD.format(prefix=prefix)
                + f"  server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 '{BODY}'; }}\n  }}\n}}\n")

    proc = start_nginx("nginx-soak-upstream", OUT, conf)
    why = wait_port(port, proc)
    if why:
        raise SystemExit(f"the upstream (nginx) did not start: {why}")
    return port


def start_as(work: Path, ttl_s: int) -> Any:
    """node-oidc-provider from the interop suite, tokens living ``ttl_s``."""
    from tests.interop.interop_as import AuthServer, make_clients, node_unavailable_reason
    from tests.interop.interop_pki import Pki

    reason = node_unavailable_reason()
    if reason:
        raise SystemExit(reason)
    (work / "pki").mkdir()
    pki = Pki(work / "pki")

    class SoakAS(AuthServer):
        token_ttl_s = ttl_s

    auth = SoakAS(work, pki, make_clients(pki))
    auth.start()
    atexit.register(auth.stop)
    return auth


def mint(auth: Any, n_dpop: int, n_mtls: int) -> tuple[Path, Path]:
    """Distinct DPoP keys and mTLS clients, each with its own token from the real AS."""
    from requests_oauth2client.dpop import DPoPKey

    from tests.interop.interop_as import RS_JWT, client_registration

    certs = [auth.pki.client_cert(f"soak-mtls-{i}", f"soak-{i}.bank.test") for i in range(n_mtls)]
    for i in range(n_mtls):
        auth.late_registrations.append(client_registration(
            f"soak-mtls-{i}", "tls_client_auth", tls_client_auth_san_dns=f"soak-{i}.bank.test",
            tls_client_certificate_bound_access_tokens=True))
    if n_mtls:
        auth._admin({"clients": auth.clients.registrations() + auth.late_registrations})

    def dpop_one(_: int) -> dict[str, str]:
        key = DPoPKey.generate(alg="ES256")
        tok = auth.dpop_token(RS_JWT, scope=SCOPE, key=key)
        jwk = dict(key.private_key)
        return {"d": jwk["d"], "x": jwk["x"], "y": jwk["y"], "token": str(tok.access_token)}

    def mtls_one(i: int) -> dict[str, str]:
        tok = auth.mtls_token(certs[i], f"soak-mtls-{i}", RS_JWT, scope=SCOPE)
        return {"token": tok, "cert": certs[i].pair[0], "key": certs[i].pair[1]}

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        dpop = list(pool.map(dpop_one, range(n_dpop)))
        mtls = list(pool.map(mtls_one, range(n_mtls)))
    assert len({c["token"] for c in dpop}) == n_dpop and len({c["x"] for c in dpop}) == n_dpop
    d_path, m_path = OUT / "dpop-clients.json", OUT / "mtls-clients.json"
    for path, data in ((d_path, dpop), (m_path, mtls)):
        path.write_text(json.dumps(data))
        path.chmod(0o600)
    return d_path, m_path


def start_gateway(auth: Any, up_port: int, redis_port: int, workers: int) -> tuple[Proc, int]:
    from tests.interop.interop_as import RS_JWT

    port, admin = free_port(), free_port()
    cert, key = auth.pki.server_files("gateway-soak", "127.0.0.1")
    env = {
        "SOAK_PORT": str(port), "SOAK_ADMIN_PORT": str(admin), "SOAK_CERT": str(cert), "SOAK_KEY": str(key),
        "SOAK_CA": str(auth.pki.ca_path), "SOAK_UPSTREAM": f"http://127.0.0.1:{up_port}",
        "SOAK_ISSUER": auth.issuer, "SOAK_AUDIENCE": RS_JWT, "SOAK_REDIS_PORT": str(redis_port),
        # This checkout's gateway package (the venv's editable install may point at another one);
        # spawned workers inherit the parent's sys.path.
        "PYTHONPATH": str(ROOT),
    }
    proc = start("gateway-soak", [python(), "-m", "gateway", "run", "--config", str(BENCH / "gateway" / "soak.yaml"),
                                  "--workers", str(workers)], OUT / "gateway.log", env=env)
    why = wait_port(port, proc)
    if why:
        raise SystemExit(f"the gateway did not start: {why}")
    return proc, port


# --- /proc ------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def gateway_workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (forked on Linux, spawned elsewhere), not
    multiprocessing's resource tracker (started with spawned workers only)."""
    out = []
    for pid in children(supervisor):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmd:
            out.append(pid)
    return out


def proc_sample(pid: int) -> dict[str, int]:
    """RSS (kB), open file descriptors and CPU ticks of one process; -1 when it is gone."""
    try:
        rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if ln.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return {"pid": pid, "rss_kb": rss, "fds": fds, "cpu_ticks": int(f[11]) + int(f[12])}
    except (OSError, StopIteration):
        return {"pid": pid, "rss_kb": -1, "fds": -1, "cpu_ticks": -1}


def machine_busy() -> tuple[float, float]:
    f = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def redis_keys(port: int) -> int:
    import redis

    try:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            return int(r.dbsize())
        finally:
            r.close()
    except redis.RedisError:
        return -1


# --- the load generator ----------------------------------------------------------------------

def loadgen(port: int, ca: str, clients: tuple[Path, Path], args: argparse.Namespace, rate: float,
            seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = [str(LOADGEN), "soak", "-base", f"https://127.0.0.1:{port}", "-dpop-path", DPOP_PATH,
            "-mtls-path", MTLS_PATH, "-dpop-clients", str(clients[0]), "-mtls-clients", str(clients[1]),
            "-ca", ca, "-rate", f"{rate:.1f}", "-mtls-share", str(args.mtls_share),
            "-replay-share", str(args.replay_share), "-duration", f"{seconds:.1f}s",
            "-window", f"{args.window}s", "-out", str(out)]
    # One OS thread: the load generator stays on at most one of the shared cores.
    env = {**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "1")}
    p = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    LOADGENS.append(p)
    return p


def stop_loadgens() -> None:
    """An interrupted run must not leave its load generator sending for the rest of --minutes."""
    for p in LOADGENS:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def read_windows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def totals(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Status counts per kind, errors, 5xx over ``windows``."""
    kinds: dict[str, dict[str, int]] = {}
    errors = 0
    for w in windows:
        for kind, ks in w["kinds"].items():
            dst = kinds.setdefault(kind, {})
            for code, n in ks["status"].items():
                dst[code] = dst.get(code, 0) + n
            errors += ks["errors"]
    done = sum(n for k in kinds.values() for n in k.values())
    return {
        "kinds": kinds, "errors": errors, "done": done, "skipped": sum(w.get("skipped", 0) for w in windows),
        "5xx": sum(n for k in kinds.values() for c, n in k.items() if c.startswith("5")),
        "replays": sum(kinds.get("replay", {}).values()),
        "replays_accepted": sum(n for c, n in kinds.get("replay", {}).items() if c.startswith("2")),
        "replays_refused_401": kinds.get("replay", {}).get("401", 0),
        "valid_refused": sum(n for k in ("dpop", "mtls") for c, n in kinds.get(k, {}).items() if c != "200"),
    }


def hist_pct(windows: list[dict[str, Any]], p: float) -> float:
    """Percentile (ms) from the windows' merged log histograms (50 buckets per decade: ~5 %)."""
    hist: dict[int, int] = {}
    for w in windows:
        for b, n in w["hist"].items():
            hist[int(b)] = hist.get(int(b), 0) + n
    total = sum(hist.values())
    if total == 0:
        return 0.0
    rank, seen = p * total, 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return float(10 ** ((b + 1) / 50) / 1000)  # the bucket's upper bound, µs -> ms
    return 0.0


def achieved(windows: list[dict[str, Any]]) -> float:
    if not windows:
        return 0.0
    return totals(windows)["done"] / max(1e-9, windows[-1]["t1_s"])


# --- phases ------------------------------------------------------------------------------------

def step_load(port: int, ca: str, clients: tuple[Path, Path], args: argparse.Namespace) -> dict[str, Any]:
    """Raise the offered rate until the achieved rate falls behind: capacity = the best achieved."""
    steps: list[dict[str, Any]] = []
    rate = args.cap_start
    while rate <= args.cap_max:
        out = OUT / f"step-{int(rate)}.jsonl"
        p = loadgen(port, ca, clients, args, rate, args.cap_step_s, out)
        _, err = p.communicate(timeout=args.cap_step_s + 120)
        ws = read_windows(out)
        # The first window opens connections and fills caches: not counted.
        steady = ws[1:] if len(ws) > 2 else ws
        span = (steady[-1]["t1_s"] - steady[0]["t0_s"]) if steady else 1.0
        got = totals(steady)["done"] / max(1e-9, span)
        tot = totals(ws)
        step = {"offered": rate, "achieved": got, "p50_ms": hist_pct(steady, 0.5), "p99_ms": hist_pct(steady, 0.99),
                "5xx": tot["5xx"], "errors": tot["errors"], "max_lag_ms": max((w["max_lag_ms"] for w in ws), default=0),
                "rc": p.returncode}
        steps.append(step)
        print(f"capacity step: offered {rate:7.0f}/s achieved {got:7.0f}/s p50 {step['p50_ms']:6.1f} ms "
              f"p99 {step['p99_ms']:7.1f} ms 5xx {step['5xx']} errors {step['errors']} "
              f"lag {step['max_lag_ms']:.0f} ms", flush=True)
        if p.returncode != 0:
            raise SystemExit(f"load generator failed: {err.decode(errors='replace')[-400:]}")
        if got < 0.9 * rate or tot["5xx"] or tot["errors"]:
            break
        rate *= args.cap_factor
    cap = max(s["achieved"] for s in steps)
    return {"steps": steps, "capacity_rps": cap}


def sample(supervisor: int, workers: list[int], redis_port: int, loadgen_pid: int) -> dict[str, Any]:
    return {"workers": [proc_sample(w) for w in workers], "supervisor": proc_sample(supervisor),
            "loadgen": proc_sample(loadgen_pid),
            "new_workers": [w for w in gateway_workers(supervisor) if w not in workers],
            "redis_keys": redis_keys(redis_port), "loadavg": Path("/proc/loadavg").read_text().split()[0]}


def soak(port: int, ca: str, clients: tuple[Path, Path], args: argparse.Namespace, gw: Proc, rate: float,
         redis_port: int) -> dict[str, Any]:
    seconds = args.minutes * 60
    out = OUT / "soak-windows.jsonl"
    workers = gateway_workers(gw.pid)
    samples: list[dict[str, Any]] = []
    busy0 = machine_busy()
    t_start = time.monotonic()
    p = loadgen(port, ca, clients, args, rate, seconds, out)
    err_chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: err_chunks.append(p.stderr.read() if p.stderr else b""), daemon=True)
    drain.start()
    next_t = t_start
    prev_busy = busy0
    while p.poll() is None:
        next_t += args.window
        time.sleep(max(0.0, next_t - time.monotonic()))
        busy = machine_busy()
        cores = os.cpu_count() or 1
        s = {**sample(gw.pid, workers, redis_port, p.pid), "t_s": round(time.monotonic() - t_start, 1),
             "under_load": p.poll() is None,
             "machine_busy_cores": round((busy[0] - prev_busy[0]) / max(1e-9, busy[1] - prev_busy[1]) * cores, 2)}
        prev_busy = busy
        samples.append(s)
        live = ", ".join(f"{w['rss_kb'] / 1024:.1f} MB/{w['fds']} fd" for w in s["workers"])
        done = read_windows(out)
        tail = done[-1] if done else None
        print(f"soak t={s['t_s']:6.0f}s workers [{live}] redis keys {s['redis_keys']} "
              f"machine {s['machine_busy_cores']} cores"
              + (f" | last window {tail['sent'] / max(1e-9, tail['t1_s'] - tail['t0_s']):.0f}/s "
                 f"p99 {tail['p99_ms']:.1f} ms" if tail else ""), flush=True)
    drain.join(timeout=5)
    if p.returncode != 0:
        raise SystemExit(f"load generator failed: {b''.join(err_chunks).decode(errors='replace')[-400:]}")
    # After the load: shown, not used for the drift (the clients' connections are closed by then).
    samples.append({**sample(gw.pid, workers, redis_port, p.pid), "t_s": round(time.monotonic() - t_start, 1),
                    "under_load": False, "machine_busy_cores": None})
    return {"windows": read_windows(out), "samples": samples, "rate": rate, "seconds": seconds,
            "workers": workers}


# --- verdict and report ----------------------------------------------------------------------

def analyse(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ws, samples, seconds = res["windows"], res["samples"], res["seconds"]
    period = 60.0 if seconds >= 300 else args.window * max(1, round(seconds / 4 / args.window))
    warm = min(120.0, 0.2 * seconds)
    # CPU (cores) of the gateway workers and of the load generator since the previous sample.
    for prev, cur in itertools.pairwise(samples):
        dt = max(1e-9, cur["t_s"] - prev["t_s"]) * 100  # USER_HZ ticks
        if cur.get("machine_busy_cores") is None:
            continue
        cur["gateway_cores"] = round(sum(c["cpu_ticks"] - b["cpu_ticks"]
                                         for b, c in zip(prev["workers"], cur["workers"], strict=True)) / dt, 2)
        cur["loadgen_cores"] = round((cur["loadgen"]["cpu_ticks"] - prev["loadgen"]["cpu_ticks"]) / dt, 2)

    def mean_of(group: list[dict[str, Any]], key: str) -> float | None:
        vals = [g[key] for g in group if g.get(key) is not None]
        return statistics.mean(vals) if vals else None

    periods: list[dict[str, Any]] = []
    n_periods = math.ceil(seconds / period)
    for k in range(n_periods):
        # A window belongs to the period it starts in; the short final one to the last period.
        pw = [w for w in ws if min(int(w["t0_s"] // period), n_periods - 1) == k]
        if not pw:
            continue
        t = totals(pw)
        span = pw[-1]["t1_s"] - pw[0]["t0_s"]
        # Samples and windows run on clocks started about together: allow 2 s of skew.
        sm = [s for s in samples if k * period + 2 < s["t_s"] <= (k + 1) * period + 2 and s["under_load"]]
        last = sm[-1] if sm else None
        periods.append({
            "t0_s": k * period, "t1_s": pw[-1]["t1_s"], "rps": t["done"] / max(1e-9, span),
            "dpop_200": t["kinds"].get("dpop", {}).get("200", 0), "mtls_200": t["kinds"].get("mtls", {}).get("200", 0),
            "replays": t["replays"], "replays_accepted": t["replays_accepted"], "5xx": t["5xx"],
            "errors": t["errors"], "valid_refused": t["valid_refused"], "skipped": t["skipped"],
            "p50_ms": hist_pct(pw, 0.5), "p99_ms": hist_pct(pw, 0.99), "max_ms": max(w["max_ms"] for w in pw),
            "max_lag_ms": max(w["max_lag_ms"] for w in pw),
            "rss_mb": [round(w["rss_kb"] / 1024, 1) for w in last["workers"]] if last else [],
            "fds": [w["fds"] for w in last["workers"]] if last else [],
            "redis_keys": last["redis_keys"] if last else None,
            "machine_cores": mean_of(sm, "machine_busy_cores"), "gateway_cores": mean_of(sm, "gateway_cores"),
            "loadgen_cores": mean_of(sm, "loadgen_cores"),
        })
    # Start: the samples of the first period after warm-up; end: those of the last period. Their
    # medians, per worker: one sample can catch a burst of upstream connections being opened.
    loaded = [s for s in samples if s["under_load"]] or samples
    stable = [s for s in loaded if s["t_s"] >= warm] or loaded
    t_first = stable[0]["t_s"]
    first_p = [s for s in stable if s["t_s"] < t_first + period] or stable[:1]
    last_p = [s for s in stable if s["t_s"] > stable[-1]["t_s"] - period] or stable[-1:]
    first, last = stable[0], stable[-1]

    def med(group: list[dict[str, Any]], key: str) -> list[float]:
        return [statistics.median(s["workers"][i][key] for s in group) for i in range(len(group[0]["workers"]))]

    def drift(key: str) -> list[float]:
        return [(b - a) / a * 100 for a, b in zip(med(first_p, key), med(last_p, key), strict=True)]

    rss_drift, fd_drift = drift("rss_kb"), drift("fds")
    steady = [p for p in periods if p["t0_s"] >= warm] or periods
    p99s = [p["p99_ms"] for p in steady]
    third = max(1, len(p99s) // 3)
    p99_first, p99_last = statistics.median(p99s[:third]), statistics.median(p99s[-third:])
    tot = totals(ws)
    got = tot["done"] / max(1e-9, ws[-1]["t1_s"]) if ws else 0.0
    checks = {
        "no 5xx": tot["5xx"] == 0,
        "no transport errors": tot["errors"] == 0,
        "no valid request refused": tot["valid_refused"] == 0,
        "replays sent": tot["replays"] > 0 or args.replay_share == 0,
        "no replay accepted": tot["replays_accepted"] == 0,
        "every replay refused with 401": tot["replays_refused_401"] == tot["replays"],
        f"RSS drift within ±{args.drift:g} %": all(abs(d) <= args.drift for d in rss_drift),
        f"FD drift within ±{args.drift:g} %": all(abs(d) <= args.drift for d in fd_drift),
        # 10 ms: the noise floor of a shared 2-core machine, where a p99 of a few ms can double.
        "p99 stable (last third <= 1.5 x first third + 10 ms)": p99_last <= 1.5 * p99_first + 10,
        "workers not restarted": all(w["rss_kb"] > 0 for w in last["workers"]) and not last["new_workers"],
    }
    return {
        "periods": periods, "period_s": period, "warmup_s": warm, "totals": tot, "achieved_rps": got,
        "first_sample": first, "last_sample": last,
        "start": {"t_s": [first_p[0]["t_s"], first_p[-1]["t_s"]], "rss_kb": med(first_p, "rss_kb"),
                  "fds": med(first_p, "fds")},
        "end": {"t_s": [last_p[0]["t_s"], last_p[-1]["t_s"]], "rss_kb": med(last_p, "rss_kb"),
                "fds": med(last_p, "fds")},
        "rss_drift_pct": rss_drift, "fd_drift_pct": fd_drift,
        "p99_ms": {"min": min(p99s), "median": statistics.median(p99s), "max": max(p99s),
                   "first_third_median": p99_first, "last_third_median": p99_last},
        "checks": checks, "pass": all(checks.values()),
        # Whether the machine let the run hold its rate (the verdict's checks hold either way).
        "conditions": {
            "achieved >= 95 % of the target rate": got >= 0.95 * res["rate"],
            "periods below 95 % of the target": sum(1 for p in steady if p["rps"] < 0.95 * res["rate"]),
            "requests skipped (more than 1 s late: the gateway or the machine could not keep up)": tot["skipped"],
        },
    }


def render(meta: dict[str, Any], cap: dict[str, Any] | None, a: dict[str, Any]) -> str:
    lines = [f"Soak run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(meta['started']))}: "
             f"`{meta['command']}`", ""]
    if cap:
        lines += ["Capacity (step load, same mix):", "", "| offered/s | achieved/s | p50 ms | p99 ms | 5xx | errors |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {s['offered']:.0f} | {s['achieved']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['5xx']} | "
                  f"{s['errors']} |" for s in cap["steps"]]
        lines += ["", f"Capacity: **{cap['capacity_rps']:.0f} req/s**; soak rate {meta['rate']:.0f} req/s "
                  f"({meta['load'] * 100:.0f} %).", ""]
    else:
        lines += [f"Soak rate (given): {meta['rate']:.0f} req/s.", ""]
    t = a["totals"]
    lines += [f"Per {a['period_s']:.0f} s (warm-up: first {a['warmup_s']:.0f} s; RSS/FDs: sample at the period's end, "
              "worker 1 / worker 2; CPU in cores of the machine's 2: gateway workers / load generator / "
              "whole machine):", "",
              "| t (s) | req/s | skipped | DPoP 200 | mTLS 200 | replays (accepted) | 5xx | err | p50 ms | p99 ms "
              "| max ms | RSS MB | FDs | replay keys | CPU gw / lg / all |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for p in a["periods"]:
        mc = " / ".join(f"{p[k]:.2f}" if p[k] is not None else "-"
                        for k in ("gateway_cores", "loadgen_cores", "machine_cores"))
        lines.append(f"| {p['t0_s']:.0f} | {p['rps']:.0f} | {p.get('skipped', 0)} | {p['dpop_200']} | {p['mtls_200']} "
                     f"| {p['replays']} "
                     f"({p['replays_accepted']}) | {p['5xx']} | {p['errors']} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} "
                     f"| {p['max_ms']:.0f} | {' / '.join(map(str, p['rss_mb'])) or '-'} "
                     f"| {' / '.join(map(str, p['fds'])) or '-'} "
                     f"| {p['redis_keys'] if p['redis_keys'] is not None else '-'} | {mc} |")
    st, en = a["start"], a["end"]
    rss = "; ".join(f"worker {i + 1}: {x / 1024:.1f} -> {y / 1024:.1f} ({d:+.1f} %)"
                    for i, (x, y, d) in enumerate(zip(st["rss_kb"], en["rss_kb"], a["rss_drift_pct"], strict=True)))
    fds = "; ".join(f"worker {i + 1}: {x:g} -> {y:g} ({d:+.1f} %)"
                    for i, (x, y, d) in enumerate(zip(st["fds"], en["fds"], a["fd_drift_pct"], strict=True)))
    span = (f"median of the samples at t = {st['t_s'][0]:.0f}-{st['t_s'][1]:.0f} s (first period after warm-up) "
            f"-> t = {en['t_s'][0]:.0f}-{en['t_s'][1]:.0f} s (last period)")
    lines += ["",
              f"Totals: {t['done']:,} responses ({a['achieved_rps']:.0f}/s), by kind and status: "
              f"`{json.dumps(t['kinds'], sort_keys=True)}`; transport errors {t['errors']}; 5xx {t['5xx']}; "
              f"replays {t['replays']}, refused with 401 {t['replays_refused_401']}, accepted {t['replays_accepted']}.",
              "",
              f"RSS (MB), {span}: {rss}",
              "",
              f"Open FDs, same samples: {fds}",
              "",
              "p99 per period after warm-up: min {min:.1f} / median {median:.1f} / max {max:.1f} ms; "
              "median of the first third {first_third_median:.1f} ms, of the last third {last_third_median:.1f} ms."
              .format(**a["p99_ms"]),
              "", "Checks:", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in a["checks"].items()]
    lines += ["", "Run conditions:", ""]
    lines += [f"- {name}: {'yes' if v is True else 'no' if v is False else v}"
              for name, v in a.get("conditions", {}).items()]
    lines += ["", f"Verdict: **{'PASS' if a['pass'] else 'FAIL'}**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="soak duration")
    ap.add_argument("--rate", type=float, default=0.0, help="soak at this rate (req/s) and skip the capacity step")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity to soak at")
    ap.add_argument("--cap-start", type=float, default=200.0, help="first offered rate of the step load")
    ap.add_argument("--cap-factor", type=float, default=1.25, help="each step offers this much more")
    ap.add_argument("--cap-max", type=float, default=20000.0)
    ap.add_argument("--cap-step-s", type=float, default=15.0, help="seconds per step")
    ap.add_argument("--dpop-clients", type=int, default=64, help="distinct DPoP keys, one token each")
    ap.add_argument("--mtls-clients", type=int, default=8, help="distinct client certificates, one token each")
    ap.add_argument("--mtls-share", type=float, default=0.3, help="fraction of requests on the mTLS route")
    ap.add_argument("--replay-share", type=float, default=0.01, help="fraction of requests replaying a used proof")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=float, default=10.0, help="sampling window (s)")
    ap.add_argument("--drift", type=float, default=10.0, help="allowed RSS/FD drift (%%)")
    ap.add_argument("--out-dir", type=Path, default=BENCH / "out" / "soak30",
                    help="work files, logs, results (one run at a time each)")
    ap.add_argument("--json", type=Path, default=None, help="raw results (default: OUT-DIR/soak.json)")
    ap.add_argument("--report", type=Path, default=None, help="markdown summary (default: OUT-DIR/report.md)")
    ap.add_argument("--reanalyse", type=Path, default=None,
                    help="only re-render the report from a run's raw results (its --json file)")
    args = ap.parse_args(argv)
    OUT = args.out_dir.resolve()
    args.json = args.json or OUT / "soak.json"
    args.report = args.report or OUT / "report.md"
    if args.reanalyse:
        data = json.loads(args.reanalyse.read_text())
        run_args = argparse.Namespace(**{**vars(args), **{k: data["meta"]["args"][k]
                                                          for k in ("window", "drift", "replay_share")}})
        text = render(data["meta"], data["capacity"], analyse(data["soak"], run_args))
        args.report.write_text(text)
        print(text)
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    lock = (OUT / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("another soak is running (benchmarks/out/soak30/.lock)", file=sys.stderr)
        return 3
    atexit.register(stop_all)
    atexit.register(stop_loadgens)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(130))
    started = time.time()
    build_loadgen()
    work = Path(tempfile.mkdtemp(prefix="soak30-", dir=OUT))
    atexit.register(shutil.rmtree, work, True)
    _, redis_port = start_redis(work)
    up_port = start_upstream()
    # Tokens outlive the whole run (capacity steps included): none is refreshed mid-soak.
    auth = start_as(work, int(args.minutes * 60) + 1200)
    t0 = time.monotonic()
    clients = mint(auth, args.dpop_clients, args.mtls_clients)
    print(f"minted {args.dpop_clients} DPoP-bound and {args.mtls_clients} mTLS-bound tokens from node-oidc-provider "
          f"in {time.monotonic() - t0:.1f}s", flush=True)
    gw, port = start_gateway(auth, up_port, redis_port, args.workers)
    ca = str(auth.pki.ca_path)
    # Probe: a few seconds at a low rate must be all 200 (tokens, routes and keys line up).
    probe_out = OUT / "probe.jsonl"
    p = loadgen(port, ca, clients, argparse.Namespace(**{**vars(args), "replay_share": 0.0}), 20, 2, probe_out)
    _, err = p.communicate(timeout=120)
    pt = totals(read_windows(probe_out))
    if p.returncode != 0 or pt["valid_refused"] or pt["errors"] or not pt["done"]:
        print(f"probe failed: {pt} {err.decode(errors='replace')[-300:]}\n{gw.tail(8)}", file=sys.stderr)
        return 2
    cap = None
    rate = args.rate
    if rate <= 0:
        cap = step_load(port, ca, clients, args)
        rate = args.load * cap["capacity_rps"]
    print(f"soak: {args.minutes:g} min at {rate:.0f} req/s, workers {gateway_workers(gw.pid)}", flush=True)
    res = soak(port, ca, clients, args, gw, rate, redis_port)
    a = analyse(res, args)
    cmd = "python -m benchmarks.soak30 " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"started": started, "ended": time.time(), "command": cmd.strip(), "rate": rate, "load": args.load,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cpus": os.cpu_count(), "dpop_clients": args.dpop_clients, "mtls_clients": args.mtls_clients}
    args.json.write_text(json.dumps({"meta": meta, "capacity": cap, "soak": res, "analysis": a}, indent=1))
    text = render(meta, cap, a)
    args.report.write_text(text)
    print(text, flush=True)
    return 0 if a["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
