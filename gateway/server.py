"""Running the gateway: the public listener (TLS), the admin listener, and their life cycle."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field

from aiohttp import web

from .admin import Readiness, build_admin_app
from .app import STATE, build_app, build_state
from .config import GatewayConfig
from .observability.metrics import Metrics
from .tls.context import build_server_context

__all__ = ("GatewayServer", "run")

log = logging.getLogger("gateway")


def _bound_port(site: web.BaseSite) -> int:
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    assert server is not None
    sockets: list[socket.socket] = list(getattr(server, "sockets", ()))
    return int(sockets[0].getsockname()[1])


@dataclass
class GatewayServer:
    """Public + admin listeners for one config. ``port``/``admin_port`` are the bound ports."""

    cfg: GatewayConfig
    reuse_port: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    readiness: Readiness = field(default_factory=Readiness)
    port: int = 0
    admin_port: int = 0
    ssl_context: ssl.SSLContext | None = None
    _runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self) -> None:
        cfg = self.cfg
        state = build_state(cfg, self.metrics)
        app = build_app(cfg, state=state)
        self.app = app
        if cfg.listen.tls is not None and self.ssl_context is None:
            self.ssl_context = build_server_context(cfg.listen.tls)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(
            runner, cfg.listen.host, cfg.listen.port, ssl_context=self.ssl_context,
            reuse_port=self.reuse_port or None, backlog=1024,
        )
        await site.start()
        self.port = _bound_port(site)

        admin = build_admin_app(self.readiness, self.metrics.render)
        admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False)
        await admin_runner.setup()
        self._runners.append(admin_runner)
        admin_site = web.TCPSite(
            admin_runner, cfg.admin.host, cfg.admin.port, reuse_port=self.reuse_port or None
        )
        await admin_site.start()
        self.admin_port = _bound_port(admin_site)
        self.readiness.listening = True
        log.info("gateway listening on %s:%d (admin %s:%d)", cfg.listen.host, self.port,
                 cfg.admin.host, self.admin_port)

    @property
    def state_holder(self) -> object:
        return self.app[STATE]

    async def stop(self) -> None:
        self.readiness.draining = True
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()


async def _serve_forever(server: GatewayServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.stop()


def run(cfg: GatewayConfig) -> None:
    """Run until SIGTERM/SIGINT. Uses uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # optional extra
        asyncio.run(_serve_forever(GatewayServer(cfg)))
    else:
        uvloop.run(_serve_forever(GatewayServer(cfg)))
