"""A real gateway process for life-cycle tests: ``python -m gateway run --config FILE``.

stdout (the access log) and stderr (the process log) are collected by reader threads; the bound
ports are read from the "gateway listening on" line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PER_MODE = ("gateway_requests_total", "gateway_request_duration_seconds", "gateway_auth_duration_seconds")

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"gateway listening on [^:]+:(\d+) \(admin [^:]+:(\d+)\) pid (\d+)")


class GatewayProcess:
    def __init__(self, config: Path, *, workers: int | None = None, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
        if workers:
            argv += ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        self.port = self.admin_port = 0
        self.worker_pids: set[int] = set()

    def _pump(self, stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                sink.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 20.0, stream: str = "stderr") -> list[str]:
        rx = re.compile(pattern)
        sink = self.stderr if stream == "stderr" else self.stdout
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                hits = [ln for ln in sink if rx.search(ln)]
                if len(hits) >= count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not left):
                    raise AssertionError(f"no {pattern!r} in {stream}:\n{''.join(sink)[-4000:]}")
                self._changed.wait(min(left, 0.2))

    def started(self, *, workers: int = 1) -> GatewayProcess:
        lines = self.wait_for("gateway listening on", count=workers)
        for line in lines:
            m = _LISTENING.search(line)
            assert m
            self.port, self.admin_port = int(m.group(1)), int(m.group(2))
            self.worker_pids.add(int(m.group(3)))
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.admin("/metrics")
        assert status == 200
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        if name.startswith(PER_MODE) and "route" in labels:
            labels.setdefault("mode", "proxy")  # per mode since issue #15; these tests: the proxy
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def all_output(self) -> str:
        with self._lock:
            return "".join(self.stdout) + "".join(self.stderr)


class ThreadedUpstream:
    """A small HTTP/1.1 upstream in a thread: ``/slow?s=N`` sleeps N seconds, everything else echoes."""

    def __init__(self) -> None:
        import http.server
        import json
        from urllib.parse import parse_qs, urlsplit

        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers.items())))
                outer.arrived.set()
                parts = urlsplit(self.path)
                if parts.path.startswith("/slow"):
                    time.sleep(float(parse_qs(parts.query).get("s", ["1"])[0]))
                body = json.dumps({"path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
