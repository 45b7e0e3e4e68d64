"""``gateway demo``: the echo upstream, the demo issuer and the gateway in one process. DEV ONLY."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from ..config import GatewayConfig
from ..server import GatewayServer
from .upstream import build_echo_app

__all__ = ("run_demo",)

ECHO_PORT = 8081


def _banner(server: GatewayServer) -> str:
    port = server.port
    c = "--cacert certs/dev/ca.pem --cert certs/dev/client-a.pem --key certs/dev/client-a-key.pem"
    return f"""
fapi-gateway demo is running (DEV ONLY certificates from certs/dev/).
  gateway   https://localhost:{port}   (mTLS; client_auth optional)
  admin     http://127.0.0.1:{server.admin_port}/metrics  /healthz  /readyz
  upstream  http://127.0.0.1:{ECHO_PORT} (echo)

Try:
  curl -s {c} https://localhost:{port}/echo/hello
  curl -s -i --cacert certs/dev/ca.pem https://localhost:{port}/accounts     # 401 + WWW-Authenticate
Stop with Ctrl-C.
"""


async def _main(cfg: GatewayConfig) -> None:
    echo = web.AppRunner(build_echo_app(), access_log=None)
    await echo.setup()
    await web.TCPSite(echo, "127.0.0.1", ECHO_PORT).start()
    server = GatewayServer(cfg)
    await server.start()
    print(_banner(server), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
        await echo.cleanup()


def run_demo(cfg: GatewayConfig) -> None:
    asyncio.run(_main(cfg))
