"""Start, probe and stop the servers under test; every one binds 127.0.0.1 only.

Each server runs in its own process group (so its workers/children can be found and stopped),
with its own config in benchmarks/out/, never as a system service.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .material import AUDIENCE, Material, dpop_proof

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PATH = "/api/accounts"
BODY = '{"data":{"account":[{"accountId":"22289","currency":"GBP","nickname":"Bills"}]}}'


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A currently free port on 127.0.0.1, never the same one twice in this run."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Proc:
    """A server process we started, in its own session so its whole group can be stopped."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as fh:
            self.popen = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **(env or {})}, cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 3) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])[-400:]

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


STARTED: list[Proc] = []


def stop_all() -> None:
    while STARTED:
        STARTED.pop().stop()


def start(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    p = Proc(name, argv, log, env)
    STARTED.append(p)
    return p


def wait_port(port: int, proc: Proc, timeout: float = 25.0) -> str | None:
    """None when the port accepts connections, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            return f"exited with {proc.popen.returncode}: {proc.tail()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.2)
    return f"port {port} not open after {timeout:.0f}s: {proc.tail()}"


# --- nginx -----------------------------------------------------------------------------------

_NGINX_HEAD = """worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server_tokens off;
  keepalive_timeout 120s;
  keepalive_requests 100000000;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  default_type application/json;
"""

_TLS = """    ssl_certificate {m.server_cert};
    ssl_certificate_key {m.server_key};
    ssl_client_certificate {m.ca};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
"""


def nginx_upstream_conf(prefix: Path, m: Material, up_port: int, direct_port: int) -> str:
    """The fast upstream (plain HTTP) plus the same answer over mTLS ("nginx direct")."""
    return (
        _NGINX_HEAD.format(prefix=prefix)
        + f"  server {{\n    listen 127.0.0.1:{up_port};\n    location / {{ return 200 '{BODY}'; }}\n  }}\n"
        + f"  server {{\n    listen 127.0.0.1:{direct_port} ssl;\n"
        + _TLS.format(m=m)
        + f"    location / {{ return 200 '{BODY}'; }}\n  }}\n}}\n"
    )


def nginx_proxy_conf(prefix: Path, m: Material, up_port: int, port: int) -> str:
    """nginx as the mTLS reverse proxy reference: no token checks, keep-alive pool upstream."""
    return (
        _NGINX_HEAD.format(prefix=prefix)
        + f"  upstream up {{\n    server 127.0.0.1:{up_port};\n    keepalive 128;\n"
        + "    keepalive_requests 100000000;\n  }\n"
        + f"  server {{\n    listen 127.0.0.1:{port} ssl;\n"
        + _TLS.format(m=m)
        + "    location / {\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n"
        + '      proxy_set_header Connection "";\n    }\n  }\n}\n'
    )


def start_nginx(name: str, out: Path, conf: Callable[[Path], str]) -> Proc:
    prefix = out / name
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    (prefix / "nginx.conf").write_text(conf(prefix))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return start(
        name,
        [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf"),
         "-g", "daemon off;"],
        out / f"{name}.log",
    )


# --- probes ----------------------------------------------------------------------------------

@dataclass
class Probe:
    """How a candidate is called: what the load generator sends and which refusals prove checks."""

    auth: str  # dpop | bearer | none
    token: str
    checks: bool  # must refuse a request without credentials


def _client_ctx(m: Material) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(m.ca))
    ctx.load_cert_chain(str(m.client_cert), str(m.client_key))
    return ctx


def _get(m: Material, port: int, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=_client_ctx(m), timeout=15)
    try:
        conn.request("GET", PATH, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(300).decode(errors="replace")
    finally:
        conn.close()


def probe(m: Material, port: int, p: Probe) -> str | None:
    """None when a valid request passes (and, with checks on, a bare one is refused), else why not."""
    headers: dict[str, str] = {}
    if p.auth == "dpop":
        headers["Authorization"] = "DPoP " + p.token
        headers["DPoP"] = dpop_proof(m.hot_key, "GET", f"https://127.0.0.1:{port}{PATH}", p.token)
    elif p.auth == "bearer":
        headers["Authorization"] = "Bearer " + p.token
    try:
        status, body = _get(m, port, headers)
        if status != 200:
            return f"valid request got HTTP {status}: {body[:160]}"
        if p.checks:
            status, body = _get(m, port, {})
            if status != 401:
                return f"request without a token got HTTP {status}, expected 401"
    except (OSError, http.client.HTTPException) as exc:
        return f"probe failed: {type(exc).__name__}: {exc}"
    return None


@dataclass
class Candidate:
    key: str
    title: str
    port: int
    probe: Probe
    clients: Path | None
    many: bool  # also run the many-distinct-tokens scenario
    group: str  # "baseline" | "gateway"
    launch: Callable[[], list[Proc]]
    procs: list[Proc] = field(default_factory=list)
    not_run: str | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def gateway_env(m: Material, port: int, admin_port: int, up_port: int, as_port: int) -> dict[str, str]:
    """Values for the ${VAR}s in benchmarks/gateway/*.yaml."""
    return {
        "BENCH_PORT": str(port),
        "BENCH_ADMIN_PORT": str(admin_port),
        "BENCH_UPSTREAM": f"http://127.0.0.1:{up_port}",
        "BENCH_CERT": str(m.server_cert),
        "BENCH_KEY": str(m.server_key),
        "BENCH_CA": str(m.ca),
        "BENCH_ISSUER": m.issuer,
        "BENCH_JWKS_URI": f"http://127.0.0.1:{as_port}/jwks.json",
        "BENCH_JWKS_FILE": str(m.jwks),
        "BENCH_INTROSPECT_URL": f"http://127.0.0.1:{as_port}/introspect",
        "BENCH_AUDIENCE": AUDIENCE,
        "BENCH_OUT": str(m.dir),
    }
