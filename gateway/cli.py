"""Command line: ``gateway run|demo|demo-client|check-config|dev-certs|explain``. No logic beyond argument handling."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .config import AuthPolicy, GatewayConfig, load_config
from .errors import ConfigError
from .observability.logsetup import configure_logging, redact
from .ports import PortInUseError

__all__ = ("main",)

EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a port the config names is taken
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Shown by `gateway <command> --help` (argparse keeps the layout with RawDescriptionHelpFormatter).
_EXAMPLES = {
    "run": """examples:
  gateway run -c /etc/gateway/gateway.yaml
  gateway run -c gateway.yaml --workers 4 --log-level WARNING
  kill -HUP <pid>      # reload the file (also on change when lifecycle.reload.watch_file)""",
    "demo": """examples:
  gateway demo                         # banner, then the DPoP and mTLS calls, then serves
  GATEWAY_PORT=9443 GATEWAY_ADMIN_PORT=9442 gateway demo
  gateway demo --no-client             # serve only; run `gateway demo-client` later""",
    "demo-client": """examples:
  gateway demo-client                  # against a `gateway demo` on the default ports
  gateway demo-client --gateway https://localhost:9443 --issuer https://localhost:8082""",
    "check-config": """examples:
  gateway check-config config/dev.yaml
  gateway check-config --strict gateway.yaml            # CI: unacknowledged risks fail too
  helm template gw helm/fapi-gateway | yq 'select(.kind=="ConfigMap").data["gateway.yaml"]' \\
    > rendered.yaml && gateway check-config --no-files rendered.yaml""",
    "dev-certs": """examples:
  gateway dev-certs /tmp/certs         # DEV ONLY CA, server and client certificates""",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fapi-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str,
         common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, parents=[common],
                          epilog=_EXAMPLES.get(name), formatter_class=argparse.RawDescriptionHelpFormatter)


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


def _load(path: str, *, check_files: bool = True) -> GatewayConfig | None:
    try:
        return load_config(path, check_files=check_files)
    except ConfigError as exc:
        print(redact(str(exc)), file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Resource-server gateway for "
                                     "sender-constrained OAuth 2.0 access tokens (mTLS, DPoP).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS, type=str.upper,
                        help="default INFO (run: observability.log_level)")
    # Also accepted after the subcommand; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, type=str.upper,
                        help="default INFO (run: observability.log_level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_run = _add(sub, "run", "run the gateway", common)
    p_run.add_argument("--config", "-c", required=True, help="gateway YAML file")
    p_run.add_argument("--workers", type=int, default=None, help="worker processes (SO_REUSEPORT)")
    p_demo = _add(sub, "demo", "run the embedded dev default: gateway + demo upstream + demo issuer, "
                  "and show DPoP and mTLS calls", common)
    p_demo.add_argument("--config", default="config/dev.yaml")
    p_demo.add_argument("--no-client", action="store_true", help="do not make the demo calls after the banner")
    p_client = _add(sub, "demo-client", "make the demo's DPoP and mTLS calls against a running `gateway demo`",
                    common)
    p_client.add_argument("--gateway", default="https://localhost:8443", help="the gateway's origin")
    p_client.add_argument("--issuer", default="https://localhost:8082", help="the demo issuer's URL")
    p_client.add_argument("--certs", default="certs/dev", help="directory with ca.pem and client-a/b certificates")
    p_check = _add(sub, "check-config", "validate a config file and print its routes", common)
    p_check.add_argument("file")
    p_check.add_argument("--no-files", action="store_true",
                         help="do not require the files it names to exist (a config rendered by the Helm "
                              "chart, checked away from its mounts)")
    p_check.add_argument("--strict", action="store_true",
                         help="exit 78 also on risky settings that are warned about but not acknowledged (CI)")
    p_certs = _add(sub, "dev-certs", "write a DEV ONLY CA, server and client certificates", common)
    p_certs.add_argument("dir")
    from .explain.cli import add_parser as add_explain  # issue #19

    add_explain(sub, common)
    args = parser.parse_args(argv)
    level = args.log_level or "INFO"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Every command (demo, check-config, run and its workers) logs through the credential filter.
    configure_logging(level)

    if args.command == "demo-client":
        from pathlib import Path

        from .demo.client import run_client_sync

        return run_client_sync(args.gateway.rstrip("/"), args.issuer.rstrip("/"), Path(args.certs))
    if args.command == "check-config":
        cfg = _load(args.file, check_files=not args.no_files)
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
    if args.command == "explain":
        from .explain.cli import run as run_explain

        return run_explain(args)
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
        try:
            return run(cfg, config_path=args.config, workers=args.workers, log_level=args.log_level)
        except PortInUseError as exc:
            print(f"gateway: {exc.describe(args.config)}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    if args.command == "demo":
        cfg = _load(args.config)
        if cfg is None:
            return EXIT_CONFIG
        from .demo.runner import run_demo

        try:
            run_demo(cfg, config_path=args.config, client=not args.no_client)
        except PortInUseError as exc:
            print(f"gateway: {exc.describe(args.config)}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        return 0
    return 2
