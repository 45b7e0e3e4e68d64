"""``gateway explain --config FILE REQUEST``: argument handling only (``gateway.cli`` wires it)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..observability.logsetup import redact

__all__ = ("add_parser", "parse_time", "run")

EXIT_USAGE = 2
EXIT_CONFIG = 78


def add_parser(sub: Any, common: Any = None) -> None:
    # common: the shared options (--log-level) accepted after the subcommand too.
    p = sub.add_parser(
        "explain", parents=[common] if common is not None else [],
        help="why a captured request gets the answer it gets (offline, the gateway's own code)",
        description="Runs a captured request through the gateway's own decision for --config and prints every "
                    "step with pass/fail and the reason, and the exact answer (status, WWW-Authenticate). "
                    "Never contacts an upstream; offline unless --online. Exit: 0 allowed, 1 refused, "
                    "3 undetermined offline, 4 would be refused (report-only route).")
    p.add_argument("--config", "-c", required=True, help="gateway YAML file")
    p.add_argument("request", help="file with a raw HTTP request, a curl command line or a HAR file ('-': stdin)")
    p.add_argument("--cert", help="the client certificate the request was sent with (PEM file)")
    p.add_argument("--at", help="judge at this time (ISO 8601, e.g. 2026-03-01T10:15:00Z, or Unix seconds); "
                                "default: now")
    p.add_argument("--online", action="store_true",
                   help="fetch JWKS / discovery and introspect at the authorization server (never the upstream)")
    p.add_argument("--jwks", action="append", default=[], metavar="ISSUER=FILE",
                   help="offline key set for an issuer whose keys come from jwks_uri or discovery (repeatable)")
    p.add_argument("--entry", type=int, help="HAR: the entry to explain (default: the first 4xx/5xx, else 0)")
    p.add_argument("--port", type=int, help="the listener port the request reached (default: listen.port)")
    p.add_argument("--remote", help="the client address the gateway saw (matters with listen.trusted_proxies)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at: {value!r} is neither ISO 8601 nor Unix seconds") from None
    if parsed.tzinfo is None:
        raise ValueError(f"--at: {value!r} has no time zone (add Z for UTC)")
    return parsed.timestamp()


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from . import EXIT_CODES, CaptureError, explain, parse_capture, to_json, to_text

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(redact(str(exc)), file=sys.stderr)
        return EXIT_CONFIG
    try:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text("utf-8", "replace")
        captured = parse_capture(text, entry=args.entry)
        at = parse_time(args.at) if args.at else None
        jwks = dict(_pair(v) for v in args.jwks)
        unknown = set(jwks) - {i.name for i in cfg.issuers}
        if unknown:
            raise ValueError(f"--jwks: no issuer named {', '.join(sorted(unknown))} in {args.config}")
        cert_file = args.cert or captured.cert_file
        cert = Path(cert_file).read_bytes() if cert_file else None
    except (OSError, ValueError, CaptureError) as exc:
        print(f"gateway explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(explain(cfg, captured, cert_pem=cert, at=at, online=args.online, jwks=jwks,
                                 port=args.port, remote=args.remote))
    print(to_json(result) if args.json else to_text(result))
    return EXIT_CODES.get(result.verdict, 1)


def _pair(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--jwks: expected ISSUER=FILE, got {value!r}")
    if not Path(path).is_file():
        raise ValueError(f"--jwks: {path} is not a file")
    return name, path
