"""Command line: ``gateway run|demo|check-config|dev-certs``. No logic beyond argument handling."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .config import AuthPolicy, GatewayConfig, load_config
from .errors import ConfigError
from .observability.logsetup import configure_logging, redact

__all__ = ("main",)

EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h)


def _summary(cfg: GatewayConfig) -> str:
    tls = cfg.listen.tls
    mode = f"TLS {tls.profile}, client_auth {tls.client_auth}" if tls else "plain HTTP"
    lines = [f"listen {cfg.listen.host}:{cfg.listen.port} ({mode})",
             f"admin  {cfg.admin.host}:{cfg.admin.port}",
             f"routes ({len(cfg.routes)}):"]
    for r in cfg.routes:
        m = r.match
        where = (f"= {m.path}" if m.path else f"{m.path_prefix}*") + (f" host={m.host}" if m.host else "")
        methods = ",".join(m.methods) or "any"
        if isinstance(r.auth, AuthPolicy):
            auth = f"auth: sender_constraint={r.auth.sender_constraint} issuers={','.join(r.auth.issuers) or '-'}"
        else:
            auth = "auth: none"
        lines.append(f"  {r.id:<16} {where:<28} {methods:<12} -> {cfg.upstream_for(r).url}  [{auth}]")
    return "\n".join(lines)


def _load(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(redact(str(exc)), file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Resource-server gateway for "
                                     "sender-constrained OAuth 2.0 access tokens (mTLS, DPoP).")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the gateway")
    p_run.add_argument("--config", "-c", required=True, help="gateway YAML file")
    p_run.add_argument("--workers", type=int, default=None, help="worker processes (SO_REUSEPORT)")
    p_demo = sub.add_parser("demo", help="run the embedded dev default: gateway + demo upstream + demo issuer")
    p_demo.add_argument("--config", default="config/dev.yaml")
    p_check = sub.add_parser("check-config", help="validate a config file and print its routes")
    p_check.add_argument("file")
    p_check.add_argument("--strict", action="store_true",
                         help="exit 78 also on risky settings that are warned about but not acknowledged (CI)")
    p_certs = sub.add_parser("dev-certs", help="write a DEV ONLY CA, server and client certificates")
    p_certs.add_argument("dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Every command (demo, check-config, run and its workers) logs through the credential filter.
    configure_logging(args.log_level)

    if args.command == "check-config":
        cfg = _load(args.file)
        if cfg is None:
            return EXIT_CONFIG
        from .config.risks import analyse, describe

        risks = analyse(cfg)
        print(redact(f"{args.file}: OK\n{_summary(cfg)}"))
        # Refused ones appear here only when acknowledged (else the file did not load).
        print(f"risky settings: {len(risks) or 'none'}")
        for risk in risks:
            print(f"  {redact(describe(risk))}")
        from .authz.report import describe_rules  # issue #16: where each authz rule applies

        for line in describe_rules(cfg):
            print(redact(line))
        unacknowledged = [r for r in risks if not r.acknowledged]
        if args.strict and unacknowledged:
            print(f"{args.file}: --strict: {len(unacknowledged)} risky setting(s) not acknowledged "
                  "(list their ids under acknowledge_risks:)", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    if args.command == "dev-certs":
        from .devcerts import make_dev_certs

        for path in make_dev_certs(args.dir):
            print(path)
        return 0
    if args.command in ("run", "demo"):
        from .parsers import parser_problem

        if (problem := parser_problem()) is not None:
            print(f"gateway: {problem}", file=sys.stderr)
            return EXIT_CONFIG
    if args.command == "run":
        cfg = _load(args.config)
        if cfg is None:
            return EXIT_CONFIG
        from .config.dpop import check_process
        from .server import run

        problem = check_process(cfg, args.workers or cfg.lifecycle.workers)
        if problem:
            print(redact(f"{args.config}: invalid configuration:\n  {problem}"), file=sys.stderr)
            return EXIT_CONFIG
        return run(cfg, config_path=args.config, workers=args.workers)
    if args.command == "demo":
        cfg = _load(args.config)
        if cfg is None:
            return EXIT_CONFIG
        from .demo.runner import run_demo

        run_demo(cfg)
        return 0
    return 2
