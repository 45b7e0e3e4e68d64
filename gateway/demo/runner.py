"""``gateway demo``: the echo upstream, the demo issuer and the gateway in one process. DEV ONLY."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web
from yarl import URL

from ..config import AuthPolicy, GatewayConfig
from ..ports import binding
from ..server import GatewayServer
from ..tls.context import build_server_context
from .client import run_client
from .issuer import DemoIssuer, build_issuer_app
from .upstream import build_echo_app

__all__ = ("certs_dir", "run_demo")

log = logging.getLogger(__name__)


def certs_dir(cfg: GatewayConfig) -> Path:
    """The demo's certificates: those next to the gateway's own (certs/dev/ for config/dev.yaml)."""
    assert cfg.listen.tls is not None, "the demo config terminates TLS"
    return Path(cfg.listen.tls.cert).parent


_JQ = """python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'"""


def _banner(server: GatewayServer, echo_port: int, issuer_url: str) -> str:
    port = server.port
    client = "gateway demo-client" + (f" --gateway https://localhost:{port} --issuer {issuer_url}"
                                      if (port, issuer_url) != (8443, "https://localhost:8082") else "")
    a = "--cacert certs/dev/ca.pem --cert certs/dev/client-a.pem --key certs/dev/client-a-key.pem"
    b = "--cacert certs/dev/ca.pem --cert certs/dev/client-b.pem --key certs/dev/client-b-key.pem"
    return f"""
fapi-gateway demo is running (DEV ONLY certificates from certs/dev/).
  gateway   https://localhost:{port}   (mTLS, client certificate optional)
  admin     http://127.0.0.1:{server.admin_port}/metrics  /healthz  /readyz
  issuer    {issuer_url}  (demo AS: mints tokens bound to your cert or DPoP key)
  upstream  http://127.0.0.1:{echo_port}  (echo: shows what the gateway forwarded)

Try (from the repository root):
  # plain proxying, open route
  curl -s {a} https://localhost:{port}/echo/hello
  # no token: 401 with a challenge for each scheme the route accepts
  curl -s -i --cacert certs/dev/ca.pem https://localhost:{port}/accounts
  # a certificate-bound token (RFC 8705) for client A, used by client A: 200
  TOKEN=$(curl -s {a} -d grant_type=client_credentials -d scope=accounts \\
          {issuer_url}/token | {_JQ})
  curl -s {a} -H "Authorization: Bearer $TOKEN" https://localhost:{port}/accounts/42
  # the same token presented with client B's certificate: 401 invalid_token
  curl -s -i {b} -H "Authorization: Bearer $TOKEN" https://localhost:{port}/accounts/42
  # DPoP (curl cannot sign proofs): the calls below, again
  .venv/bin/{client}
Ports: GATEWAY_PORT, GATEWAY_ADMIN_PORT, DEMO_ECHO_PORT, DEMO_ISSUER_PORT move them.
SIGHUP (kill -HUP {os.getpid()}) reloads the config file, as `gateway run` does. Stop with Ctrl-C.
"""


async def _main(cfg: GatewayConfig, config_path: str | None, client: bool) -> None:
    echo = web.AppRunner(build_echo_app(), access_log=None)
    await echo.setup()
    # Ports come from the demo config (the echo upstream's URL, the demo issuer's URL).
    echo_port = URL(cfg.upstreams["echo"].url).port or 80
    with binding("upstreams.echo.url", "127.0.0.1", echo_port):
        await web.TCPSite(echo, "127.0.0.1", echo_port).start()
    assert cfg.listen.tls is not None, "the demo config terminates TLS"
    audience = next(r.auth.audience[0] for r in cfg.routes if isinstance(r.auth, AuthPolicy))
    issuer_url = cfg.issuers[0].issuer
    issuer = DemoIssuer(certs_dir(cfg) / "issuer-key.pem", issuer_url, audience=audience)
    issuer_runner = web.AppRunner(build_issuer_app(issuer), access_log=None)
    await issuer_runner.setup()
    issuer_port = URL(issuer_url).port or 443
    with binding("issuers[0].issuer", "127.0.0.1", issuer_port):
        await web.TCPSite(issuer_runner, "127.0.0.1", issuer_port,
                          ssl_context=build_server_context(cfg.listen.tls)).start()
    server = GatewayServer(cfg, config_path=config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Like `gateway run`: SIGHUP reloads the file (the demo issuer and echo keep their ports).
    async def reload() -> None:
        await server.reload()  # logs what it did; a bad file keeps the running config

    loop.add_signal_handler(signal.SIGHUP, lambda: server._spawn(reload()))
    try:
        await server.start()
        print(_banner(server, echo_port, issuer_url), flush=True)
        if client:
            origin = cfg.listen.external_origin or f"https://localhost:{server.port}"
            try:
                await run_client(origin, issuer_url, certs_dir(cfg), out=lambda line: print(line, flush=True))
            except Exception as exc:  # the demo keeps serving; the banner's calls still work
                log.error("demo client failed: %s: %s", type(exc).__name__, exc)
            print("", flush=True)
        await stop.wait()
    finally:
        await server.stop()
        await issuer_runner.cleanup()
        await echo.cleanup()


def run_demo(cfg: GatewayConfig, *, config_path: str | None = None, client: bool = True) -> None:
    asyncio.run(_main(cfg, config_path, client))
