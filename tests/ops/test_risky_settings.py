"""Risky settings (issue #13, finding 18): refused unless acknowledged, warned otherwise, and shown
in ``check-config`` output and in the start-up / reload log. ``check-config`` runs as a real
process (``python -m gateway``), so exit codes and printed text are what an operator sees."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

from .gwproc import REPO, GatewayProcess

EX_CONFIG = 78

BASE = """
listen: {host: 127.0.0.1, port: 0}
admin: {host: 127.0.0.1, port: 0}
routes:
  - id: open
    match: {path_prefix: /open}
    upstream: http://127.0.0.1:9
    auth: none
"""


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


FRONT_PROXY_ANY = BASE + """
client_certs:
  front_proxy:
    format: rfc9440
    trusted_cidrs: [0.0.0.0/0]
"""


@pytest.mark.parametrize(("extra", "field", "risk"), [
    pytest.param("client_certs: {front_proxy: {trusted_cidrs: [10.0.0.1/32, 0.0.0.0/0]}}\n",
                 "client_certs.front_proxy.trusted_cidrs[1]", "front_proxy_any_source", id="front-proxy-v4-any"),
    pytest.param("client_certs: {front_proxy: {trusted_cidrs: ['::/0']}}\n",
                 "client_certs.front_proxy.trusted_cidrs[0]", "front_proxy_any_source", id="front-proxy-v6-any"),
    pytest.param("client_certs: {front_proxy: {trusted_cidrs: ['::ffff:0:0/96']}}\n",
                 "client_certs.front_proxy.trusted_cidrs[0]", "front_proxy_any_source", id="front-proxy-v4-mapped"),
    pytest.param("client_certs: {front_proxy: {trusted_cidrs: [0.0.0.0/1, 128.0.0.0/1]}}\n",
                 "client_certs.front_proxy.trusted_cidrs[0]", "front_proxy_any_source", id="front-proxy-halves"),
    pytest.param("listen: {host: 127.0.0.1, port: 0, trusted_proxies: [0.0.0.0/0]}\n",
                 "listen.trusted_proxies[0]", "trusted_proxies_any_source", id="trusted-proxies-any"),
    pytest.param("dpop: {replay: {on_unavailable: fail_open_safe_methods}}\n",
                 "dpop.replay.on_unavailable", "replay_fail_open", id="replay-fail-open"),
    pytest.param(
        "issuers: [{name: as, issuer: 'http://as.bank.example', jwks_uri: 'http://as.bank.example/jwks',"
        " allow_insecure_http: true}]\n",
        "issuers[0].allow_insecure_http", "issuer_insecure_http", id="issuer-http-remote"),
])
def test_refused_unless_acknowledged(tmp_path: Path, extra: str, field: str, risk: str) -> None:
    # BASE's listen: is replaced when the case brings its own.
    base = BASE.replace("listen: {host: 127.0.0.1, port: 0}\n", "") if extra.startswith("listen:") else BASE
    refused = check_config(tmp_path, base + extra)
    assert refused.returncode == EX_CONFIG, refused.stdout + refused.stderr
    assert field in refused.stderr and f"acknowledge_risks: [{risk}]" in refused.stderr
    assert "gw.yaml:" in refused.stderr  # file:line, like any bad config

    accepted = check_config(tmp_path, base + extra + f"acknowledge_risks: [{risk}]\n")
    assert accepted.returncode == 0, accepted.stderr
    # Acknowledged is not silent: the risk is listed with its path and id.
    assert f"ACKNOWLEDGED  {risk}" in accepted.stdout and field in accepted.stdout


def test_front_proxy_bypass_config_does_not_load() -> None:
    """The #13 probe: a forged Client-Cert from anywhere. The config that allowed it is refused."""
    with pytest.raises(ConfigError, match=r"front_proxy\.trusted_cidrs\[0\].*front_proxy_any_source"):
        parse_config(FRONT_PROXY_ANY, source="gw.yaml")


def test_broad_front_proxy_range_with_proxy_identity_is_a_warning() -> None:
    from gateway.config.risks import analyse

    cfg = parse_config(BASE + """
client_certs:
  front_proxy:
    trusted_cidrs: [0.0.0.0/0]
    trusted_identities: [{x5t_s256: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA}]
""")
    assert [(r.id, r.severity) for r in analyse(cfg)] == [("front_proxy_any_source", "warn")]


ROUTE = "routes: [{id: open, match: {path_prefix: /open}, upstream: 'http://127.0.0.1:9', auth: none}]\n"


@pytest.mark.parametrize(("listen", "admin", "rest", "risk"), [
    ("{host: 127.0.0.1}", "{host: 0.0.0.0}", ROUTE, "admin_non_loopback"),
    ("{host: 0.0.0.0}", "{host: 127.0.0.1}", ROUTE, "plaintext_listener_non_loopback"),
    ("{host: 127.0.0.1, trusted_proxies: [10.0.0.0/8]}", "{}", ROUTE, "trusted_proxies_broad_source"),
    ("{host: 127.0.0.1}", "{}", ROUTE + "client_certs: {front_proxy: {trusted_cidrs: [10.0.0.0/8]}}\n",
     "front_proxy_broad_source"),
    ("{host: 127.0.0.1}", "{}",
     "routes: [{id: all, match: {path_prefix: /}, upstream: 'http://127.0.0.1:9', auth: none}]\n",
     "open_catch_all_route"),
    ("{host: 127.0.0.1}", "{}", ROUTE + "issuers: [{name: as, issuer: 'http://127.0.0.1:1', "
     "jwks_uri: 'http://127.0.0.1:1/jwks', allow_insecure_http: true}]\n", "issuer_insecure_http"),
])
def test_warnings_load_and_are_printed(tmp_path: Path, listen: str, admin: str, rest: str, risk: str) -> None:
    done = check_config(tmp_path, f"listen: {listen}\nadmin: {admin}\n{rest}")
    assert done.returncode == 0, done.stderr
    assert f"WARN          {risk}" in done.stdout


def test_unknown_acknowledgement_is_refused_and_a_stale_one_warned(tmp_path: Path) -> None:
    unknown = check_config(tmp_path, BASE + "acknowledge_risks: [everything]\n")
    assert unknown.returncode == EX_CONFIG and "acknowledge_risks[0]" in unknown.stderr
    stale = check_config(tmp_path, BASE + "acknowledge_risks: [replay_fail_open]\n")
    assert stale.returncode == 0 and "stale_acknowledgement" in stale.stdout


def test_clean_config_has_no_findings(tmp_path: Path) -> None:
    done = check_config(tmp_path, BASE)
    assert done.returncode == 0 and "risky settings: none" in done.stdout


@pytest.mark.parametrize("path", [REPO / "config" / "dev.yaml"])
def test_shipped_dev_config_has_no_risks(path: Path) -> None:
    from gateway.config.risks import analyse

    assert analyse(load_config(path)) == []


def test_start_up_and_reload_log_the_risks(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + "lifecycle: {reload: {watch_file: false}}\ndpop: {replay: {on_unavailable: "
                    "fail_open_safe_methods}}\nacknowledge_risks: [replay_fail_open]\n")
    gw = GatewayProcess(path)
    try:
        gw.started()
        gw.wait_for(r"WARNING .*risky setting \(acknowledged\) replay_fail_open at dpop\.replay\.on_unavailable")
        assert gw.metric("gateway_config_risks", risk="replay_fail_open", level="acknowledged") == 1
        gw.signal(signal.SIGHUP)
        gw.wait_for("risky setting .acknowledged. replay_fail_open", count=2)
        # Dropping the acknowledgement makes the file invalid: the reload is refused, nothing changes.
        path.write_text(path.read_text().replace("acknowledge_risks: [replay_fail_open]\n", ""))
        gw.signal(signal.SIGHUP)
        gw.wait_for(r"gw\.yaml:\d+: dpop\.replay\.on_unavailable: .*refused unless acknowledged")
        gw.wait_for("config reload refused")
        assert gw.metric("gateway_config_reloads_total", result="failure") == 1
        assert gw.metric("gateway_config_risks", risk="replay_fail_open", level="acknowledged") == 1
    finally:
        gw.stop()


def test_strict_check_fails_on_unacknowledged_warnings(tmp_path: Path) -> None:
    """For CI: ``check-config --strict`` turns every warning into a failure until acknowledged."""
    text = BASE.replace("admin: {host: 127.0.0.1, port: 0}", "admin: {host: 0.0.0.0, port: 0}")
    path = tmp_path / "gw.yaml"
    argv = [sys.executable, "-m", "gateway", "check-config", "--strict", str(path)]
    path.write_text(text)
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == EX_CONFIG and "WARN          admin_non_loopback" in done.stdout
    assert "--strict" in done.stderr
    path.write_text(text + "acknowledge_risks: [admin_non_loopback]\n")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "ACKNOWLEDGED  admin_non_loopback" in done.stdout
