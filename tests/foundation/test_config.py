"""Bad configuration gets a clear error at load that names the YAML path (and line)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

ROUTE = """
routes:
  - id: a
    match: {path_prefix: /a}
    upstream: http://127.0.0.1:9
    auth: none
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source="t.yaml")
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("listen: {prot: 1}\n" + ROUTE, "t.yaml:1: listen.prot: unknown key", id="unknown-key"),
        pytest.param("listen: {port: eighty}\n" + ROUTE, "listen.port: Input should be a valid integer",
                     id="wrong-type"),
        pytest.param("listen: {port: 70000}\n" + ROUTE, "listen.port: Input should be less than or equal",
                     id="out-of-range"),
        pytest.param("admin: {}\n", "routes: required field is missing", id="missing-routes"),
        pytest.param(ROUTE.replace("http://127.0.0.1:9", "ftp://x"),
                     "t.yaml:5: routes[0].upstream: 'ftp://x': not a URL",
                     id="bad-upstream"),
        pytest.param(ROUTE.replace("auth: none", "auth: nothing"), "routes[0].auth: Input should be 'none'",
                     id="auth-typo"),
        pytest.param(ROUTE.replace("    auth: none\n", ""), "routes[0].auth: required field is missing",
                     id="auth-required"),
        pytest.param(ROUTE + ROUTE.replace("routes:\n", "").replace("id: a", "id: b"),
                     "routes[1].match: same match as routes[0]; this route can never match", id="overlap"),
        pytest.param(ROUTE + ROUTE.replace("routes:\n", "").replace("/a}", "/b}"),
                     "routes[1].id: duplicate of routes[0].id", id="duplicate-id"),
        pytest.param("listen:\n  tls: {cert: /nonexistent.pem, key: /nonexistent-key.pem, client_auth: none}\n"
                     + ROUTE, "t.yaml:2: listen.tls.cert: file not found: /nonexistent.pem", id="unreadable-cert"),
        pytest.param(ROUTE.replace("{path_prefix: /a}", "{path_prefix: a}"),
                     "routes[0].match.path_prefix: must start with /", id="bad-prefix"),
        pytest.param(ROUTE.replace("{path_prefix: /a}", "{path_prefix: /a, methods: [FETCH]}"),
                     "routes[0].match.methods[0]: unknown HTTP method 'FETCH'", id="bad-method"),
        pytest.param("upstreams: {u: {url: 'http://x', timeouts: {read_s: -1}}}\n" + ROUTE,
                     "upstreams.u.timeouts.read_s: Input should be greater than 0", id="bad-timeout"),
        pytest.param("listen:\n  port: ${NOPE_UNSET_VAR}\n" + ROUTE,
                     "listen.port: environment variable NOPE_UNSET_VAR is not set", id="env-unset"),
        pytest.param("listen: [\n", "not valid YAML", id="yaml-syntax"),
    ],
)
def test_bad_config_names_the_field(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_env_expansion_with_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_PORT", "9443")
    cfg = parse_config("listen:\n  port: ${GW_TEST_PORT}\n  host: ${GW_TEST_HOST:-127.0.0.2}\n" + ROUTE)
    assert cfg.listen.port == 9443
    assert cfg.listen.host == "127.0.0.2"


def test_config_is_immutable() -> None:
    cfg = parse_config(ROUTE)
    with pytest.raises(Exception, match="frozen"):
        cfg.routes[0].id = "b"  # type: ignore[misc]


def test_all_problems_reported_at_once() -> None:
    found = problems("listen: {port: x, host: 1, nope: 2}\n" + ROUTE)
    assert len(found) >= 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(ROUTE)
    r = _cli("check-config", str(good))
    assert r.returncode == 0, r.stderr
    assert "a " in r.stdout and "http://127.0.0.1:9" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(ROUTE.replace("http://127.0.0.1:9", "nope"))
    r = _cli("check-config", str(bad))
    assert r.returncode == 78
    assert "routes[0].upstream" in r.stderr


def test_dev_config_validates() -> None:
    """The demo's config (examples need their environment: tests/interop checks those)."""
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "gateway", "check-config", "config/dev.yaml"], cwd=root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_dev_certs_cli(tmp_path: Path) -> None:
    r = _cli("dev-certs", str(tmp_path / "certs"))
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "certs").iterdir()}
    assert {"ca.pem", "server.pem", "server-key.pem", "client-a.pem", "client-b.pem",
            "client-selfsigned.pem"} <= names
