"""Worker processes: N copies of the gateway sharing its ports (SO_REUSEPORT).

The supervisor binds nothing itself. It forwards SIGHUP (reload) and SIGTERM / SIGINT (graceful
shutdown) to all workers, and restarts a worker that dies, giving up when workers keep dying (or
exit with the config-error status 78). Exit status: 0 when every worker stopped cleanly.

On Linux workers are **forked** from the supervisor after its imports (issue #20): the ~40 MB heap
of imported modules is then shared copy-on-write between workers instead of rebuilt by each
(``gc.freeze()`` first, so the collector does not write to those pages). That is safe because the
supervisor never creates what a fork must not copy: no event loop (it polls with ``time.sleep``),
no thread, no socket, no Redis client, no TLS context; each worker loads the config and builds all
of those itself, after the fork, exactly as a spawned one. The signal handlers it inherits are
reset before anything else runs (signals are blocked across the fork, so none is lost or taken by
the supervisor's handler in the child). Elsewhere (macOS, Windows) workers are spawned.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import sys
import tempfile
import time

from .config import load_config
from .config.dpop import check_process
from .errors import ConfigError
from .observability.logsetup import configure_logging
from .observability.multiprocess import ENV_DIR
from .ports import PortInUseError
from .server import GatewayServer, run_loop

__all__ = ("supervise",)

log = logging.getLogger("gateway")

EXIT_PORT_IN_USE = 69  # EX_UNAVAILABLE, as `gateway run` with one worker

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# fork only where it is the platform's own safe default; elsewhere a fresh interpreter per worker.
START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


def _worker_main(config_path: str, log_level: str, workers: int) -> None:
    """Entry point of one worker process (forked or spawned: config, loop, sockets, clients and
    threads are all made here)."""
    # A forked worker has the supervisor's handlers (and the signals blocked around the fork): back
    # to the defaults a spawned worker starts with, until the worker's loop installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    configure_logging(log_level)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(78)
    # A restarted worker reads the file as it is now, which may no longer fit N workers.
    problem = check_process(cfg, workers)
    if problem:
        print(f"{config_path}: invalid configuration:\n  {problem}", file=sys.stderr)
        sys.exit(78)
    try:
        run_loop(GatewayServer(cfg, reuse_port=True, config_path=config_path, workers=workers))
    except PortInUseError as exc:  # one line, no traceback; the supervisor stops (see below)
        print(f"gateway: {exc.describe(config_path)}", file=sys.stderr)
        sys.exit(EXIT_PORT_IN_USE)


def supervise(config_path: str, workers: int, log_level: str, stop_timeout_s: float) -> int:
    """Start ``workers`` processes, forward SIGHUP/SIGTERM, restart crashed ones; 0 on clean stop."""
    # Where the workers leave metrics snapshots for each other (spawned children inherit the env).
    shared = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[ENV_DIR] = shared
    try:
        return _supervise(config_path, workers, log_level, stop_timeout_s)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _supervise(config_path: str, workers: int, log_level: str, stop_timeout_s: float) -> int:
    ctx = multiprocessing.get_context("fork") if START_METHOD == "fork" else multiprocessing.get_context("spawn")
    if START_METHOD == "fork":
        with contextlib.suppress(ImportError):  # the workers' loop: imported once, shared
            import uvloop  # noqa: F401
        # Everything alive now (modules, config schema) moves out of the collector's reach, so no
        # collection in a worker writes to (and unshares) the pages it inherited.
        gc.collect()
        gc.freeze()
    signals: list[int] = []

    def remember(signum: int, _frame: object) -> None:
        signals.append(signum)

    for sig in _SIGNALS:
        signal.signal(sig, remember)

    def start_one() -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=_worker_main, args=(config_path, log_level, workers), daemon=False)
        # Blocked across the fork: a signal meant for the supervisor is taken after it (here), and
        # one sent to a new worker waits until the worker has reset its handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        return p

    procs = [start_one() for _ in range(workers)]
    log.info("supervisor pid %d: %d workers (%s)", os.getpid(), workers, ", ".join(str(p.pid) for p in procs))
    recent_deaths: list[float] = []
    while True:
        while signals:
            got = signals.pop(0)
            if got == signal.SIGHUP:
                for p in procs:
                    if p.pid is not None and p.is_alive():
                        os.kill(p.pid, signal.SIGHUP)
            else:
                return _stop_workers(procs, stop_timeout_s)
        for i, p in enumerate(procs):
            if p.is_alive():
                continue
            code = p.exitcode
            now = time.monotonic()
            recent_deaths = [t for t in recent_deaths if now - t < 30] + [now]
            if code == EXIT_PORT_IN_USE:  # another program holds the port: restarting cannot help
                log.error("worker %s could not bind its port; giving up", p.pid)
                _stop_workers(procs, stop_timeout_s)
                return EXIT_PORT_IN_USE
            if code == 78 or len(recent_deaths) > 5 * workers:
                log.error("worker %s exited with %s; giving up", p.pid, code)
                _stop_workers(procs, stop_timeout_s)
                return 1
            log.error("worker %s exited with %s; restarting it", p.pid, code)
            procs[i] = start_one()
        time.sleep(0.1)


def _stop_workers(procs: list[multiprocessing.process.BaseProcess], timeout_s: float) -> int:
    for p in procs:
        if p.pid is not None and p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    code = 0
    for p in procs:
        if p.is_alive():
            log.error("worker %s did not stop in time; killing it", p.pid)
            p.kill()
            p.join()
            code = 1
        elif p.exitcode != 0:
            code = 1
    return code
