"""Issue 20's yardstick: ``bash benchmarks/run.sh yardstick`` (or ``.venv/bin/python -m benchmarks.yardstick``).

In the same interleaved rounds (A B C ... A B C ...), with the same Go load generator, mTLS client,
pre-signed unique ES256 DPoP proof per request and nginx upstream as ``benchmarks.run``:

- ``aiohttp-minimal``: the minimal aiohttp mTLS proxy (no checks);
- ``floor``: that proxy + one ES256 proof verify per request (benchmarks/floor.py);
- ``apache-oauth2``: Apache httpd + mod_oauth2 on the DPoP route, Redis replay cache (benchmarks/peers.py);
- ``envoy-jwt``: Envoy + jwt_authn on the mTLS route (a ceiling: no DPoP, no binding);
- the gateway: ``gw-off``, ``gw-mtls``, ``gw-dpop``.

The measure is each server's own CPU time per request (utime+stime of the server and its children
from /proc, around the timed phase), so a busy machine slows the run but does not by itself change
the figure much; ratios are of same-run medians. ``--perf`` adds a ``perf record`` of each named
candidate during an extra c64-hot phase (CPU by shared object and by symbol: the same view for the
C peer and for Python). Writes benchmarks/RESULTS-yardstick.md and its section in RESULTS.md.
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import peers
from .run import OUT, SCENARIOS, build_loadgen, launch_all, make_candidates, run_phase
from .servers import BENCH, ROOT, Candidate, probe, stop_all

CANDIDATES = ("aiohttp-minimal", "floor", "apache-oauth2", "envoy-jwt", "gw-off", "gw-mtls", "gw-dpop")
RESULT_MD = BENCH / "RESULTS-yardstick.md"
HEADING = "## Issue 20 yardstick: floor, Apache + mod_oauth2, Envoy jwt_authn (same interleaved rounds)"
CPU = "server_cpu_us_per_req"

# (label, numerator, denominator, metric, scenarios, goal text, predicate)
TARGETS: tuple[tuple[str, str, str, str, tuple[str, ...], str, Any], ...] = (
    ("DPoP route ÷ floor (CPU/req)", "gw-dpop", "floor", CPU, ("c16-hot", "c64-hot", "c64-many"), "≤ 1.15",
     lambda r: r <= 1.15),
    ("DPoP route ÷ Apache + mod_oauth2 (CPU/req)", "gw-dpop", "apache-oauth2", CPU,
     ("c16-hot", "c64-hot", "c64-many"), "≤ 0.6", lambda r: r <= 0.6),
    ("auth off ÷ minimal proxy (CPU/req)", "gw-off", "aiohttp-minimal", CPU, ("c16-hot", "c64-hot"), "≤ 1.0",
     lambda r: r <= 1.0),
    ("certificate-bound route ÷ minimal proxy (CPU/req)", "gw-mtls", "aiohttp-minimal", CPU,
     ("c16-hot", "c64-hot"), "≤ 1.1", lambda r: r <= 1.1),
    ("DPoP route p99 ÷ minimal proxy p99", "gw-dpop", "aiohttp-minimal", "p99_ms", ("c64-hot",), "≤ 1.2",
     lambda r: r <= 1.2),
    ("DPoP route ÷ Envoy jwt_authn (CPU/req; Envoy checks far less)", "gw-dpop", "envoy-jwt", CPU,
     ("c16-hot", "c64-hot", "c64-many"), "-", None),
    ("floor ÷ minimal proxy (CPU/req): what one proof verify costs", "floor", "aiohttp-minimal", CPU,
     ("c16-hot", "c64-hot"), "-", None),
)


def _rows(rows: list[dict[str, Any]], scen: str, cand: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["scenario"] == scen and r["candidate"] == cand and "failed" not in r
            and r.get("requests")]


def _base_scen(scen: str, cand: str) -> str:
    # Candidates without a token mix (the minimal proxy) are compared on c64-hot for c64-many.
    return "c64-hot" if scen == "c64-many" and cand == "aiohttp-minimal" else scen


def perf_profile(c: Candidate, m: Any, args: argparse.Namespace, seconds: float) -> str:
    """``perf record`` of the candidate's processes during an extra c64-hot phase, summarised."""
    perf = shutil.which("perf")
    if perf is None:
        return "Not profiled: `perf` not installed (apt-get install linux-perf)."
    data = OUT / f"perf-{c.key}.data"
    ready = OUT / "timed.flag"
    ready.unlink(missing_ok=True)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(
        run_phase(c, m, 64, "hot", args, duration=seconds + 1.0, ready=ready)))
    worker.start()
    deadline = time.monotonic() + 120
    while not ready.exists() and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = _descendants(c.pids)
    rec = subprocess.run([perf, "record", "-q", "-F", "499", "-o", str(data), "-p", ",".join(map(str, pids)),
                          "--", "sleep", str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
    worker.join()
    if rec.returncode != 0 or not data.exists():
        return f"Not profiled: perf record failed: {(rec.stderr or rec.stdout)[-300:]}"
    out = []
    for sort, n in (("dso", 12), ("dso,sym", 25)):
        rep = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "-q", "--sort", sort,
                              "--percent-limit", "0.8"], capture_output=True, text=True, timeout=120)
        lines = [ln.rstrip() for ln in rep.stdout.splitlines() if ln.strip() and not ln.startswith("#")][:n]
        out += [f"`perf report --sort {sort}` (top {n}, self time):", "", "```", *lines, "```", ""]
    if "rps" in result:
        out.append(f"During the profile: {result['rps']:.0f} req/s, {result[CPU]:.0f} CPU-µs/req (perf adds some).")
    return "\n".join(out)


def _descendants(roots: list[int]) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def render(rows: list[dict[str, Any]], cands: list[Candidate], args: argparse.Namespace, started: float,
           ended: float, profiles: dict[str, str]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    other = [float(r.get("other_cpu_s", 0)) / max(float(r.get("elapsed_s", 1)), 1e-9)
             for r in rows if "failed" not in r]
    lines = [
        f"Generated by `python -m benchmarks.yardstick{''.join(' ' + a for a in args.argv)}` on {when} "
        f"({(ended - started) / 60:.1f} min): {args.rounds} interleaved round(s), {args.duration:g} s timed per "
        f"phase after {args.warmup:g} s warm-up, {args.clients} distinct clients for the many-token mix. "
        "Figures are each server's own CPU time per request (utime+stime of its processes, from /proc), "
        "medians over rounds; ratios are of same-run medians.",
        "",
        f"Machine load from others during the phases (cores busy outside the server and the load "
        f"generator): median {statistics.median(other) if other else 0:.2f}, max {max(other) if other else 0:.2f} "
        f"of {os.cpu_count()}.",
        "",
        "### Candidates",
        "",
    ]
    for c in cands:
        lines.append(f"- `{c.key}`: {c.title}" + (f" — **not run: {c.not_run}**" if c.not_run else ""))
    lines += ["", "### Targets (ratios of same-run medians)", "",
              "| target | scenario | ratio | per-round paired, median [min-max] | goal | met? |",
              "|---|---|---|---|---|---|"]
    for label, a, b, key, scens, goal, ok in TARGETS:
        for s in scens:
            ra, rb = _rows(rows, s, a), _rows(rows, _base_scen(s, b), b)
            if not ra or not rb:
                lines.append(f"| {label} | {s} | - | - | {goal} | not run |")
                continue
            ratio = statistics.median(r[key] for r in ra) / statistics.median(r[key] for r in rb)
            paired = [x[key] / y[key] for x in ra for y in rb if x["round"] == y["round"] and y[key]]
            pr = f"{statistics.median(paired):.2f} [{min(paired):.2f}-{max(paired):.2f}]" if paired else "-"
            verdict = "-" if ok is None else ("yes" if ok(ratio) else "no")
            lines.append(f"| {label} | {s} | {ratio:.2f} | {pr} | {goal} | {verdict} |")
    lines += ["", "### Per candidate (medians over rounds)", "",
              "| scenario | candidate | CPU-µs/req med [min-max] | req/s | p50 ms | p99 ms | RSS MB | non-2xx |",
              "|---|---|---|---|---|---|---|---|"]
    for s, _, _ in SCENARIOS:
        for c in cands:
            rs = _rows(rows, s, c.key)
            if not rs:
                continue
            cpu = [r[CPU] for r in rs]
            non2xx = sum(v for r in rs for k, v in r.get("status", {}).items() if not str(k).startswith("2"))
            lines.append(
                f"| {s} | {c.key} | {statistics.median(cpu):.0f} [{min(cpu):.0f}-{max(cpu):.0f}] | "
                f"{statistics.median(r['rps'] for r in rs):.0f} | {statistics.median(r['p50_ms'] for r in rs):.2f} | "
                f"{statistics.median(r['p99_ms'] for r in rs):.2f} | "
                f"{statistics.median(r.get('server_rss_kb', 0) for r in rs) / 1024:.0f} | {non2xx} |")
    lines += ["", "### What Apache + mod_oauth2 checks, and what it does not", "", peers.APACHE_CHECKS.strip(), "",
              "Envoy `jwt_authn` checks the access token only (signature against the local JWKS, `iss`, `aud`, "
              "`exp`/`nbf`): no DPoP proof, no `cnf` binding, no replay cache. The floor checks one proof "
              "signature and (once per token) the token signature, nothing else.", ""]
    notes = BENCH / "yardstick-notes.md"
    if notes.exists():  # hand-written: where the time goes, what was tried, memory
        lines += [notes.read_text().strip(), ""]
    for key, text in profiles.items():
        lines += [f"### perf profile: {key} (c64-hot)", "", text, ""]
    return "\n".join(lines).rstrip() + "\n"


def update_results(section_body: str) -> None:
    """Replace (or add before ``## Profile``) the yardstick section of RESULTS.md."""
    results = BENCH / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    section = f"{HEADING}\n\n{section_body.strip()}\n"
    if HEADING in text:
        head, _, rest = text.partition(HEADING)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt:] if nxt >= 0 else "")
    else:
        at = text.find("\n## Profile\n")
        text = text[:at] + "\n" + section + text[at:] if at >= 0 else text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


def rerender() -> None:
    """Re-render from benchmarks/out/yardstick.json (e.g. after editing yardstick-notes.md)."""
    data = json.loads((OUT / "yardstick.json").read_text())
    ns = argparse.Namespace(**data["meta"]["args"])
    cands = [Candidate(c["key"], c["title"], 0, None, None, False, "", lambda: []) for c in data["meta"]["cands"]]  # type: ignore[arg-type]
    for c, meta in zip(cands, data["meta"]["cands"], strict=True):
        c.not_run = meta["not_run"]
    text = render(data["rows"], cands, ns, data["meta"]["started"], data["meta"]["ended"], data["meta"]["profiles"])
    RESULT_MD.write_text("# Issue 20 yardstick (generated)\n\n" + text)
    update_results(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, short phases: a smoke run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--prewarm", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--max-requests", type=int, default=400000)
    ap.add_argument("--only", default=",".join(CANDIDATES))
    ap.add_argument("--scenarios", default="c16-hot,c64-hot,c64-many")
    ap.add_argument("--perf", default="", help="comma-separated candidates to profile with perf (e.g. "
                    "gw-dpop,floor,apache-oauth2)")
    ap.add_argument("--perf-seconds", type=float, default=5.0)
    ap.add_argument("--no-results-md", action="store_true", help="write RESULTS-yardstick.md only")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render from benchmarks/out/yardstick.json (after editing yardstick-notes.md)")
    args = ap.parse_args(argv)
    if args.report_only:
        rerender()
        return 0
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.extras = False
    if args.quick:
        args.rounds, args.duration, args.warmup, args.prewarm = 1, 2.0, 0.5, 1.0
    OUT.mkdir(parents=True, exist_ok=True)
    lock = (OUT / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("another benchmark run is in progress (benchmarks/out/.lock)", file=sys.stderr)
        return 3
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(130))
    why = build_loadgen()
    if why:
        print(f"cannot build the load generator: {why}", file=sys.stderr)
        return 2
    started = time.time()
    all_cands, info = make_candidates(args)
    m = info["material"]
    only = {s for s in args.only.split(",") if s}
    # Only the yardstick's candidates are shown; the others are not started.
    cands = [c for c in all_cands if c.key in only]
    launch_all(cands, only)
    for c in cands:
        if c.not_run is None:
            c.not_run = probe(m, c.port, c.probe)
        print(f"{c.key:16} {'ready' if c.not_run is None else 'not run: ' + c.not_run}", flush=True)
    scen = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
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
                print(f"round {rnd} {name:9} {c.key:16} " + (
                    f"FAILED {res['failed']}" if "failed" in res else
                    f"{res['rps']:8.0f} req/s  {res[CPU]:7.0f} CPU-us/req  p99 {res['p99_ms']:6.1f} ms  "
                    f"non-2xx {sum(v for k, v in res['status'].items() if not str(k).startswith('2'))}"), flush=True)
    profiles: dict[str, str] = {}
    for c in cands:
        if c.key in args.perf.split(",") and c.not_run is None:
            profiles[c.key] = perf_profile(c, m, args, args.perf_seconds)
            print(f"perf profile of {c.key}: done", flush=True)
    stop_all()
    ended = time.time()
    meta = {"args": {k: getattr(args, k) for k in ("argv", "rounds", "duration", "warmup", "clients")},
            "cands": [{"key": c.key, "title": c.title, "not_run": c.not_run} for c in cands],
            "started": started, "ended": ended, "profiles": profiles}
    (OUT / "yardstick.json").write_text(json.dumps({"rows": rows, "argv": args.argv, "meta": meta}, indent=1))
    text = render(rows, cands, args, started, ended, profiles)
    RESULT_MD.write_text("# Issue 20 yardstick (generated)\n\n" + text)
    if not args.no_results_md:
        update_results(text)
    print(f"wrote {RESULT_MD.relative_to(ROOT)}" + ("" if args.no_results_md else " and its section in RESULTS.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
