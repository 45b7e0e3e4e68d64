"""Issue #21, the first hour of a new user: the demo shows DPoP, a taken port is one line, the CLI
helps, relative paths follow the config file, check-config reports everything in one run, and the
access log names whose token a binding or scope refusal was about.

The demo runs for real (a subprocess on free ports, its stdout read by a thread), from another
working directory than the repository, so the relative paths in config/dev.yaml are exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.config import load_config
from gateway.config.loader import parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "certs" / "dev"
DEV_YAML = ROOT / "config" / "dev.yaml"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(**extra: str) -> dict[str, str]:
    # The worktree's gateway package, whatever the working directory.
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    return env


class Demo:
    def __init__(self, proc: subprocess.Popen[str], ports: dict[str, int]) -> None:
        self.proc = proc
        self.ports = ports
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the demo's output:\n{self.text()}")

    def access_lines(self) -> list[dict[str, object]]:
        return [json.loads(ln) for ln in self.text().splitlines() if ln.startswith('{"time"')]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    gw, admin, echo, issuer = _free_ports(4)
    env = _env(GATEWAY_PORT=str(gw), GATEWAY_ADMIN_PORT=str(admin), DEMO_ECHO_PORT=str(echo),
               DEMO_ISSUER_PORT=str(issuer))
    cwd = tmp_path_factory.mktemp("elsewhere")  # not the repository: paths follow the config file
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--config", str(DEV_YAML)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    d = Demo(proc, {"gw": gw, "admin": admin, "issuer": issuer, "echo": echo})
    try:
        d.wait_for("stolen token")
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, d.text()


def test_demo_shows_dpop_its_replay_refused_and_mtls(demo: Demo) -> None:
    text = demo.wait_for("stolen token")
    calls = [ln for ln in text.splitlines() if ln.startswith(("  ok ", "  UNEXPECTED"))]
    assert [c.split()[:2] for c in calls] == [["ok", "200"], ["ok", "401"], ["ok", "401"], ["ok", "401"],
                                             ["ok", "200"], ["ok", "401"]], text
    assert "UNEXPECTED" not in text
    # Each refusal is shown with its error and challenge.
    replay = text[text.index("jti replay"):]
    assert 'error=invalid_dpop_proof  WWW-Authenticate: Bearer, DPoP error="invalid_dpop_proof"' in replay
    assert "htu" in text and "another URL" in text
    assert "client B's certificate" in text and 'error="invalid_token"' in text
    # The banner names the ports' variables and what SIGHUP does.
    assert "GATEWAY_PORT, GATEWAY_ADMIN_PORT, DEMO_ECHO_PORT, DEMO_ISSUER_PORT" in text
    assert "SIGHUP" in text


def test_access_log_names_the_token_of_a_binding_mismatch(demo: Demo) -> None:
    demo.wait_for('"reason":"binding_mismatch"')
    (mismatch,) = [r for r in demo.access_lines() if r["reason"] == "binding_mismatch"]
    # The stolen-token signal: whose token it was, although the request was refused.
    assert mismatch["status"] == 401 and mismatch["client_id"] == "demo-client"
    # A replayed proof is refused after the token was verified: named too.
    replays = [r for r in demo.access_lines() if r["reason"] == "dpop_replay"]
    assert replays and replays[0]["client_id"] == "demo-client"
    # A token that does not verify names nobody (its claims are not to be believed).
    r = _session(None).get(f"https://localhost:{demo.ports['gw']}/accounts/7",
                           headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401
    demo.wait_for('"path":"/accounts/7"')
    (bad,) = [r for r in demo.access_lines() if r["path"] == "/accounts/7"]
    assert bad["client_id"] is None


def _session(client: str | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(DEV / "ca.pem")
    if client:
        s.cert = (str(DEV / f"{client}.pem"), str(DEV / f"{client}-key.pem"))
    return s


def test_access_log_names_the_token_of_insufficient_scope(demo: Demo) -> None:
    a = _session("client-a")
    token = a.post(f"https://localhost:{demo.ports['issuer']}/token",
                   data={"grant_type": "client_credentials", "scope": "other", "client_id": "scoped-out"}
                   ).json()["access_token"]
    r = a.get(f"https://localhost:{demo.ports['gw']}/accounts/1", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    demo.wait_for('"reason":"insufficient_scope"')
    (line,) = [r for r in demo.access_lines() if r["reason"] == "insufficient_scope"]
    assert line["client_id"] == "scoped-out"


def test_no_server_banner_from_gateway_or_upstream(demo: Demo) -> None:
    # The echo upstream is aiohttp: its "Server: Python/... aiohttp/..." is not relayed either.
    r = _session(None).get(f"https://localhost:{demo.ports['gw']}/echo/x")
    assert r.status_code == 200 and "Server" not in r.headers
    direct = requests.get(f"http://127.0.0.1:{demo.ports['echo']}/x", timeout=5)
    assert "aiohttp" in direct.headers["Server"]  # so the test above could fail
    r = _session(None).get(f"https://localhost:{demo.ports['gw']}/accounts")
    assert r.status_code == 401 and "Server" not in r.headers


def test_demo_client_command_and_sighup_reload(demo: Demo) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "demo-client", "--gateway", f"https://localhost:{demo.ports['gw']}",
         "--issuer", f"https://localhost:{demo.ports['issuer']}", "--certs", str(DEV)],
        env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("  ok ") == 6
    demo.proc.send_signal(signal.SIGHUP)  # was: killed with exit 129
    demo.wait_for("config reloaded from")
    assert demo.proc.poll() is None
    r = _session(None).get(f"https://localhost:{demo.ports['gw']}/echo/after-reload")
    assert r.status_code == 200


def test_demo_client_against_nothing_says_so() -> None:
    (port,) = _free_ports(1)
    out = subprocess.run([sys.executable, "-m", "gateway", "demo-client", "--gateway", f"https://localhost:{port}",
                          "--issuer", f"https://localhost:{port}", "--certs", str(DEV)],
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "is `gateway demo` running?" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


# --- ports -----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["GATEWAY_PORT", "GATEWAY_ADMIN_PORT", "DEMO_ISSUER_PORT"])
def test_a_taken_port_is_one_line_naming_its_variable(which: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        gw, admin, echo, issuer = _free_ports(4)
        ports = {"GATEWAY_PORT": gw, "GATEWAY_ADMIN_PORT": admin, "DEMO_ECHO_PORT": echo,
                 "DEMO_ISSUER_PORT": issuer, which: port}
        out = subprocess.run([sys.executable, "-m", "gateway", "demo", "--no-client"], cwd=ROOT,
                             env=_env(**{k: str(v) for k, v in ports.items()}),
                             capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert out.returncode == 69, out.stdout + out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("gateway:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"port {port} " in errors[0] and f"set {which}=" in errors[0], errors[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_with_a_taken_admin_port(tmp_path: Path, workers: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        (gw,) = _free_ports(1)
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(f"listen: {{host: 127.0.0.1, port: {gw}}}\nadmin: {{port: {port}}}\n"
                       "routes: [{id: a, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1', auth: none}]\n")
        out = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(cfg), "--workers", workers], env=_env(),
                             capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert out.returncode == 69 and "Traceback" not in out.stderr, out.stderr
    assert f"port {port} (admin.port) on 127.0.0.1 is already in use; change admin.port in {cfg}" in out.stderr


def test_admin_default_port_is_not_prometheus() -> None:
    from gateway.config.schema import Admin

    assert Admin().port == 8442


# --- CLI -------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)


def test_version() -> None:
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("gateway ") and out.stdout.split()[1][0].isdigit()


def test_log_level_before_or_after_the_subcommand() -> None:
    assert _cli("--log-level", "debug", "check-config", str(DEV_YAML)).returncode == 0
    assert _cli("check-config", str(DEV_YAML), "--log-level", "WARNING").returncode == 0
    bad = _cli("check-config", str(DEV_YAML), "--log-level", "LOUD")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_run_honours_log_level_after_the_subcommand() -> None:
    from gateway import cli

    seen: dict[str, object] = {}

    def fake_run(cfg: object, **kw: object) -> int:
        seen.update(kw)
        return 0

    import gateway.server

    original = gateway.server.run
    gateway.server.run = fake_run  # type: ignore[assignment]
    try:
        assert cli.main(["run", "-c", str(DEV_YAML), "--log-level", "debug"]) == 0
    finally:
        gateway.server.run = original
    assert seen["log_level"] == "DEBUG"


@pytest.mark.parametrize("command", ["run", "demo", "demo-client", "check-config", "dev-certs"])
def test_subcommand_help_has_examples(command: str) -> None:
    out = _cli(command, "--help")
    assert out.returncode == 0 and "examples:" in out.stdout and f"gateway {command}" in out.stdout


# --- config: relative paths, check-config ----------------------------------------------------

def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    copy = tmp_path / "conf" / "gw.yaml"
    copy.parent.mkdir()
    shutil.copytree(DEV, tmp_path / "certs" / "dev")
    copy.write_text(DEV_YAML.read_text())
    cfg = load_config(copy)
    assert cfg.listen.tls is not None
    assert cfg.listen.tls.cert == str(tmp_path / "conf" / "../certs/dev/server.pem")
    assert Path(cfg.listen.tls.cert).resolve() == (tmp_path / "certs/dev/server.pem").resolve()
    # Moved away from its certificates: the error names the resolved path and the rule.
    lone = tmp_path / "x" / "lone" / "gw.yaml"
    lone.parent.mkdir(parents=True)
    lone.write_text(DEV_YAML.read_text())
    with pytest.raises(ConfigError) as err:
        load_config(lone)
    msg = str(err.value)
    assert "listen.tls.cert: file not found: ../certs/dev/server.pem" in msg
    assert f"relative to the config file's directory: {tmp_path / 'x/certs/dev/server.pem'}" in msg
    # --no-files: the same config checks without its files (a chart-rendered config, offline).
    assert load_config(lone, check_files=False).listen.tls is not None


def test_check_config_no_files_flag(tmp_path: Path) -> None:
    lone = tmp_path / "gw.yaml"
    lone.write_text(DEV_YAML.read_text())
    assert _cli("check-config", str(lone)).returncode == 78
    out = _cli("check-config", "--no-files", str(lone))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


BAD = """\
listen:
  port: ${FIRST_TEST_UNSET_PORT}
upstreams:
  a:
    url: http://127.0.0.1:8080/x?y=1
routes:
  - id: r1
    match: {path_prefix: /a}
    upstream: http://127.0.0.1:9000/?q=1
    auth: none
  - id: r2
    match: {path_prefix: /b}
    upstream: nothere
    auth:
      issuers: [ghost]
      scope: [x]
"""


def test_check_config_reports_everything_in_one_run() -> None:
    os.environ.pop("FIRST_TEST_UNSET_PORT", None)
    with pytest.raises(ConfigError) as err:
        parse_config(BAD, source="bad.yaml")
    text = "\n".join(err.value.problems)
    # The unset variable, with its line, in the same run as the schema's and the references' errors.
    assert "bad.yaml:2: listen.port: environment variable FIRST_TEST_UNSET_PORT is not set" in text
    assert "bad.yaml:5: upstreams.a.url: must not carry a query or fragment" in text
    assert "bad.yaml:16: routes[1].auth.scope: unknown key (did you mean `scopes`?)" in text
    assert "bad.yaml:9: routes[0].upstream: 'http://127.0.0.1:9000/?q=1': must not carry a query" in text
    assert "bad.yaml:13: routes[1].upstream: 'nothere' is neither a name under upstreams: nor a URL" in text
    assert "bad.yaml:15: routes[1].auth.issuers[0]: no issuer named 'ghost' under issuers:" in text
    # Not repeated as a type error of the emptied value.
    assert text.count("listen.port") == 1


def test_did_you_mean_in_nested_and_keyed_sections() -> None:
    cfg = ("upstreams: {u: {url: 'http://127.0.0.1:1', timeout: {connect_s: 1}}}\n"
           "routes: [{id: a, match: {path_prefx: /}, upstream: u, auth: none}]\n")
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, source="c.yaml")
    text = str(err.value)
    assert "upstreams.u.timeout: unknown key (did you mean `timeouts`?)" in text
    assert "routes[0].match.path_prefx: unknown key (did you mean `path_prefix`?)" in text


def test_reload_log_says_what_changed() -> None:
    from gateway.config.diff import describe_changes

    base = ("upstreams: {u: {url: 'http://127.0.0.1:1'}}\n"
            "routes:\n"
            "  - {id: a, match: {path_prefix: /a}, upstream: u, auth: none}\n"
            "  - {id: b, match: {path_prefix: /b}, upstream: u, auth: none}\n")
    old = parse_config(base)
    assert describe_changes(old, parse_config(base)) == "no changes"
    new = parse_config(base.replace("/b}", "/bb}").replace("  - {id: a,", "  - {id: c,")
                       + "proxy: {server_header: bank-api}\n")
    assert describe_changes(old, new) == "routes: +c -a ~b; proxy"


# --- examples for real authorization servers -------------------------------------------------

EXAMPLE_ENV = {
    "PUBLIC_ORIGIN": "https://api.bank.example", "KEYCLOAK_URL": "https://sso.bank.example",
    "KEYCLOAK_REALM": "bank", "KEYCLOAK_CA": str(DEV / "ca.pem"), "API_AUDIENCE": "https://api.bank.example",
    "GATEWAY_TLS_CERT": str(DEV / "server.pem"), "GATEWAY_TLS_KEY": str(DEV / "server-key.pem"),
    "CLIENT_CA": str(DEV / "ca.pem"), "UPSTREAM_URL": "http://127.0.0.1:8080",
    "DPOP_NONCE_KEY": "n" * 32, "AS_ISSUER": "https://as.bank.example",
}


@pytest.mark.parametrize("example", ["keycloak.yaml", "rfc8414-discovery.yaml"])
def test_authorization_server_examples_check(example: str) -> None:
    path = ROOT / "config" / "examples" / example
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--strict", str(path)],
                         env=_env(**EXAMPLE_ENV), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "OK" in out.stdout and "risky settings: none" in out.stdout, out.stderr


def test_keycloak_example_binds_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(ROOT / "config" / "examples" / "keycloak.yaml")
    discovery = load_config(ROOT / "config" / "examples" / "rfc8414-discovery.yaml")
    kinds = {r.id: r.auth.sender_constraint for r in cfg.routes if not isinstance(r.auth, str)}
    assert kinds == {"accounts": "any", "payments": "mtls", "consents": "dpop"}
    assert cfg.issuers[0].issuer == "https://sso.bank.example/realms/bank"
    assert cfg.issuers[0].jwks_uri and cfg.issuers[0].jwks_uri.endswith("/protocol/openid-connect/certs")
    assert discovery.issuers[0].discovery is True and discovery.issuers[0].jwks_uri is None


def test_server_header_policy() -> None:
    from multidict import CIMultiDict

    from gateway.proxy.headers import HeaderPolicy

    upstream = CIMultiDict({"Server": "nginx/1.25.3", "Content-Type": "text/plain"})
    assert "Server" not in HeaderPolicy().client_response_headers(upstream)
    assert HeaderPolicy(server_header="bank-api").client_response_headers(upstream).getall("Server") == ["bank-api"]
    assert HeaderPolicy(relay_upstream_server=True).client_response_headers(upstream)["Server"] == "nginx/1.25.3"
    with pytest.raises(ConfigError, match=r"proxy\.server_header"):
        parse_config("proxy: {server_header: \"a\\nb\"}\nroutes: []\n")
