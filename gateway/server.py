"""Running the gateway: listeners, hot reload, graceful shutdown and worker processes.

One process (``GatewayServer``) runs a public listener (TLS) and an admin listener on one event
loop (uvloop when installed). Its life cycle:

* **reload** (SIGHUP, or the config file changed on disk): the file is read and validated off
  the event loop, a new ``GatewayState`` is built and started, then swapped in. A request keeps
  the state it started with; the old state is closed once its last request has finished. A file
  that does not validate (or whose state fails to start) changes nothing: it is logged and counted
  (``gateway_config_reloads_total{result="failure"}``). Listener, admin and worker settings are
  fixed for the life of the process: a reload that changes them applies the rest and says so
  (WARNING naming the fields, ``result="partial"``, ``gateway_config_restart_required``).
* **shutdown** (SIGTERM/SIGINT): ``/readyz`` turns false, the listener keeps serving for
  ``lifecycle.shutdown_delay_s`` (load balancers notice), then stops accepting; in-flight requests
  get ``lifecycle.shutdown_grace_s`` to finish; then the process exits 0.
* **workers** (``--workers N`` or ``lifecycle.workers``): a supervisor starts N worker processes
  that each bind the same ports with SO_REUSEPORT (the kernel spreads connections) and run their
  own event loop (``gateway.supervisor``). It forwards SIGHUP/SIGTERM to them and restarts a worker
  that dies. Any worker's ``/metrics`` reports all of them (``observability/multiprocess.py``,
  siblings' numbers at most a second old); ``/readyz`` answers for the worker that gets the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .admin import Readiness, build_admin_app
from .app import GatewayHandler, GatewayState, StateHolder, build_handler, build_state
from .config import GatewayConfig, load_config
from .config.diff import describe_changes
from .config.dpop import check_process
from .config.risks import log_risks
from .errors import ConfigError
from .listener import ConnectionGuard, GuardedServer, GuardedSite
from .observability.accesslog import AccessLog
from .observability.certs import certificate_files
from .observability.health import RedisProbe, stage_ready
from .observability.logsetup import configure_logging
from .observability.metrics import Metrics
from .observability.multiprocess import ENV_DIR, SharedMetrics
from .observability.observer import Observer
from .observability.tls import count_handshake_failures
from .parsers import require_c_parsers
from .ports import binding
from .tls.clientcerts import ClientCertificates
from .wire import AdminRunner

__all__ = ("GatewayServer", "run")

if TYPE_CHECKING:
    from .decision.service import DecisionService

log = logging.getLogger("gateway")


def _bound_port(site: web.BaseSite) -> int:
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    assert server is not None
    sockets: list[socket.socket] = list(getattr(server, "sockets", ()))
    return int(sockets[0].getsockname()[1])


def _fingerprint(path: str) -> tuple[int, int, int, int] | None:
    """Cheap change detector. ``os.stat`` follows symlinks, so a Kubernetes ConfigMap update
    (an atomic swap of the ``..data`` symlink) shows up as a new inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


# Settings bound when the process starts (sockets, TLS context, client-certificate stage, the
# worker layout, the metrics registry): a reload cannot apply them. Everything else in the file,
# including listen.trusted_proxies / external_origin and client_certs.strip_headers, is applied.
_RESTART_ONLY = (
    "listen.host", "listen.port", "listen.tls",
    "admin.host", "admin.port",
    "client_certs.front_proxy", "client_certs.self_signed", "client_certs.crl_files",
    "client_certs.watch_interval_s", "client_certs.max_chain_depth", "client_certs.require_client_auth_usage",
    "client_certs.forward",
    "lifecycle.workers", "lifecycle.reload",
    "decision.enabled", "decision.grpc", "decision.http", "decision.tls",
    "observability.metrics",
    "observability.tracing",  # the tracer provider and exporter are set up once per process
)


def _restart_only_changes(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Dotted names of the settings in ``new`` that differ from those the process started with."""
    def get(cfg: GatewayConfig, dotted: str) -> object:
        section, name = dotted.split(".")
        return getattr(getattr(cfg, section), name)

    return [name for name in _RESTART_ONLY if get(running, name) != get(new, name)]


class GatewayServer:
    """Public + admin listeners for one process. ``port``/``admin_port`` are the bound ports."""

    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        reuse_port: bool = False,
        metrics: Metrics | None = None,
        readiness: Readiness | None = None,
        ssl_context: ssl.SSLContext | None = None,
        config_path: str | None = None,
        access_log: AccessLog | None = None,
        workers: int = 1,
    ) -> None:
        self.cfg = cfg
        # Worker processes this one runs among: every reloaded config is checked against it.
        self.workers = workers
        # What the listeners were started with: a reload is compared with this, not with the
        # previous reload (whose restart-only changes never took effect).
        self.boot_cfg = cfg
        self.reuse_port = reuse_port
        self.metrics = metrics or Metrics(
            route_ids=[r.id for r in cfg.routes],
            issuers=[i.name for i in cfg.issuers],
            latency_histograms=cfg.observability.metrics.latency_histograms,
        )
        self.readiness = readiness or Readiness()
        self.ssl_context = ssl_context
        self.config_path = config_path
        self.access_log = access_log
        self.port = 0
        self.admin_port = 0
        self.decision: DecisionService | None = None
        self.handler: GatewayHandler | None = None
        self._runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._redis: RedisProbe | None = None
        self._shared: SharedMetrics | None = None
        self.client_certs: ClientCertificates | None = None
        self.connections: ConnectionGuard | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._retiring: set[GatewayState] = set()
        self._reload_lock = asyncio.Lock()
        self._config_digest: bytes | None = None
        self._tracing = False

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        require_c_parsers()  # a laxer pure-Python HTTP parser would be a smuggling risk (parsers.py)
        cfg = self.cfg
        if self.access_log is None:
            self.access_log = AccessLog(cfg.observability.access_log)
        self.access_log.on_drop = self.metrics.access_log_lost  # gateway_access_log_dropped_lines_total
        # Expiry of the listener's certificate and every CA bundle of the running config (issue #19).
        self.metrics.watch_certificates(lambda: certificate_files(self.cfg))
        self.metrics.watch_state(lambda: self.handler.holder.current if self.handler is not None else None)
        if self.config_path is not None:
            self._config_digest = self._digest()
        if cfg.observability.tracing.enabled:  # before any stage opens an HTTP client (issue #19)
            try:
                from .observability.tracing import setup_tracing
            except ImportError as exc:  # the optional extra is not installed: say which
                raise ConfigError([f"observability.tracing.enabled: needs the otel extra "
                                   f"(pip install 'fapi-gateway[otel]'): {exc}"]) from None
            self._tracing = setup_tracing(cfg.observability.tracing) is not None
        # The listener's client-certificate stage outlives config reloads: every state borrows it.
        metrics = self.metrics
        self.client_certs = ClientCertificates(cfg, on_untrusted_header=metrics.front_proxy_cert_dropped)
        await self.client_certs.start()
        state = build_state(cfg, self.metrics, self.client_certs)
        self.handler = build_handler(cfg, state=state, observer=Observer(self.metrics, self.access_log))
        if cfg.listen.tls is not None and self.ssl_context is None:
            # Hot-reloaded (cert/key/CA/anchors) by the client-certificate stage's TlsContextManager.
            self.ssl_context = self.client_certs.listening_context
        if self.ssl_context is not None:
            count_handshake_failures(self.ssl_context, self.metrics.tls_handshake_failed)
        await self.handler.start()  # the state's stages: JWKS, Redis pool, ...
        # Slow-client deadlines and the connection cap: gateway/listener.py.
        limits = cfg.listen.limits
        self.connections = ConnectionGuard(
            limits, on_close=metrics.connection_closed, on_open_change=metrics.connections_open.set
        )
        self._runner = web.ServerRunner(
            GuardedServer(self.handler, guard=self.connections, on_malformed=metrics.malformed_request,
                          access_log=None, max_field_size=16384, server_header=self._server_header),
            handle_signals=False, shutdown_timeout=cfg.lifecycle.shutdown_grace_s,
        )
        await self._runner.setup()
        site = GuardedSite(
            self._runner, cfg.listen.host, cfg.listen.port, ssl_context=self.ssl_context,
            reuse_port=self.reuse_port or None, backlog=1024, handshake_timeout_s=limits.handshake_timeout_s,
        )
        with binding("listen.port", cfg.listen.host, cfg.listen.port):
            await site.start()
        self.port = _bound_port(site)

        self._install_readiness_checks()
        render = self.metrics.render
        shared_dir = os.environ.get(ENV_DIR)
        if shared_dir and self.reuse_port:
            # A worker among siblings: answer scrapes for all of them (observability/multiprocess.py).
            self._shared = SharedMetrics(shared_dir, self.metrics.render)
            await self._shared.start()
            render = self._shared.render
        if not cfg.observability.metrics.enabled:
            def render() -> bytes:
                return b"# metrics disabled (observability.metrics.enabled: false)\n"
        admin = build_admin_app(self.readiness, render, token=cfg.admin.token,
                                revocation=lambda: self.holder.current.revocation,
                                rate_limits=lambda: self.holder.current.pipeline.limits)
        self._admin_runner = AdminRunner(admin, on_malformed=self.metrics.malformed_request, access_log=None,
                                         handle_signals=False, shutdown_timeout=1)
        await self._admin_runner.setup()
        admin_site = web.TCPSite(
            self._admin_runner, cfg.admin.host, cfg.admin.port, reuse_port=self.reuse_port or None
        )
        with binding("admin.port", cfg.admin.host, cfg.admin.port):
            await admin_site.start()
        self.admin_port = _bound_port(admin_site)
        if cfg.dpop.replay.backend == "redis":
            self._redis = RedisProbe(cfg.dpop.replay.redis)
            await self._redis.start()
        if cfg.decision.enabled:  # ext_authz / auth_request / forwardAuth listeners (issue #15)
            from .decision.service import DecisionService

            self.decision = DecisionService(cfg.decision, self.holder, self.handler.observer,
                                            reuse_port=bool(self.reuse_port), readiness=self.readiness)
            await self.decision.start()
            self.readiness.add_check("decision", self.decision.ready)
        self.readiness.listening = True
        if self.config_path is not None and cfg.lifecycle.reload.watch_file:
            self._spawn(self._watch_file(cfg.lifecycle.reload.poll_interval_s))
        libc = _libc()
        if libc is not None:
            self._spawn(_trim_periodically(libc.malloc_trim))
        log.info("gateway listening on %s:%d (admin %s:%d) pid %d", cfg.listen.host, self.port,
                 cfg.admin.host, self.admin_port, os.getpid())
        self.metrics.config_risks((r.id, r.label) for r in log_risks(cfg, log))

    def _server_header(self) -> str | None:
        """``proxy.server_header`` of the config in force, for responses made before a route matched."""
        return self.handler.holder.current.cfg.proxy.server_header if self.handler is not None else None

    @property
    def holder(self) -> StateHolder:
        assert self.handler is not None, "start() first"
        return self.handler.holder

    @property
    def state_holder(self) -> StateHolder:
        return self.holder

    def _install_readiness_checks(self) -> None:
        def config_loaded() -> bool:
            return self.handler is not None and self.holder.current is not None

        def stages() -> bool:
            return all(stage_ready(lc) for lc in getattr(self.holder.current, "_lifecycles", ()))

        def redis() -> bool:
            return self._redis is None or self._redis.ok

        self.readiness.add_check("config", config_loaded)
        self.readiness.add_check("keys", stages)
        self.readiness.add_check("redis", redis)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reload -----------------------------------------------------------------------------

    def _digest(self) -> bytes | None:
        try:
            return hashlib.sha256(Path(self.config_path or "").read_bytes()).digest()
        except OSError:
            return None

    async def reload(self) -> bool:
        """Validate the config file and, if good, switch to it. False: the running config stays."""
        if self.config_path is None or self.handler is None:
            return False
        async with self._reload_lock:
            self._config_digest = await asyncio.to_thread(self._digest)
            try:
                new_cfg = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                log.error("config reload refused, keeping the running config: %s", exc)
                self.metrics.config_reload(False)
                return False
            problem = check_process(new_cfg, self.workers)
            if problem:
                log.error("config reload refused, keeping the running config: %s: %s", self.config_path, problem)
                self.metrics.config_reload(False)
                return False
            new_state: GatewayState | None = None
            try:
                new_state = build_state(new_cfg, self.metrics, self.client_certs, self.holder.current)
                await new_state.start()
            except Exception as exc:  # anything the new state cannot do keeps the old one
                log.error("config reload refused, keeping the running config: %s: %s",
                          type(exc).__name__, exc)
                if new_state is not None:
                    with contextlib.suppress(Exception):
                        await new_state.close()
                self.metrics.config_reload(False)
                return False
            fixed = _restart_only_changes(self.boot_cfg, new_cfg)
            changes = describe_changes(self.cfg, new_cfg)  # for the log line: what this reload did
            holder = self.holder
            old, holder.current = holder.current, new_state
            self.cfg = new_cfg
            if new_cfg.observability.access_log != old.cfg.observability.access_log:
                self._swap_access_log(new_cfg)
            logging.getLogger().setLevel(new_cfg.observability.log_level.upper())
            self.metrics.config_reload(True, restart_required=tuple(fixed))
            self.metrics.config_risks((r.id, r.label) for r in log_risks(new_cfg, log))
            self._spawn(self._retire(old))
            if fixed:
                # Not a success: part of the file is not in effect (and /metrics says so too).
                log.warning("config reloaded from %s (%d routes) EXCEPT %s: still running with the old "
                            "values until a restart; changed: %s", self.config_path, len(new_cfg.routes),
                            ", ".join(fixed), changes)
            else:
                log.info("config reloaded from %s (%d routes); changed: %s", self.config_path,
                         len(new_cfg.routes), changes)
            return True

    def _swap_access_log(self, cfg: GatewayConfig) -> None:
        assert self.handler is not None
        new_log = AccessLog(cfg.observability.access_log)
        new_log.on_drop = self.metrics.access_log_lost
        old_log, self.access_log = self.access_log, new_log
        self.handler.observer.access_log = new_log
        if old_log is not None:
            self._spawn(asyncio.to_thread(old_log.close))

    async def _retire(self, old: GatewayState) -> None:
        """Close a replaced state once the requests that started on it have finished."""
        self._retiring.add(old)
        deadline = time.monotonic() + max(self.cfg.lifecycle.shutdown_grace_s, 300.0)
        # Polled: an Event would cost every request a set/clear on the hot path.
        while old.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self._retiring.discard(old)
        await old.close()

    async def _watch_file(self, interval_s: float) -> None:
        assert self.config_path is not None
        seen = _fingerprint(self.config_path)
        while True:
            await asyncio.sleep(interval_s)
            now = _fingerprint(self.config_path)
            if now == seen or now is None:
                continue
            seen = now
            # Same bytes (e.g. a touch, or a ConfigMap re-sync): nothing to do.
            if await asyncio.to_thread(self._digest) == self._config_digest:
                continue
            log.info("config file changed: reloading")
            await self.reload()

    # -- stop -------------------------------------------------------------------------------

    async def shutdown(self, *, delay_s: float | None = None) -> None:
        """Graceful: not ready, keep serving ``delay_s``, stop accepting, drain, close."""
        self.readiness.draining = True
        delay = self.cfg.lifecycle.shutdown_delay_s if delay_s is None else delay_s
        if delay > 0:
            log.info("shutdown: not ready, still serving for %.1f s", delay)
            await asyncio.sleep(delay)
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()  # closes the listening socket: new connections are refused
        log.info("shutdown: listener closed, draining in-flight requests (up to %.1f s)",
                 self.cfg.lifecycle.shutdown_grace_s)
        await self.stop()

    async def stop(self) -> None:
        self.readiness.draining = True
        for task in list(self._background):
            task.cancel()
        if self.decision is not None:
            await self.decision.stop(self.cfg.lifecycle.shutdown_grace_s)
            self.decision = None
        if self._runner is not None:
            # Closes the listening socket, then waits up to shutdown_grace_s for running handlers.
            await self._runner.cleanup()
            self._runner = None
        if self.handler is not None:
            with contextlib.suppress(Exception):
                await self.handler.close()  # the current state's stages (the app's cleanup before)
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for old in list(self._retiring):
            self._retiring.discard(old)
            with contextlib.suppress(Exception):
                await old.close()
        if self._redis is not None:
            await self._redis.close()
        if self._shared is not None:
            await self._shared.close()
        if self.client_certs is not None:
            await self.client_certs.close()
            self.client_certs = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.close)
        if self._tracing:  # flushes queued spans (bounded by the exporter's timeout)
            from .observability.tracing import shutdown_tracing

            self._tracing = False
            await asyncio.to_thread(shutdown_tracing)


# --- process entry points ---------------------------------------------------------------------

async def _serve(server: GatewayServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_hup() -> None:
        server._spawn(_reload_quietly(server))

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await server.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down (pid %d)", os.getpid())
        await server.shutdown()


async def _reload_quietly(server: GatewayServer) -> None:
    try:
        await server.reload()
    except Exception:  # never let a reload bug kill the serving process
        log.exception("config reload failed unexpectedly; keeping the running config")
        server.metrics.config_reload(False)


def _tune_gc() -> None:
    """Fewer, cheaper collections: each request allocates many short-lived objects, and the
    default gen-0 threshold (700) makes the collector run every few requests. Objects alive after
    start-up (config, keys, modules) are frozen out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


# glibc's M_MMAP_THRESHOLD: allocations from this size up get their own mapping, returned to the
# system when freed. Left dynamic, glibc raises the threshold after the first large free, so the
# replay store's and caches' multi-MB hash tables land on the main heap on every resize, leaving
# holes that RSS keeps (~5 MB per 100k proofs until it plateaus; benchmarks/memsoak.py).
_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3


def _libc() -> Any:
    """glibc through ctypes, or None elsewhere (musl, macOS): the memory tuning is then skipped."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _tune_malloc() -> None:
    libc = _libc()
    if libc is not None and not os.environ.get("MALLOC_MMAP_THRESHOLD_"):  # else the operator chose
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


_TRIM_EVERY_S = 30.0


async def _trim_periodically(trim: Callable[[int], int]) -> None:
    """Hand glibc's free-but-held pages back to the system now and then: per-request buffers
    (headers, TLS records, bodies) of many sizes fragment the heap, and RSS otherwise creeps up
    under sustained load although the memory in use is flat (benchmarks/profile-notes.md)."""
    while True:
        await asyncio.sleep(_TRIM_EVERY_S)
        await asyncio.to_thread(trim, 0)  # a few ms; off the event loop (ctypes drops the GIL)


def run_loop(server: GatewayServer) -> None:
    """Serve until SIGTERM/SIGINT on a fresh event loop (uvloop when installed)."""
    _tune_malloc()
    _tune_gc()
    try:
        import uvloop
    except ImportError:  # optional extra
        asyncio.run(_serve(server))
    else:
        uvloop.run(_serve(server))


def run(
    cfg: GatewayConfig,
    *,
    config_path: str | None = None,
    workers: int | None = None,
    log_level: str | None = None,
) -> int:
    """Run until SIGTERM/SIGINT and return the exit code. ``config_path`` enables reloads."""
    level = log_level or cfg.observability.log_level
    configure_logging(level)
    n = workers or cfg.lifecycle.workers
    if n > 1:
        if config_path is None:
            raise ValueError("--workers needs a config file (each worker loads it)")
        from .supervisor import supervise

        life = cfg.lifecycle
        return supervise(config_path, n, level, life.shutdown_delay_s + life.shutdown_grace_s + 5)
    run_loop(GatewayServer(cfg, config_path=config_path))
    return 0
