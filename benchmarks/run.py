"""The side-by-side benchmark: ``bash benchmarks/run.sh [--quick]`` (or ``python -m benchmarks.run``).

Starts a fast upstream (nginx), the reference candidates and the gateway in its modes, runs the Go
load generator against each in interleaved rounds (A B C A B C ...), and writes
benchmarks/RESULTS.md. Everything binds 127.0.0.1; every load phase is bounded in count and time.
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import hotpath, peers, report
from .material import AUDIENCE, make_material
from .servers import (
    BENCH,
    PATH,
    ROOT,
    Candidate,
    Probe,
    Proc,
    free_port,
    gateway_env,
    nginx_proxy_conf,
    nginx_upstream_conf,
    probe,
    python,
    start,
    start_nginx,
    stop_all,
    wait_port,
)
from .soak import soak

OUT = BENCH / "out"
LOADGEN = OUT / "loadgen"
# (name, concurrency, token mix); "many" only for candidates that check tokens.
SCENARIOS = (("c16-hot", 16, "hot"), ("c64-hot", 64, "hot"), ("c64-many", 64, "many"))


def build_loadgen() -> str | None:
    go = shutil.which("go")
    src = BENCH / "loadgen"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime > max(f.stat().st_mtime for f in src.glob("*.go")):
        return None
    if go is None:
        return "go not installed (run benchmarks/run.sh, which installs golang-go)"
    r = subprocess.run(
        [go, "build", "-o", str(LOADGEN), "."], cwd=src, capture_output=True, text=True, timeout=300,
        env={"GOFLAGS": "-mod=mod", "GOPROXY": "off", "HOME": str(OUT), "GOCACHE": str(OUT / "gocache"),
             "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    return None if r.returncode == 0 else f"go build failed: {r.stderr[-400:]}"


def make_candidates(args: argparse.Namespace) -> tuple[list[Candidate], dict[str, Any]]:
    as_port = free_port()
    issuer = f"http://127.0.0.1:{as_port}"
    t0 = time.monotonic()
    m = make_material(OUT / "material", issuer, args.clients)
    info: dict[str, Any] = {"material_s": time.monotonic() - t0, "clients": args.clients, "soak": []}
    up_port, direct_port = free_port(), free_port()

    up = start_nginx("nginx-upstream", OUT, lambda p: nginx_upstream_conf(p, m, up_port, direct_port))
    why = wait_port(up_port, up)
    if why:
        raise SystemExit(f"the upstream (nginx) did not start: {why}")
    mock_as = start(
        "mock-as",
        [python(), "-m", "benchmarks.mock_as", "--port", str(as_port), "--issuer", issuer,
         "--jwks", str(m.jwks), "--opaque-db", str(m.opaque_db)],
        OUT / "mock-as.log",
    )
    why = wait_port(as_port, mock_as)
    if why:
        raise SystemExit(f"the test authorization server did not start: {why}")

    hot_dpop = Probe("dpop", m.hot_dpop_token, checks=False)
    cands: list[Candidate] = []

    def add(key: str, title: str, port: int, pr: Probe, clients: Path | None, many: bool, group: str,
            launch: Any) -> None:
        cands.append(Candidate(key, title, port, pr, clients, many, group, launch))

    add("nginx-direct", "nginx answering directly over mTLS (load-generator ceiling)", direct_port,
        hot_dpop, m.clients_dpop, False, "baseline", lambda: [up])

    p_ngx = free_port()
    add("nginx-proxy", "nginx mTLS reverse proxy, no token checks", p_ngx, hot_dpop, m.clients_dpop,
        False, "baseline",
        lambda: [start_nginx("nginx-proxy", OUT, lambda p: nginx_proxy_conf(p, m, up_port, p_ngx))])

    p_min = free_port()
    add("aiohttp-minimal", "minimal aiohttp mTLS proxy + uvloop, no checks", p_min, hot_dpop,
        m.clients_dpop, False, "baseline",
        lambda: [start("aiohttp-minimal",
                       [python(), "-m", "benchmarks.minimal_proxy", "--port", str(p_min),
                        "--upstream", f"http://127.0.0.1:{up_port}", "--cert", str(m.server_cert),
                        "--key", str(m.server_key), "--ca", str(m.ca)], OUT / "aiohttp-minimal.log")])

    p_floor = free_port()
    add("floor", "floor: minimal aiohttp proxy + one ES256 proof verify (token verify cached), nothing else",
        p_floor, Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True, "baseline",
        lambda: [start("floor",
                       [python(), "-m", "benchmarks.floor", "--port", str(p_floor),
                        "--upstream", f"http://127.0.0.1:{up_port}", "--cert", str(m.server_cert),
                        "--key", str(m.server_key), "--ca", str(m.ca), "--jwks", str(m.jwks)],
                       OUT / "floor.log")])

    p_apache = free_port()
    redis_port = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
    add("apache-oauth2", "Apache httpd + mod_oauth2 (liboauth2 1.4.5), DPoP route, Redis replay cache",
        p_apache, Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True, "baseline",
        lambda: [peers.start_apache(OUT, m, p_apache, up_port, redis_port=redis_port)])

    p_envoy, p_envoy_admin = free_port(), free_port()
    add("envoy-jwt", "Envoy + jwt_authn on the mTLS route (JWT only: no DPoP, no binding; a ceiling)",
        p_envoy, Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True, "baseline",
        lambda: [peers.start_envoy(OUT, m, p_envoy, p_envoy_admin, up_port, base_id=os.getpid() % 100000 + 200)])

    if args.extras:
        p_str = free_port()
        add("aiohttp-stream", "extra: minimal aiohttp proxy relaying with StreamResponse (as a streaming proxy)",
            p_str, hot_dpop, m.clients_dpop, False, "baseline",
            lambda: [start("aiohttp-stream",
                           [python(), "-m", "benchmarks.minimal_proxy", "--port", str(p_str), "--stream",
                            "--upstream", f"http://127.0.0.1:{up_port}", "--cert", str(m.server_cert),
                            "--key", str(m.server_key), "--ca", str(m.ca)], OUT / "aiohttp-stream.log")])

    p_node = free_port()

    def launch_node() -> list[Proc]:
        node = shutil.which("node")
        if node is None or not (BENCH / "node" / "node_modules" / "express-oauth2-jwt-bearer").exists():
            raise RuntimeError("node or benchmarks/node/node_modules missing (run benchmarks/run.sh)")
        cfg = OUT / "node-peer.json"
        cfg.write_text(json.dumps({
            "port": p_node, "upstream": f"http://127.0.0.1:{up_port}", "issuer": issuer,
            "audience": AUDIENCE, "jwks": str(m.jwks), "cert": str(m.server_cert),
            "key": str(m.server_key), "ca": str(m.ca),
        }))
        return [start("node-peer", [node, str(BENCH / "node" / "server.js"), str(cfg)], OUT / "node-peer.log",
                      env={"NODE_ENV": "production"})]

    add("node", "Node: express + express-oauth2-jwt-bearer 1.10 (JWT+DPoP, no replay cache) + proxy",
        p_node, Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True, "baseline", launch_node)

    gateway_bin = ROOT / ".venv" / "bin" / "gateway"
    Mode = tuple[str, str, str, int, Probe, Path, bool]
    modes: tuple[Mode, ...] = (
        ("gw-off", "gateway, route with auth: none (proxy cost)", "off.yaml", 1,
         Probe("dpop", m.hot_dpop_token, checks=False), m.clients_dpop, False),
        ("gw-dpop", "gateway, DPoP-bound JWT, all checks on", "dpop.yaml", 1,
         Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True),
        ("gw-mtls", "gateway, mTLS-bound JWT (cnf.x5t#S256)", "mtls.yaml", 1,
         Probe("bearer", m.hot_mtls_token, checks=True), m.clients_mtls, True),
        ("gw-introspect", "gateway, opaque DPoP-bound token, cached introspection", "introspection.yaml", 1,
         Probe("dpop", m.hot_opaque_token, checks=True), m.clients_opaque, True),
        ("gw-dpop-2w", "gateway, DPoP JWT, 2 workers + Redis replay store", "dpop-redis.yaml", 2,
         Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True),
    )
    if args.extras:
        modes += (
            ("gw-off-quiet", "extra: gw-off with access log and metrics off", "off-quiet.yaml", 1,
             Probe("dpop", m.hot_dpop_token, checks=False), m.clients_dpop, False),
            ("gw-dpop-quiet", "extra: gw-dpop with access log and metrics off", "dpop-quiet.yaml", 1,
             Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, False),
        )
    # issue #18: one Redis-backed limit on the DPoP route, against the same without (the yardstick,
    # which shares this function, has no --ratelimit).
    if getattr(args, "ratelimit", False):
        modes += (
            ("gw-dpop-redis", "ratelimit pair: gw-dpop, 1 worker, Redis replay store", "dpop-redis.yaml", 1,
             Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True),
            ("gw-dpop-rl", "ratelimit pair: gw-dpop-redis + one Redis-backed limit (client_id)",
             "dpop-redis-ratelimit.yaml", 1, Probe("dpop", m.hot_dpop_token, checks=True), m.clients_dpop, True),
        )
    for key, title, conf, workers, pr, clients, many in modes:
        port, admin = free_port(), free_port()

        def launch_gw(key: str = key, conf: str = conf, workers: int = workers, port: int = port,
                      admin: int = admin) -> list[Proc]:
            if not gateway_bin.exists():
                raise RuntimeError("gateway CLI not installed (.venv/bin/gateway missing)")
            # ``python -m gateway`` from ROOT: this checkout's code (the venv's console script may
            # belong to another checkout when the venv is shared between worktrees).
            argv = [python(), "-m", "gateway", "run", "--config", str(BENCH / "gateway" / conf)]
            if workers > 1:
                argv += ["--workers", str(workers)]
            return [start(key, argv, OUT / f"{key}.log", env=gateway_env(m, port, admin, up_port, as_port))]

        add(key, title, port, pr, clients, many, "gateway", launch_gw)
    info["material"] = m
    return cands, info


def launch_all(cands: list[Candidate], only: set[str] | None) -> None:
    for c in cands:
        if only and c.key not in only:
            c.not_run = "not selected (--only)"
            continue
        try:
            c.procs = c.launch()
        except RuntimeError as exc:
            c.not_run = str(exc)
    for c in cands:
        if c.not_run:
            continue
        for p in c.procs:
            why = wait_port(c.port, p)
            if why:
                c.not_run = why
                break


def run_phase(c: Candidate, m: Any, conc: int, mix: str, args: argparse.Namespace, rnd: int = 1,
              duration: float | None = None, ready: Path | None = None,
              side_pids: list[int] | None = None) -> dict[str, Any]:
    out = OUT / "phase.json"
    out.unlink(missing_ok=True)
    duration = duration or args.duration
    # Each round's many-token phase starts on tokens no earlier round used, so its first pass is cold.
    span = max(1, args.clients // args.rounds)
    argv = [
        str(LOADGEN), "-url", f"https://127.0.0.1:{c.port}{PATH}", "-c", str(conc),
        "-duration", f"{duration}s", "-warmup", f"{args.warmup}s", "-max", str(args.max_requests),
        "-uses", "2", "-offset", str((rnd - 1) * span), "-span", str(span),
        "-cert", str(m.client_cert), "-key", str(m.client_key), "-ca", str(m.ca),
        "-clients", str(c.clients), "-mix", mix, "-auth", c.probe.auth,
        "-pids", ",".join(str(p) for p in c.pids), "-out", str(out),
    ]
    if ready is not None:
        argv += ["-ready-file", str(ready)]
    if side_pids:  # measured apart, e.g. the Envoy in front of the decision service (decision.py)
        argv += ["-side-pids", ",".join(str(p) for p in side_pids)]
    # One OS thread for Go: the load generator stays on at most one core and does not spin on the
    # other, which the server (or the second gateway worker) needs.
    env = {**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "1")}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + args.warmup + 180, env=env)
    if r.returncode != 0 or not out.exists():
        return {"failed": (r.stderr or r.stdout)[-300:]}
    res: dict[str, Any] = json.loads(out.read_text())
    return res


def profile(c: Candidate, m: Any, args: argparse.Namespace) -> None:
    """py-spy on the candidate during an extra, unrecorded c64 hot phase (timed part only)."""
    raw = OUT / f"profile-{c.key}.txt"
    ready = OUT / "timed.flag"
    for f in (raw, ready):
        f.unlink(missing_ok=True)
    seconds = max(4.0, args.profile_seconds)
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(run_phase(c, m, 64, "hot", args, duration=seconds, ready=ready))
    )
    worker.start()
    deadline = time.monotonic() + 120
    while not ready.exists() and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    # Sample the timed phase only: warm-up handshakes and proof signing are not the hot path.
    spy = hotpath.record(c.pids[0], seconds - 0.5, raw)
    worker.join()
    if isinstance(spy, str):
        (OUT / f"profile-{c.key}.md").write_text(f"Not profiled: {spy}\n")
        return
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        err = b"timed out"
    if not raw.exists():
        text = f"Not profiled: py-spy wrote nothing ({err.decode(errors='replace')[-300:]})"
    else:
        text = hotpath.summarize(raw, f"`{c.key}`")
        if "rps" in result:
            text += (f"\n\nDuring the profile (py-spy sampling adds overhead): {result['rps']:.0f} req/s, "
                     f"{result['server_cpu_us_per_req']:.0f} CPU-µs/req, "
                     f"{result.get('new_connections', 0)} new connections in the sampled phase.")
    (OUT / f"profile-{c.key}.md").write_text(text + "\n")
    print(f"profiled {c.key}: benchmarks/out/profile-{c.key}.md", flush=True)


def _profile_tail(raw: Path) -> str:
    """Keep the 'During the profile' line written when the profile was taken."""
    md = raw.with_suffix(".md")
    if md.exists():
        tail = [ln for ln in md.read_text().splitlines() if ln.startswith("During the profile")]
        if tail:
            return "\n\n" + tail[0] + "\n"
    return "\n"


def report_only(out: Path) -> int:
    """Re-render RESULTS.md from benchmarks/out/results.json (e.g. after editing profile-notes.md)."""
    from types import SimpleNamespace

    data = json.loads((OUT / "results.json").read_text())
    meta = data["meta"]
    for raw in OUT.glob("profile-*.txt"):
        text = hotpath.summarize(raw, f"`{raw.stem.removeprefix('profile-')}`") + _profile_tail(raw)
        (OUT / f"{raw.stem}.md").write_text(text)
    cands = [SimpleNamespace(**c) for c in meta["candidates"]]
    text = report.render(cands, data["rows"], SimpleNamespace(**meta["args"]), meta["info"], meta["started"],
                         meta["ended"])
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def micro() -> None:
    """The stage micro-benchmarks, in their own process; a failure is reported, not fatal."""
    out = OUT / "micro.md"
    out.unlink(missing_ok=True)
    r = subprocess.run([python(), "-m", "benchmarks.micro"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        out.write_text("Micro-benchmarks failed (the stage APIs may have changed):\n\n```\n"
                       + (r.stderr or r.stdout)[-1500:] + "\n```\n")
    print("micro-benchmarks: " + ("done" if r.returncode == 0 else "FAILED (see RESULTS.md)"), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, short phases: a smoke run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per timed phase")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before each timed phase")
    ap.add_argument("--prewarm", type=float, default=2.0,
                    help="seconds of discarded load per candidate before round 1 (JIT, caches)")
    ap.add_argument("--clients", type=int, default=10000, help="distinct clients/tokens for the many mix")
    ap.add_argument("--max-requests", type=int, default=400000, help="upper bound per timed phase")
    ap.add_argument("--only", default="", help="comma-separated candidate keys (default: all)")
    ap.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    ap.add_argument("--profile", default=None,
                    help="comma-separated candidate keys to profile with py-spy after the rounds "
                    "(default: gw-dpop,aiohttp-minimal; --quick: none; '' for none)")
    ap.add_argument("--profile-seconds", type=float, default=8.0)
    ap.add_argument("--no-micro", action="store_true", help="skip the stage micro-benchmarks")
    ap.add_argument("--soak-valid", type=int, default=0,
                    help="target 6: this many distinct valid DPoP proofs against gw-dpop, RSS per chunk")
    ap.add_argument("--soak-garbage", type=int, default=0,
                    help="target 6: this many distinct garbage tokens against gw-dpop, RSS per chunk")
    ap.add_argument("--extras", action="store_true",
                    help="also run the diagnostic candidates (aiohttp-stream, gw-off-quiet, gw-dpop-quiet)")
    ap.add_argument("--ratelimit", action="store_true",
                    help="also run gw-dpop-redis and gw-dpop-rl (the cost of a rate limit, RESULTS-ratelimit.md)")
    ap.add_argument("--report-only", action="store_true",
                    help="only re-render RESULTS.md from benchmarks/out/results.json")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        return report_only(args.out)
    # RESULTS.md shows the profiles in benchmarks/out: only this run's may be there.
    for stale in OUT.glob("profile-*"):
        stale.unlink()
    if args.quick:
        args.rounds, args.duration, args.warmup, args.prewarm = 1, 2.0, 0.5, 2.0
    if args.profile is None:
        args.profile = "" if args.quick else "gw-dpop,aiohttp-minimal"
    for stale in OUT.glob("profile-*.md") if OUT.exists() else ():
        stale.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    # One run at a time: a second one would regenerate the key material under the first one's servers.
    lock = (OUT / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("another benchmark run is in progress (benchmarks/out/.lock); try again when it ends",
              file=sys.stderr)
        return 3
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(130))

    why = build_loadgen()
    if why:
        print(f"cannot build the load generator: {why}", file=sys.stderr)
        return 2
    started = time.time()
    cands, info = make_candidates(args)
    m = info["material"]
    only = {s for s in args.only.split(",") if s} or None
    launch_all(cands, only)
    for c in cands:
        if c.not_run is None:
            c.not_run = probe(m, c.port, c.probe)
        print(f"{c.key:16} {'ready' if c.not_run is None else 'not run: ' + c.not_run}", flush=True)
    scen = [s for s in SCENARIOS if not args.scenarios or s[0] in args.scenarios.split(",")]
    for c in cands:
        if c.not_run is None and args.prewarm > 0:
            run_phase(c, m, 16, "hot", args, duration=args.prewarm)
    rows: list[dict[str, Any]] = []
    for rnd in range(1, args.rounds + 1):
        for name, conc, mix in scen:
            for c in cands:
                if c.not_run or (mix == "many" and not c.many):
                    continue
                if any(not p.alive() for p in c.procs):
                    c.not_run = f"died during the run: {c.procs[0].tail()}"
                    continue
                res = run_phase(c, m, conc, mix, args, rnd)
                res.update(round=rnd, scenario=name, candidate=c.key)
                rows.append(res)
                print(f"round {rnd} {name:9} {c.key:16} "
                      + (f"FAILED {res['failed']}" if "failed" in res else
                         f"{res['rps']:8.0f} req/s  {res['server_cpu_us_per_req']:7.0f} CPU-us/req  "
                         f"p99 {res['p99_ms']:6.1f} ms  non-2xx {report.non2xx(res)}  "
                         f"other {res.get('other_cpu_s', 0) / res['elapsed_s']:.2f} cores  "
                         f"new conns {res.get('new_connections', 0)}"), flush=True)
    for c in cands:
        if c.key in args.profile.split(",") and c.not_run is None:
            profile(c, m, args)
    soaks: list[dict[str, Any]] = []
    gw = next((c for c in cands if c.key == "gw-dpop" and c.not_run is None), None)
    if gw is not None:
        if args.soak_valid:
            soaks += soak(gw, m, args, "valid", args.soak_valid)
        if args.soak_garbage:
            soaks += soak(gw, m, args, "garbage", args.soak_garbage)
    info["soak"] = soaks
    stop_all()
    if not args.quick and not args.no_micro:
        micro()
    ended = time.time()
    meta = {
        "args": {k: getattr(args, k) for k in ("quick", "rounds", "duration", "warmup", "max_requests", "argv")},
        "info": {"clients": args.clients, "soak": soaks},
        "candidates": [{"key": c.key, "title": c.title, "not_run": c.not_run} for c in cands],
        "started": started,
        "ended": ended,
    }
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for raw in OUT.glob("profile-*.txt"):
        (OUT / f"{raw.stem}.md").write_text(hotpath.summarize(raw, f"`{raw.stem.removeprefix('profile-')}`")
                                            + _profile_tail(raw))
    text = report.render(cands, rows, args, info, started, ended)
    args.out.write_text(text)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
