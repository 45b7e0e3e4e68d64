"""Leaks (issue #13, finding 19), probed from outside like the review did: raw bytes over real
sockets to real gateway processes, the demo as a subprocess, ``check-config`` as a subprocess.

* malformed requests get a short fixed 400 (no echo of the input, an ``x-fapi-interaction-id``,
  ``Connection: close``), no traceback in the log, and are counted;
* no ``Server: Python/... aiohttp/...`` banner on any response of either listener;
* no token in the demo's stderr; no URL credentials in ``check-config`` output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gwproc import REPO, GatewayProcess, ThreadedUpstream

pytestmark = pytest.mark.timeout(120)

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0ifQ.c2lnbmF0dXJlc2VjcmV0"
OPAQUE = "opaque-access-token-0123456789abcdef"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

MALFORMED = {
    "bad-header-value-char": b"GET /open/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + TOKEN.encode()
    + b"\x01\r\n\r\n",
    "header-line-without-colon": b"GET /open/x HTTP/1.1\r\nHost: a\r\nAuthorization Bearer " + TOKEN.encode()
    + b"\r\n\r\n",
    "overlong-header": b"GET /open/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"A" * 20000
    + b"\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
    "invalid-chars-in-name": b"GET /open/x HTTP/1.1\r\nHost: a\r\nX-\x7fAuth: DPoP " + OPAQUE.encode()
    + b"\r\n\r\n",
    "bad-request-line": b"GET /open/x?t=" + TOKEN.encode() + b" HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    "second-request-bad": b"GET /open/ok HTTP/1.1\r\nHost: a\r\n\r\nGET /open/x HTTP/1.1\r\nHost: a\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\x00\r\n\r\n",
}
FIXED_BODY = {"error": "bad_request", "error_description": "malformed HTTP request"}


def _exchange(port: int, raw: bytes, *, tls: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        sock = tls.wrap_socket(plain, server_hostname="localhost") if tls else plain
        sock.sendall(raw)
        data = b""
        while True:  # Connection: close -> the server ends the stream
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
        return data


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split pipelined responses (each with Content-Length) into (status, headers, body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    up = ThreadedUpstream()
    path = tmp_path_factory.mktemp("leaks") / "gw.yaml"
    path.write_text(textwrap.dedent(f"""
        listen: {{host: 127.0.0.1, port: 0}}
        admin: {{host: 127.0.0.1, port: 0}}
        routes:
          - {{id: open, match: {{path_prefix: /open}}, upstream: "{up.url}", auth: none}}
    """))
    proc = GatewayProcess(path).started()
    yield proc
    proc.stop()
    up.close()


@pytest.mark.parametrize("listener", ["public", "admin"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_gets_a_fixed_400(gw: GatewayProcess, listener: str, case: str) -> None:
    port = gw.port if listener == "public" else gw.admin_port
    before = gw.metric("gateway_http_malformed_requests_total", listener=listener)
    data = _exchange(port, MALFORMED[case])
    assert TOKEN.encode() not in data and OPAQUE.encode() not in data and b"AAAA" not in data
    *first, (status, headers, body) = _responses(data)
    assert status == 400
    assert json.loads(body) == FIXED_BODY
    assert headers["content-type"].startswith("application/json")
    assert _UUID.match(headers["x-fapi-interaction-id"])
    assert headers["connection"] == "close"
    assert "server" not in headers
    assert all(s == 200 or listener == "admin" for s, _, _ in first)
    assert gw.metric("gateway_http_malformed_requests_total", listener=listener) == before + 1


def test_malformed_requests_leave_no_traceback_and_no_credentials_in_the_log(gw: GatewayProcess) -> None:
    for raw in MALFORMED.values():
        _exchange(gw.port, raw)
    time.sleep(0.3)
    err = "".join(gw.stderr)
    assert "Traceback" not in err and " ERROR " not in err
    assert TOKEN not in err and OPAQUE not in err and "[redacted" not in err


@pytest.mark.parametrize(("head", "late"), [
    pytest.param(b"Transfer-Encoding: chunked\r\n\r\n", b"ZZZ\r\nabc\r\n0\r\n\r\n", id="bad-chunk-after-head"),
    pytest.param(b"Content-Length: 10\r\n\r\n", b"abc", id="body-cut-short"),
    pytest.param(b"Content-Length: 200000\r\n\r\n", b"a" * 70000, id="streamed-body-cut-short"),
])
def test_broken_request_body_is_a_client_error_not_a_traceback(gw: GatewayProcess, head: bytes, late: bytes) -> None:
    """The body arrives after the handler started: aiohttp's payload parser fails (or the client
    hangs up) inside the forwarder. A 400 for the client if it still listens; no ERROR/traceback."""
    labels = {"route": "open", "method": "write", "status": "400", "reason": "bad_request_body"}
    before = gw.metric("gateway_requests_total", **labels)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /open/x HTTP/1.1\r\nHost: a\r\n" + head)
        time.sleep(0.3)  # the gateway is now forwarding, reading the body as it comes
        sock.sendall(late)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if data:
        assert data.startswith(b"HTTP/1.1 400 ") or data.startswith(b"HTTP/1.0 400 "), data
    deadline = time.monotonic() + 5
    while gw.metric("gateway_requests_total", **labels) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.metric("gateway_requests_total", **labels) == before + 1
    err = "".join(gw.stderr)
    assert "Traceback" not in err and " ERROR " not in err, err[-3000:]


def test_no_server_banner_on_either_listener(gw: GatewayProcess) -> None:
    public = [
        b"GET /open/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  # proxied
        b"GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  # the gateway's own 404
        b"TRACE /open/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  # 405
    ]
    admin = [
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ]
    for port, requests in ((gw.port, public), (gw.admin_port, admin)):
        for raw in requests:
            (status, headers, _), = _responses(_exchange(port, raw))
            assert "aiohttp" not in headers.get("server", ""), (raw, headers)
            if status != 200 or port == gw.admin_port:
                # Answered by the gateway itself (not relayed from the upstream): no Server at all.
                assert "server" not in headers, (raw, headers)


# -- gateway demo ---------------------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_demo_never_writes_a_token_to_stderr(tmp_path: Path) -> None:
    gw_port, admin, echo, issuer = _free_ports(4)
    env = {**os.environ, "GATEWAY_PORT": str(gw_port), "GATEWAY_ADMIN_PORT": str(admin),
           "DEMO_ECHO_PORT": str(echo), "DEMO_ISSUER_PORT": str(issuer), "PYTHONUNBUFFERED": "1"}
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            banner, deadline = "", time.monotonic() + 60
            while "Stop with Ctrl-C" not in banner and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                banner += line
            assert "demo is running" in banner, err_path.read_text()
            tls = ssl.create_default_context(cafile=str(REPO / "certs" / "dev" / "ca.pem"))
            for raw in MALFORMED.values():
                _exchange(gw_port, raw, tls=tls)
            # And a well-formed request with a (bad) token: refused, never logged.
            _exchange(gw_port, b"GET /accounts/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n", tls=tls)
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    text = err_path.read_text()
    assert TOKEN not in text and OPAQUE not in text
    assert "Traceback" not in text


def test_every_cli_entry_point_installs_the_redaction_filter(tmp_path: Path) -> None:
    from gateway.cli import main
    from gateway.observability.logsetup import RedactingFilter

    path = tmp_path / "gw.yaml"
    path.write_text("routes: [{id: r, match: {path: /x}, upstream: 'http://127.0.0.1:9', auth: none}]\n")
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        for h in saved:
            root.removeHandler(h)
        assert main(["check-config", str(path)]) == 0
        assert root.handlers and all(
            any(isinstance(f, RedactingFilter) for f in h.filters) for h in root.handlers
        )
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)


# -- check-config -----------------------------------------------------------------------------------

def test_check_config_never_prints_url_credentials(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent("""
        listen: {host: 127.0.0.1}
        upstreams:
          named: {url: "https://svc:s3cret-named@accounts.internal:8443"}
        routes:
          - {id: a, match: {path_prefix: /a}, upstream: named, auth: none}
          - {id: b, match: {path_prefix: /b}, upstream: "http://user:s3cret-inline@127.0.0.1:9", auth: none}
    """))
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        issuers:
          - {name: as, issuer: "https://as.example", jwks_uri: "http://gw:s3cret-jwks@as.example/jwks"}
        dpop: {replay: {backend: redis, redis: {url: "http://:s3cret-redis@10.0.0.5:6379/0"}}}
        routes:
          - {id: c, match: {path_prefix: /c}, upstream: "ftp://u:s3cret-up@h", auth: none}
    """))
    outputs = {}
    for path, code in ((good, 0), (bad, 78)):
        done = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        outputs[path] = done.stdout + done.stderr
        assert "s3cret" not in outputs[path], outputs[path]
    # Only the credentials go: host and port stay readable.
    assert "https://[redacted]@accounts.internal:8443" in outputs[good]
    assert "http://[redacted]@as.example/jwks" in outputs[bad]
